//! The dashboard's payments section: the channels dApps opened to nodes, newest first, and
//! the vouchers nodes redeemed on them, newest first.

use std::collections::VecDeque;
use std::fmt::Write;

use alloy::primitives::U256;

use super::render::{escape, short};
use crate::chain::audit::{ChannelAudit, Redemption, format_tokens};
use crate::when::utc;

/// Channels listed on the overview, newest first (the count covers all of them).
pub const CHANNELS_SHOWN: usize = 20;
/// Redemptions listed on the overview, newest first (the totals cover all of them).
const REDEMPTIONS_SHOWN: usize = 10;

/// Blocks below the head within which a reorg may still drop a redemption: those are read
/// again on every render rather than kept in the running tally.
const REORG_DEPTH: u64 = 64;

/// Every redemption counted, and the newest listed, as of one block: kept between renders so
/// that each reads only the logs of the blocks since (a chain's whole history of
/// `VoucherRedeemed` grows without bound).
#[derive(Debug, Clone, Default)]
pub struct RedemptionTally {
    /// The last block counted; `None` before the first render.
    through: Option<u64>,
    count: u64,
    paid: U256,
    /// The newest [`REDEMPTIONS_SHOWN`], oldest first.
    latest: VecDeque<Redemption>,
}

impl RedemptionTally {
    /// The first block not counted yet (0: from the deployment on).
    pub fn next_block(&self) -> u64 {
        self.through.map_or(0, |block| block + 1)
    }

    /// Whether this counts blocks past `head`: the chain behind it is not the one counted.
    pub fn is_ahead_of(&self, head: u64) -> bool {
        self.through.is_some_and(|block| block > head)
    }

    /// Adds `redemptions`, oldest first, of the blocks from [`Self::next_block`] to `through`.
    fn fold(&mut self, redemptions: &[Redemption], through: u64) {
        for redemption in redemptions {
            self.count += 1;
            self.paid += redemption.amount;
            if self.latest.len() == REDEMPTIONS_SHOWN {
                self.latest.pop_front();
            }
            self.latest.push_back(redemption.clone());
        }
        self.through = Some(through);
    }

    /// What a page at block `head` shows, given the redemptions from [`Self::next_block`] to
    /// `head`, and the tally to keep: the same, but for blocks a reorg may still undo.
    pub fn advance(&self, redemptions: &[Redemption], head: u64) -> (Self, Self) {
        let settled_through = head.saturating_sub(REORG_DEPTH);
        let settled = redemptions.partition_point(|r| r.block <= settled_through);
        let mut kept = self.clone();
        if settled_through >= self.next_block() {
            kept.fold(&redemptions[..settled], settled_through);
        }
        let mut shown = kept.clone();
        shown.fold(&redemptions[settled..], head);
        (shown, kept)
    }
}

/// The payments as of the page's block.
pub struct Payments {
    /// Channels ever opened.
    pub opened: u64,
    /// The newest [`CHANNELS_SHOWN`] channels.
    pub channels: Vec<ChannelAudit>,
    /// Every redemption through the page's block.
    pub redemptions: RedemptionTally,
    /// The page's block time, to tell an elapsed close window from a pending one.
    pub now: u64,
}

fn state(channel: &ChannelAudit, now: u64) -> (&'static str, String) {
    match channel.closes_at {
        _ if channel.closed => ("muted", "closed".into()),
        0 => ("ok", "open".into()),
        at if at <= now => ("bad", format!("closable since {}", utc(at))),
        at => ("bad", format!("closing {}", utc(at))),
    }
}

