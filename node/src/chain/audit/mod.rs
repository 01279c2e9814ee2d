//! Read-only auditing: every node's stake, reputation, challenge results and slashes, one
//! node's history from the contracts' events, the validators, and the payment channels with
//! their redemptions.
//!
//! An [`Auditor`] pins one block when it connects, so that every figure of a report comes
//! from the same chain state and can be checked against `cast call --block N`. Nothing here
//! needs a key.

mod channels;
mod epochs;
mod events;
mod history;
mod validators;

pub use channels::{ChannelAudit, Redemption};
pub use epochs::{EpochSummary, epochs};
pub use events::{HistoryEvent, NodeEvent, Value};
pub use validators::ValidatorAudit;

use alloy::eips::BlockId;
use alloy::primitives::{Address, B256, Bytes, U256, utils::format_ether};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::BlockNumberOrTag;
use futures::{StreamExt, TryStreamExt};
use serde::{Serialize, Serializer};

use super::bindings::{
    NodeRegistry::{self, NodeRegistryInstance},
    PaymentChannels::{self, PaymentChannelsInstance},
    Validation::{self, ValidationInstance},
};
use super::clients::registered_operators;
use super::{ChainError, Deployment, check_deployment, connect_reader};

/// Nodes read at once by [`Auditor::nodes`]: enough to hide latency, few enough for a
/// public endpoint's rate limit.
const CONCURRENT_NODE_READS: usize = 8;

/// Blocks per `eth_getLogs` request by default: many public endpoints refuse wider ranges.
pub const DEFAULT_LOG_WINDOW: u64 = 10_000;

/// An audit that could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("{operator} has no node registered with the registry at {registry}")]
    NotRegistered { operator: Address, registry: Address },
    #[error("log {index} of block {block}: {reason}")]
    BadLog { block: u64, index: u64, reason: String },
}

impl From<alloy::contract::Error> for AuditError {
    fn from(err: alloy::contract::Error) -> Self {
        Self::Chain(err.into())
    }
}

impl From<alloy::transports::TransportError> for AuditError {
    fn from(err: alloy::transports::TransportError) -> Self {
        Self::Chain(err.into())
    }
}

/// One node as the contracts see it at [`NodeAudit::as_of_block`]. Serializes token amounts
/// as exact decimal strings of token wei, so scripts can compare them with `cast call`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeAudit {
    /// The chain block every field was read at.
    pub as_of_block: u64,
    /// That block's timestamp: "now" for the times below.
    pub as_of_time: u64,
    pub operator: Address,
    /// The registered libp2p peer id; see [`peer_id_text`].
    #[serde(serialize_with = "serialize_peer_id")]
    pub peer_id: Bytes,
    pub model_id: B256,
    /// First and last layer block served (inclusive).
    pub first_block: u32,
    pub last_block: u32,
    #[serde(serialize_with = "decimal")]
    pub price_per_token: U256,
    pub multiaddrs: Vec<String>,
    /// Bonded stake (unbonding stake excluded), as `NodeRegistry.stakeOf` reports it.
    #[serde(serialize_with = "decimal")]
    pub stake: U256,
    #[serde(serialize_with = "decimal")]
    pub unbonding: U256,
    pub unbonding_ends_at: u64,
    pub registered_at: u64,
    /// End of the last jail term (unix seconds), 0 when never jailed or unjailed since.
    pub jailed_until: u64,
    /// Whether that term runs past the timestamp of [`NodeAudit::as_of_block`].
    pub jailed: bool,
    pub active: bool,
    /// `Validation.reputationOf`: neutral until the node is first scored or faulted.
    pub reputation_bps: u32,
    pub epochs_scored: u32,
    pub challenges_passed: u64,
    pub challenges_failed: u64,
    pub faults: u32,
    #[serde(serialize_with = "decimal")]
    pub total_slashed: U256,
}

/// A read-only view of one deployment, pinned to one block.
#[derive(Debug, Clone)]
pub struct Auditor {
    registry: NodeRegistryInstance<DynProvider>,
    validation: ValidationInstance<DynProvider>,
    channels: PaymentChannelsInstance<DynProvider>,
    deploy_block: u64,
    block: u64,
    timestamp: u64,
    log_window: u64,
}

impl Auditor {
    /// Connects to `url`, checks that it serves `deployment`, and pins its latest block.
    pub async fn connect(url: &str, deployment: &Deployment) -> Result<Self, AuditError> {
        let provider = connect_reader(url).await?;
        check_deployment(&provider, url, deployment).await?;
        let head = provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await?
            .ok_or_else(|| ChainError::Rpc(format!("{url} has no latest block")))?;
        let c = deployment.contracts;
        Ok(Self {
            registry: NodeRegistry::new(c.registry, provider.clone()),
            validation: Validation::new(c.validation, provider.clone()),
            channels: PaymentChannels::new(c.channels, provider),
            deploy_block: deployment.deploy_block,
            block: head.header.number,
            timestamp: head.header.timestamp,
            log_window: DEFAULT_LOG_WINDOW,
        })
    }

