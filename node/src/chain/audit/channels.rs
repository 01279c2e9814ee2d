//! Payment channels as the chain holds them at the pinned block, and the vouchers redeemed on
//! them (`VoucherRedeemed`): what dApps deposited, what nodes were paid, what is left.

use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use futures::{StreamExt, TryStreamExt};

use super::{AuditError, Auditor, CONCURRENT_NODE_READS};
use crate::chain::bindings::PaymentChannels as C;

/// One channel at the pinned block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAudit {
    pub id: U256,
    pub payer: Address,
    pub node: Address,
    pub deposit: U256,
    /// Redeemed by the node so far.
    pub paid: U256,
    /// When a requested close takes effect (0: none requested).
    pub closes_at: u64,
    /// `finalizeClose` ran: the rest of the deposit went back to the payer.
    pub closed: bool,
}

/// One redeemed voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub block: u64,
    pub transaction: B256,
    pub channel: U256,
    pub node: Address,
    /// What this voucher paid.
    pub amount: U256,
    /// What the channel has paid in all after it.
    pub cumulative_paid: U256,
}

impl Auditor {
    /// How many channels were opened, and the newest `limit` of them (highest id first).
    pub async fn channels(&self, limit: usize) -> Result<(u64, Vec<ChannelAudit>), AuditError> {
        let at = self.at();
        let count: U256 = self.channels.channelCount().block(at).call().await?;
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        // Channel ids run from 1 to the count.
        let newest = (1..=count).rev().take(limit);
        let channels = futures::stream::iter(newest)
            .map(|id| async move {
                let id = U256::from(id);
                let (channel, closed) = futures::try_join!(
                    async { self.channels.getChannel(id).block(at).call().await },
                    async { self.channels.isClosed(id).block(at).call().await },
                )?;
                Ok::<_, AuditError>(ChannelAudit {
                    id,
                    payer: channel.payer,
                    node: channel.node,
                    deposit: U256::from(channel.deposit),
                    paid: U256::from(channel.paid),
                    closes_at: channel.closesAt,
                    closed,
                })
            })
            .buffered(CONCURRENT_NODE_READS)
            .try_collect()
            .await?;
        Ok((count, channels))
    }

    /// The vouchers redeemed from block `first` (no earlier than the deployment) to the
    /// pinned block, oldest first.
    pub async fn redemptions_from(&self, first: u64) -> Result<Vec<Redemption>, AuditError> {
        let filter = Filter::new()
            .address(*self.channels.address())
            .event_signature(C::VoucherRedeemed::SIGNATURE_HASH);
        let mut redemptions = Vec::new();
        for log in self.logs_from(filter, first).await? {
            let bad = |reason: String| AuditError::BadLog {
                block: log.block_number.unwrap_or_default(),
                index: log.log_index.unwrap_or_default(),
                reason,
            };
            let (Some(block), Some(transaction)) = (log.block_number, log.transaction_hash) else {
                return Err(bad("a pending log, without block or transaction".into()));
            };
            let event =
                C::VoucherRedeemed::decode_log_data(log.data()).map_err(|e| bad(e.to_string()))?;
            redemptions.push(Redemption {
                block,
                transaction,
                channel: event.channelId,
                node: event.node,
                amount: event.amount,
                cumulative_paid: event.cumulativePaid,
            });
        }
        Ok(redemptions)
    }
}
