//! Redemption: a node turns the vouchers in its ledger into tokens, in one `redeemBatch`
//! transaction, when what it would collect is worth the gas, and at once when a payer has
//! asked to close a channel (before the close window ends and the voucher is worthless).

use alloy::primitives::{B256, U256};

use super::SignedVoucher;
use super::collector::{Collector, PaymentError};

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
    pub channels: usize,
    pub value: U256,
    pub gas_used: u64,
}

impl Collector {
    /// Re-reads every channel in the ledger from the chain and, if the policy says so,
    /// redeems all collectable vouchers in one transaction.
    pub async fn settle(&self, policy: &RedeemPolicy) -> Result<Option<Settlement>, PaymentError> {
        let (gas_price, now) = self.channels().gas_price_and_time().await?;
        let mut batch: Vec<SignedVoucher> = Vec::new();
        // Per channel in the batch: what redeeming makes `paid`, the deposit, the close state.
        let mut after: Vec<(U256, U256, U256, bool)> = Vec::new();
        let (mut value, mut closing) = (U256::ZERO, false);
        for (id, record) in self.ledger().all()? {
            if record.vouched() <= record.redeemed && !self.is_live(id).await {
                // Fully paid and not in use since this node started: nothing to read.
                continue;
            }
            let state = self.channels().channel(id).await?;
            if state.node != self.operator() || state.payer != record.payer {
                // Not this deployment's channel (a ledger reused across chains): never redeemable.
                continue;
            }
            let (paid, deposit) = (U256::from(state.paid), U256::from(state.deposit));
            self.observe(id, paid, deposit, state.closesAt != 0).await?;
            let Some(voucher) = record.voucher else { continue };
            let payable = voucher.voucher.cumulative_amount.min(deposit);
            let expired = state.closesAt != 0 && now >= state.closesAt;
            if payable > paid && !expired {
                value += payable - paid;
                closing |= state.closesAt != 0;
                batch.push(voucher);
                after.push((id, payable, deposit, state.closesAt != 0));
            }
        }
        if batch.is_empty() || !policy.due(value, batch.len(), gas_price, closing) {
            return Ok(None);
        }
        let receipt = self.channels().redeem_batch(&batch).await?;
        // The batch reverts as a whole, so a mined one paid every channel up to `payable`.
        for (id, payable, deposit, closing) in after {
            self.observe(id, payable, deposit, closing).await?;
        }
        Ok(Some(Settlement {
            tx: receipt.transaction_hash,
            channels: batch.len(),
            value,
            gas_used: receipt.gas_used,
        }))
    }
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
}
