//! The dashboard's payments section: the channels dApps opened to nodes, newest first, and
//! the vouchers nodes redeemed on them, newest first.

use std::fmt::Write;

use alloy::primitives::U256;

use super::render::{escape, short};
use crate::chain::audit::{ChannelAudit, Redemption, format_tokens};
use crate::when::utc;

/// Channels listed on the overview, newest first (the count covers all of them).
pub const CHANNELS_SHOWN: usize = 20;
/// Redemptions listed on the overview, newest first (the totals cover all of them).
const REDEMPTIONS_SHOWN: usize = 10;

/// The payments as of the page's block.
pub struct Payments {
    /// Channels ever opened.
    pub opened: u64,
    /// The newest [`CHANNELS_SHOWN`] channels.
    pub channels: Vec<ChannelAudit>,
    /// Every redemption, oldest first.
    pub redemptions: Vec<Redemption>,
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
    let redeemed: U256 = payments.redemptions.iter().map(|r| r.amount).sum();
    let mut out = format!(
        "<section id=\"payments\"><h2>Payments</h2><div class=\"cards\">\
         <div class=\"card\">channels opened<b>{}</b></div>\
         <div class=\"card\">vouchers redeemed<b>{}</b></div>\
         <div class=\"card\" data-redeemed-wei=\"{redeemed}\">paid to nodes<b>{}</b></div></div>",
        payments.opened,
        payments.redemptions.len(),
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
    if payments.redemptions.is_empty() {
        out.push_str("<tr><td class=\"muted\" colspan=\"6\">no voucher redeemed yet</td></tr>");
    }
    for r in payments.redemptions.iter().rev().take(REDEMPTIONS_SHOWN) {
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
