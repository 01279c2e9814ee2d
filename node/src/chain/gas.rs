//! Gas limits with a margin over the node's estimate.
//!
//! A transaction is estimated against the state of one block and mined in a later one, and
//! here the two can differ by a storage write: validator stake checkpoints are keyed by
//! `block.timestamp`, and anvil mines several blocks a second. A `registerValidator`
//! estimated in the second of the previous checkpoint updates that checkpoint in place;
//! mined one second later it writes a new slot, about 20k more gas, and an unpadded limit
//! runs out. Forge pads its estimates for the same reason (`--gas-estimate-multiplier 130`).

use alloy::network::{Network, TransactionBuilder};
use alloy::providers::fillers::{FillerControlFlow, GasFillable, GasFiller, TxFiller};
use alloy::providers::{Provider, SendableTx};
use alloy::transports::TransportResult;

/// Percent added to every estimated gas limit.
pub const GAS_MARGIN_PERCENT: u64 = 30;

/// `estimate` plus [`GAS_MARGIN_PERCENT`].
pub fn with_gas_margin(estimate: u64) -> u64 {
    estimate.saturating_add(estimate / 100 * GAS_MARGIN_PERCENT)
}

/// alloy's [`GasFiller`] (fees, and a limit estimated without a block tag — an explicit
/// `"latest"` estimate can deadlock anvil 1.7 while it mines), with [`with_gas_margin`]
/// applied to the limit it estimated. A limit the caller set is left as it is.
#[derive(Debug, Clone, Default)]
pub struct MarginGasFiller(GasFiller);

impl<N: Network> TxFiller<N> for MarginGasFiller {
    type Fillable = GasFillable;

    fn status(&self, tx: &N::TransactionRequest) -> FillerControlFlow {
        TxFiller::<N>::status(&self.0, tx)
    }

    fn fill_sync(&self, _tx: &mut SendableTx<N>) {}

    async fn prepare<P: Provider<N>>(
        &self,
        provider: &P,
        tx: &N::TransactionRequest,
    ) -> TransportResult<GasFillable> {
        let estimated = tx.gas_limit().is_none();
        let mut fillable = TxFiller::<N>::prepare(&self.0, provider, tx).await?;
        if estimated {
            let (GasFillable::Legacy { gas_limit, .. } | GasFillable::Eip1559 { gas_limit, .. }) =
                &mut fillable;
            *gas_limit = with_gas_margin(*gas_limit);
        }
        Ok(fillable)
    }

    async fn fill(
        &self,
        fillable: GasFillable,
        tx: SendableTx<N>,
    ) -> TransportResult<SendableTx<N>> {
        TxFiller::<N>::fill(&self.0, fillable, tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_added_and_never_overflows() {
        assert_eq!(with_gas_margin(100_000), 130_000);
        assert_eq!(with_gas_margin(21_000), 27_300);
        assert_eq!(with_gas_margin(u64::MAX), u64::MAX);
    }
}
