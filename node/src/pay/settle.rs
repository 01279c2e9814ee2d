//! Redemption: a node turns the vouchers in its ledger into tokens, in one `redeemBatch`
//! transaction, when what it would collect is worth the gas, and at once when a payer has
//! asked to close a channel (before the close window ends and the voucher is worthless).

use alloy::primitives::{B256, U256};

use super::SignedVoucher;
use super::collector::{Collector, PaymentError};
use crate::chain::{RedeemedVoucher, SkipReason, SkippedVoucher};

/// Gas of a `redeemBatch` of `n` channels, transaction base and calldata included (measured:
/// `protocol-spec/contracts.md`, "Gas"), used to price a redemption before sending it.
pub fn batch_gas(n: usize) -> u64 {
    61_000 + 17_000 * n.saturating_sub(1) as u64
}

/// When a node redeems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedeemPolicy {
    /// Redeem once the value collected is at least this many times the transaction's gas
    /// cost (gas price × [`batch_gas`]), counting one BTT wei as one wei of the chain's
    /// native coin (on BTTC the native coin is BTT).
    pub value_to_gas: u64,
}

impl Default for RedeemPolicy {
    fn default() -> Self {
        Self { value_to_gas: 20 }
    }
}

impl RedeemPolicy {
    /// Whether a batch collecting `value` over `channels` channels is due at `gas_price`.
    pub fn due(&self, value: U256, channels: usize, gas_price: u128, closing: bool) -> bool {
        let cost = U256::from(gas_price) * U256::from(batch_gas(channels));
        closing || (!value.is_zero() && value >= cost * U256::from(self.value_to_gas))
    }
}

/// A redemption that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub tx: B256,
    /// Channels the transaction paid.
    pub channels: usize,
    /// What it paid, in all.
    pub value: U256,
    pub gas_used: u64,
    /// Vouchers the contract left out, and why.
    pub skipped: Vec<SkippedVoucher>,
}

/// The chain's view of a channel: what [`Collector::observe`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChannelView {
    channel: U256,
    paid: U256,
    deposit: U256,
    closing: bool,
}

/// A channel put in a batch: the chain's view just before, and the voucher capped at the
/// deposit, which is what `paid` becomes if the voucher is redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    before: ChannelView,
    payable: U256,
}

impl Collector {
    /// Re-reads every channel in the ledger from the chain and, if the policy says so,
    /// redeems all collectable vouchers in one transaction. A channel redeemed in a block not
    /// yet final is re-read every round: if a reorg dropped the redemption, the chain's
    /// `paid` went back, and the voucher is redeemed again.
    pub async fn settle(&self, policy: &RedeemPolicy) -> Result<Option<Settlement>, PaymentError> {
        let (gas_price, now, head) = self.channels().gas_price_and_head().await?;
        let unconfirmed = self.unconfirmed(head)?;
        let mut batch: Vec<SignedVoucher> = Vec::new();
        let mut planned: Vec<Planned> = Vec::new();
        let (mut value, mut closing) = (U256::ZERO, false);
        for (id, record) in self.ledger().all()? {
            if record.vouched() <= record.redeemed
                && !self.is_live(id).await
                && !unconfirmed.contains(&id)
            {
                // Fully paid, finally, and not in use since this node started: nothing to read.
                continue;
            }
            let state = self.channels().channel(id).await?;
            if state.node != self.operator() || state.payer != record.payer {
                // Not this deployment's channel (a ledger reused across chains): never redeemable.
                continue;
            }
            let (paid, deposit) = (U256::from(state.paid), U256::from(state.deposit));
            let before = ChannelView { channel: id, paid, deposit, closing: state.closesAt != 0 };
            self.observe(id, paid, deposit, before.closing).await?;
            let Some(voucher) = record.voucher else { continue };
            let amount = voucher.voucher.cumulative_amount;
            let payable = amount.min(deposit);
            let expired = state.closesAt != 0 && now >= state.closesAt;
            if payable > paid && !expired && !self.is_refused(id, amount).await {
                value += payable - paid;
                closing |= before.closing;
                batch.push(voucher);
                planned.push(Planned { before, payable });
            }
        }
        if batch.is_empty() || !policy.due(value, batch.len(), gas_price, closing) {
            return Ok(None);
        }
        // The contract skips a voucher that cannot pay rather than reverting the batch, so
        // only the receipt's events say what was paid.
        let redemption = self.channels().redeem_batch(&batch).await?;
        if let Some(block) = redemption.receipt.block_number {
            self.redeemed_in(redemption.redeemed.iter().map(|r| r.channel), block)?;
        }
        for seen in observed_after(&planned, &redemption.redeemed, &redemption.skipped) {
            self.observe(seen.channel, seen.paid, seen.deposit, seen.closing).await?;
        }
        for skip in &redemption.skipped {
            if !matches!(skip.reason, SkipReason::AlreadyRedeemed | SkipReason::ChannelExpired) {
                // The voucher was checked against the channel when stored and again just now;
                // if the contract still refuses it, sending it again would only burn gas.
                self.refuse(skip.channel, skip.cumulative_amount).await;
            }
        }
        Ok(Some(Settlement {
            tx: redemption.receipt.transaction_hash,
            channels: redemption.redeemed.len(),
            value: redemption.total(),
            gas_used: redemption.receipt.gas_used,
            skipped: redemption.skipped,
        }))
    }
}

