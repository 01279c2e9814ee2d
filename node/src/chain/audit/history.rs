//! One node's history, read from the contracts' logs between the deployment block and the
//! pinned block.
//!
//! Registry events carry the operator as their first indexed topic; the validation
//! contract indexes the node in its result and fault-report events, and the votes and the
//! verdict on a report are found through the report ids; channels name their node only when
//! opened, so every later event of a channel is found through the channel ids.

use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEvent;

use super::events::{HistoryEvent, NodeEvent};
use super::{AuditError, Auditor};
use crate::chain::bindings::{NodeRegistry as R, PaymentChannels as C, Validation as V};

/// Ids put in one topic filter: a long OR-list is refused by some endpoints.
const IDS_PER_FILTER: usize = 200;

impl Auditor {
    /// Every event that concerns `operator`'s node up to the pinned block, in chain order.
    pub async fn history(&self, operator: Address) -> Result<Vec<HistoryEvent>, AuditError> {
        let node = operator.into_word();
        let registry = Filter::new().address(self.registry()).topic1(node).event_signature(vec![
            R::NodeRegistered::SIGNATURE_HASH,
            R::ServiceUpdated::SIGNATURE_HASH,
            R::StakeAdded::SIGNATURE_HASH,
            R::UnbondRequested::SIGNATURE_HASH,
            R::Withdrawn::SIGNATURE_HASH,
            R::Slashed::SIGNATURE_HASH,
            R::Jailed::SIGNATURE_HASH,
            R::Unjailed::SIGNATURE_HASH,
            R::NodeDeregistered::SIGNATURE_HASH,
        ]);
        let mut logs = self.logs(registry).await?;

        let validation = Filter::new().address(*self.validation.address());
        let by_node = validation.clone().topic2(node).event_signature(vec![
            V::ResultCommitted::SIGNATURE_HASH,
            V::ResultRevealed::SIGNATURE_HASH,
            V::FaultReported::SIGNATURE_HASH,
        ]);
        let by_node = self.logs(by_node).await?;
        let reports = first_topics_of(&by_node, V::FaultReported::SIGNATURE_HASH);
        logs.extend(by_node);
        let finalized =
            validation.clone().topic1(node).event_signature(V::ResultFinalized::SIGNATURE_HASH);
        logs.extend(self.logs(finalized).await?);
        let verdicts = validation.event_signature(vec![
            V::FaultVoted::SIGNATURE_HASH,
            V::FaultFinalized::SIGNATURE_HASH,
        ]);
        logs.extend(self.logs_of_ids(verdicts, &reports).await?);

        let channels = Filter::new().address(*self.channels.address());
        let opened =
            channels.clone().topic3(node).event_signature(C::ChannelOpened::SIGNATURE_HASH);
        let ids = first_topics_of(&self.logs(opened).await?, C::ChannelOpened::SIGNATURE_HASH);
        let of_channels = channels.event_signature(vec![
            C::ChannelOpened::SIGNATURE_HASH,
            C::ChannelToppedUp::SIGNATURE_HASH,
            C::VoucherRedeemed::SIGNATURE_HASH,
            C::CloseRequested::SIGNATURE_HASH,
            C::CloseCancelled::SIGNATURE_HASH,
            C::ChannelClosed::SIGNATURE_HASH,
        ]);
        logs.extend(self.logs_of_ids(of_channels, &ids).await?);

        let mut history = logs.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        history.sort_by_key(|e| (e.block, e.log_index));
        Ok(history)
    }

    /// The logs matching `filter` whose first indexed topic is one of `ids`; none for no ids
    /// (an empty topic filter would match every id).
    async fn logs_of_ids(&self, filter: Filter, ids: &[B256]) -> Result<Vec<Log>, AuditError> {
        let mut logs = Vec::new();
        for batch in ids.chunks(IDS_PER_FILTER) {
            logs.extend(self.logs(filter.clone().topic1(batch.to_vec())).await?);
        }
        Ok(logs)
    }

    /// The logs matching `filter` from the deployment block to the pinned block, asked for
    /// in windows of `log_window` blocks.
    pub(super) async fn logs(&self, filter: Filter) -> Result<Vec<Log>, AuditError> {
        self.logs_from(filter, self.deploy_block).await
    }

    /// The logs matching `filter` from block `first` (no earlier than the deployment) to the
    /// pinned block.
    pub(super) async fn logs_from(
        &self,
        filter: Filter,
        first: u64,
    ) -> Result<Vec<Log>, AuditError> {
        let mut logs = Vec::new();
        for (from, to) in windows(first.max(self.deploy_block), self.block, self.log_window) {
            let window = filter.clone().from_block(from).to_block(to);
            logs.extend(self.registry.provider().get_logs(&window).await?);
        }
        Ok(logs)
    }
}

/// Inclusive block ranges of at most `size` blocks covering `from..=to`.
fn windows(from: u64, to: u64, size: u64) -> impl Iterator<Item = (u64, u64)> {
    (from..=to)
        .step_by(size as usize)
        .map(move |start| (start, to.min(start.saturating_add(size - 1))))
}

/// The first indexed topic (an id) of each log with signature `signature`.
fn first_topics_of(logs: &[Log], signature: B256) -> Vec<B256> {
    logs.iter()
        .filter(|log| log.topic0() == Some(&signature))
        .filter_map(|log| log.topics().get(1).copied())
        .collect()
}

fn decode(log: &Log) -> Result<HistoryEvent, AuditError> {
    let bad = |reason: String| AuditError::BadLog {
        block: log.block_number.unwrap_or_default(),
        index: log.log_index.unwrap_or_default(),
        reason,
    };
    let (Some(block), Some(log_index), Some(tx)) =
        (log.block_number, log.log_index, log.transaction_hash)
    else {
        return Err(bad("a pending log, without block, index or transaction".into()));
    };
    let event = NodeEvent::decode(log.data()).map_err(|e| bad(e.to_string()))?;
    Ok(HistoryEvent { block, log_index, tx, event })
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_cover_the_range_exactly() {
        assert_eq!(windows(5, 5, 10).collect::<Vec<_>>(), [(5, 5)]);
        assert_eq!(windows(0, 25, 10).collect::<Vec<_>>(), [(0, 9), (10, 19), (20, 25)]);
        assert_eq!(windows(1, 20, 10).collect::<Vec<_>>(), [(1, 10), (11, 20)]);
        assert_eq!(windows(7, 3, 10).count(), 0);
    }
}