    /// Sets how many blocks one `eth_getLogs` request spans (at least 1).
    pub fn with_log_window(mut self, blocks: u64) -> Self {
        self.log_window = blocks.max(1);
        self
    }

    /// The pinned block.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// The pinned block's timestamp.
    pub fn block_time(&self) -> u64 {
        self.timestamp
    }

    /// The registry's address.
    pub fn registry(&self) -> Address {
        *self.registry.address()
    }

    /// Every registered operator's node, in the registry's list order.
    pub async fn nodes(&self) -> Result<Vec<NodeAudit>, AuditError> {
        let operators = registered_operators(&self.registry, self.at()).await?;
        futures::stream::iter(operators)
            .map(|operator| self.read(operator))
            .buffered(CONCURRENT_NODE_READS)
            .try_collect()
            .await
    }

    /// One operator's node; an error names an address without one (never registered, or
    /// deregistered).
    pub async fn node(&self, operator: Address) -> Result<NodeAudit, AuditError> {
        let node = self.read(operator).await?;
        if node.registered_at == 0 {
            return Err(AuditError::NotRegistered { operator, registry: self.registry() });
        }
        Ok(node)
    }

    fn at(&self) -> BlockId {
        BlockId::number(self.block)
    }

    async fn read(&self, operator: Address) -> Result<NodeAudit, AuditError> {
        // Joined, the four calls cost one round trip.
        let at = self.at();
        let (node, active, record, reputation) = futures::try_join!(
            async { self.registry.getNode(operator).block(at).call().await },
            async { self.registry.isActive(operator).block(at).call().await },
            async { self.validation.getNodeRecord(operator).block(at).call().await },
            async { self.validation.reputationOf(operator).block(at).call().await },
        )?;
        Ok(NodeAudit {
            as_of_block: self.block,
            as_of_time: self.timestamp,
            operator,
            peer_id: node.peerId,
            model_id: node.modelId,
            first_block: node.firstBlock,
            last_block: node.lastBlock,
            price_per_token: node.pricePerToken,
            multiaddrs: node.multiaddrs,
            stake: node.stake,
            unbonding: node.unbonding,
            unbonding_ends_at: node.unbondingEndsAt,
            registered_at: node.registeredAt,
            jailed_until: node.jailedUntil,
            jailed: node.jailedUntil > self.timestamp,
            active,
            reputation_bps: reputation,
            epochs_scored: record.epochsScored,
            challenges_passed: record.challengesPassed,
            challenges_failed: record.challengesFailed,
            faults: record.faults,
            total_slashed: record.totalSlashed,
        })
    }
}

/// A registered peer id as text: base58 when the bytes are a valid libp2p peer id (the
/// registry accepts nothing else), else `0x`-hex, so that any bytes still print. `0` is not
/// in the base58 alphabet, so the two cannot be confused.
pub fn peer_id_text(bytes: &Bytes) -> String {
    libp2p::PeerId::from_bytes(bytes).map(|p| p.to_string()).unwrap_or_else(|_| bytes.to_string())
}

/// A token amount in whole tokens without trailing zeros: `10000 BTT`, `0.000001 BTT`.
pub fn format_tokens(wei: U256) -> String {
    format_units(wei, "BTT")
}

/// An 18-decimal amount in whole `unit`s without trailing zeros: `2 ether`, `0.5 BTT`.
pub fn format_units(wei: U256, unit: &str) -> String {
    let ether = format_ether(wei);
    match ether.split_once('.') {
        Some((whole, fraction)) if !fraction.trim_end_matches('0').is_empty() => {
            format!("{whole}.{} {unit}", fraction.trim_end_matches('0'))
        }
        Some((whole, _)) => format!("{whole} {unit}"),
        None => format!("{ether} {unit}"),
    }
}

fn decimal<S: Serializer>(value: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn serialize_peer_id<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&peer_id_text(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_amounts_drop_trailing_zeros_only() {
        let wei = |s: &str| s.parse::<U256>().unwrap();
        assert_eq!(format_tokens(wei("10000000000000000000000")), "10000 BTT");
        assert_eq!(format_tokens(wei("1000000000000")), "0.000001 BTT");
        assert_eq!(format_tokens(wei("1500000000000000000")), "1.5 BTT");
        assert_eq!(format_tokens(U256::ZERO), "0 BTT");
    }

    #[test]
    fn peer_ids_print_as_base58_or_hex() {
        let peer = libp2p::PeerId::random();
        assert_eq!(peer_id_text(&Bytes::from(peer.to_bytes())), peer.to_string());
        assert_eq!(peer_id_text(&Bytes::from_static(&[1, 2])), "0x0102");
    }
}