/// What each planned channel holds after the batch, from the batch's events alone: a
/// redeemed voucher leaves the channel at the event's `cumulativePaid`; one skipped as already
/// redeemed means the chain has paid at least its `payable`; one skipped as expired will never
/// pay more, and its channel is closing. Channels the batch did not change are left out.
fn observed_after(
    planned: &[Planned],
    redeemed: &[RedeemedVoucher],
    skipped: &[SkippedVoucher],
) -> Vec<ChannelView> {
    planned
        .iter()
        .filter_map(|&Planned { before, payable }| {
            let at = |paid, closing| Some(ChannelView { paid, closing, ..before });
            if let Some(r) = redeemed.iter().rev().find(|r| r.channel == before.channel) {
                return at(r.cumulative_paid, before.closing);
            }
            match skipped.iter().find(|s| s.channel == before.channel)?.reason {
                SkipReason::AlreadyRedeemed => at(payable, before.closing),
                SkipReason::ChannelExpired => at(before.paid, true),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redemption_waits_until_worth_the_gas_unless_a_channel_is_closing() {
        let policy = RedeemPolicy { value_to_gas: 20 };
        let gwei = 1_000_000_000u128;
        // One channel at 1 gwei: 61,000 gas → 20 × 61,000 gwei is the bar.
        let bar = U256::from(20u64 * 61_000) * U256::from(gwei);
        assert!(!policy.due(bar - U256::from(1), 1, gwei, false));
        assert!(policy.due(bar, 1, gwei, false));
        // A bigger batch costs more gas, so needs more value.
        assert!(!policy.due(bar, 2, gwei, false));
        assert!(policy.due(U256::from(1), 1, gwei, true));
        assert!(!policy.due(U256::ZERO, 1, 0, false));
    }

    #[test]
    fn a_batch_books_what_its_events_say_was_paid() {
        let planned = |channel: u64| Planned {
            before: ChannelView {
                channel: U256::from(channel),
                paid: U256::from(40),
                deposit: U256::from(500),
                closing: false,
            },
            payable: U256::from(100),
        };
        let plan = [planned(1), planned(2), planned(3), planned(4), planned(5)];
        let redeemed = [RedeemedVoucher {
            channel: U256::from(1),
            amount: U256::from(60),
            cumulative_paid: U256::from(100),
        }];
        let skipped = |channel: u64, reason| SkippedVoucher {
            channel: U256::from(channel),
            cumulative_amount: U256::from(100),
            reason,
        };
        let skipped = [
            skipped(2, SkipReason::AlreadyRedeemed),
            skipped(3, SkipReason::ChannelExpired),
            skipped(4, SkipReason::InvalidSignature),
        ];
        let seen = |channel: u64, paid: u64, closing| ChannelView {
            channel: U256::from(channel),
            paid: U256::from(paid),
            deposit: U256::from(500),
            closing,
        };
        assert_eq!(
            observed_after(&plan, &redeemed, &skipped),
            [
                seen(1, 100, false),
                // The chain has at least the voucher: what it holds beyond is read next time.
                seen(2, 100, false),
                // Nothing more will be paid: the channel is over.
                seen(3, 40, true),
                // Refused (4) or absent from the events (5): the batch changed nothing.
            ]
        );
    }
}