pub fn section(payments: &Payments) -> String {
    let redeemed = payments.redemptions.paid;
    let mut out = format!(
        "<section id=\"payments\"><h2>Payments</h2><div class=\"cards\">\
         <div class=\"card\">channels opened<b>{}</b></div>\
         <div class=\"card\">vouchers redeemed<b>{}</b></div>\
         <div class=\"card\" data-redeemed-wei=\"{redeemed}\">paid to nodes<b>{}</b></div></div>",
        payments.opened,
        payments.redemptions.count,
        escape(&format_tokens(redeemed)),
    );
    let _ = write!(
        out,
        "<h3>Channels{}</h3><table><thead><tr><th class=\"num\">channel</th><th>payer</th>\
         <th>node</th><th class=\"num\">deposit</th><th class=\"num\">paid</th>\
         <th class=\"num\">left</th><th>state</th></tr></thead><tbody>",
        if payments.opened as usize > payments.channels.len() {
            format!(" (newest {} of {})", payments.channels.len(), payments.opened)
        } else {
            String::new()
        }
    );
    if payments.channels.is_empty() {
        out.push_str("<tr><td class=\"muted\" colspan=\"7\">no channel opened</td></tr>");
    }
    for channel in &payments.channels {
        let (class, state) = state(channel, payments.now);
        let _ = write!(
            out,
            "<tr class=\"channel\" data-channel=\"{id}\" data-deposit-wei=\"{deposit}\" \
             data-paid-wei=\"{paid}\"><td class=\"num\">{id}</td><td><code>{payer}</code></td>\
             <td><a href=\"/dashboard/node/{node}\"><code>{node_short}</code></a></td>\
             <td class=\"num\">{deposit_btt}</td><td class=\"num\">{paid_btt}</td>\
             <td class=\"num\">{left}</td><td class=\"{class}\">{state}</td></tr>",
            id = channel.id,
            deposit = channel.deposit,
            paid = channel.paid,
            payer = escape(&short(&channel.payer.to_string())),
            node = channel.node,
            node_short = escape(&short(&channel.node.to_string())),
            deposit_btt = escape(&format_tokens(channel.deposit)),
            paid_btt = escape(&format_tokens(channel.paid)),
            left = escape(&format_tokens(channel.deposit.saturating_sub(channel.paid))),
            state = escape(&state),
        );
    }
    out.push_str(
        "</tbody></table><h3>Latest redemptions</h3><table><thead><tr>\
         <th class=\"num\">block</th><th>transaction</th><th class=\"num\">channel</th>\
         <th>node</th><th class=\"num\">amount</th><th class=\"num\">channel paid</th>\
         </tr></thead><tbody>",
    );
    if payments.redemptions.latest.is_empty() {
        out.push_str("<tr><td class=\"muted\" colspan=\"6\">no voucher redeemed yet</td></tr>");
    }
    for r in payments.redemptions.latest.iter().rev() {
        let _ = write!(
            out,
            "<tr class=\"redemption\" data-amount-wei=\"{}\"><td class=\"num\">{}</td>\
             <td title=\"{tx}\"><code>{}</code></td><td class=\"num\">{}</td>\
             <td><a href=\"/dashboard/node/{node}\"><code>{}</code></a></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            r.amount,
            r.block,
            escape(&short(&r.transaction.to_string())),
            r.channel,
            escape(&short(&r.node.to_string())),
            escape(&format_tokens(r.amount)),
            escape(&format_tokens(r.cumulative_paid)),
            tx = r.transaction,
            node = r.node,
        );
    }
    out.push_str("</tbody></table></section>");
    out
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, B256};

    use super::*;

    fn redemptions(blocks: std::ops::RangeInclusive<u64>) -> Vec<Redemption> {
        blocks
            .map(|block| Redemption {
                block,
                transaction: B256::with_last_byte(block as u8),
                channel: U256::from(block % 3),
                node: Address::ZERO,
                amount: U256::from(block),
                cumulative_paid: U256::ZERO,
            })
            .collect()
    }

    /// Rendering in steps shows what one render of the whole history shows, and keeps out
    /// of the tally what a reorg could still undo.
    #[test]
    fn a_tally_advanced_in_steps_equals_one_read_of_everything() {
        let (whole, _) = RedemptionTally::default().advance(&redemptions(0..=250), 250);
        let (first, kept) = RedemptionTally::default().advance(&redemptions(0..=200), 200);
        assert_eq!((first.count, kept.count, kept.next_block()), (201, 137, 137));
        let (_, kept) = kept.advance(&redemptions(137..=210), 210);
        let (last, kept) = kept.advance(&redemptions(kept.next_block()..=250), 250);
        assert_eq!((last.count, last.paid), (251, U256::from(250 * 251 / 2)));
        assert_eq!((whole.count, whole.paid), (last.count, last.paid));
        assert_eq!(kept.next_block(), 250 - REORG_DEPTH + 1);
        let newest: Vec<u64> = last.latest.iter().map(|r| r.block).collect();
        assert_eq!(newest, (241..=250).collect::<Vec<_>>());
        // A chain shorter than the deployment's age so far settles nothing.
        let (young, kept) = RedemptionTally::default().advance(&redemptions(0..=5), 5);
        assert_eq!((young.count, kept.next_block()), (6, 1));
    }
}
