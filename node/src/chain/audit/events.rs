//! The events that concern one node, decoded with the contracts' own ABIs, and their
//! parameters as typed values for printing.

use alloy::primitives::{Address, B256, Bytes, LogData, U256};
use alloy::sol_types::SolEvent;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use super::{format_tokens, peer_id_text};
use crate::chain::bindings::{NodeRegistry, PaymentChannels, Validation};

/// Declares [`NodeEvent`] over the listed events of each contract, with the decoder keyed on
/// each event's signature hash and the event's and contract's names.
macro_rules! node_events {
    ($($contract:ident { $($event:ident),+ $(,)? })+) => {
        /// An event that concerns one node.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum NodeEvent {
            $($($event($contract::$event),)+)+
        }

        impl NodeEvent {
            /// Decodes `log` as whichever of these events its first topic names.
            pub fn decode(log: &LogData) -> alloy::sol_types::Result<Self> {
                let topic0 = log.topics().first().copied().unwrap_or_default();
                $($(
                    if topic0 == $contract::$event::SIGNATURE_HASH {
                        return $contract::$event::decode_log_data(log).map(Self::$event);
                    }
                )+)+
                Err(alloy::sol_types::Error::InvalidLog { name: "NodeEvent", log: Box::new(log.clone()) })
            }

            /// The event's name, as in the contract.
            pub fn name(&self) -> &'static str {
                match self {
                    $($(Self::$event(_) => stringify!($event),)+)+
                }
            }

            /// The contract that emits it.
            pub fn contract(&self) -> &'static str {
                match self {
                    $($(Self::$event(_) => stringify!($contract),)+)+
                }
            }
        }
    };
}

node_events! {
    NodeRegistry {
        NodeRegistered, ServiceUpdated, StakeAdded, UnbondRequested, Withdrawn, Slashed,
        Jailed, Unjailed, NodeDeregistered,
    }
    Validation {
        ResultCommitted, ResultRevealed, ResultFinalized, FaultReported, FaultVoted,
        FaultFinalized,
    }
    PaymentChannels {
        ChannelOpened, ChannelToppedUp, VoucherRedeemed, CloseRequested, CloseCancelled,
        ChannelClosed,
    }
}

/// One event parameter, typed by what it means rather than by its Solidity type, so that a
/// token amount prints as tokens and an id stays an exact integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Token wei.
    Tokens(U256),
    /// A channel or fault report id.
    Id(U256),
    /// An epoch, a layer block, a challenge count.
    Count(u64),
    /// Basis points.
    Bps(u32),
    /// Unix seconds.
    Time(u64),
    Address(Address),
    Hash(B256),
    PeerId(Bytes),
    Bool(bool),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Tokens(wei) => f.write_str(&format_tokens(*wei)),
            Value::Id(id) => write!(f, "{id}"),
            Value::Count(n) => write!(f, "{n}"),
            Value::Bps(bps) => write!(f, "{bps} bps"),
            Value::Time(t) => write!(f, "unix {t}"),
            Value::Address(a) => write!(f, "{a}"),
            Value::Hash(h) => write!(f, "{h}"),
            Value::PeerId(bytes) => f.write_str(&peer_id_text(bytes)),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// JSON keeps every 256-bit integer exact as a decimal string; smaller ones are numbers.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Tokens(n) | Value::Id(n) => s.collect_str(n),
            Value::Count(n) | Value::Time(n) => s.serialize_u64(*n),
            Value::Bps(n) => s.serialize_u32(*n),
            Value::Address(a) => a.serialize(s),
            Value::Hash(h) => h.serialize(s),
            Value::PeerId(bytes) => s.serialize_str(&peer_id_text(bytes)),
            Value::Bool(b) => s.serialize_bool(*b),
        }
    }
}

impl NodeEvent {
    /// Every parameter of the event, in ABI order, under its Solidity name.
    pub fn fields(&self) -> Vec<(&'static str, Value)> {
        use Value::*;
        match self {
            Self::NodeRegistered(e) => vec![
                ("operator", Address(e.operator)),
                ("peerId", PeerId(e.peerId.clone())),
                ("modelId", Hash(e.modelId)),
                ("firstBlock", Count(e.firstBlock.into())),
                ("lastBlock", Count(e.lastBlock.into())),
                ("pricePerToken", Tokens(e.pricePerToken)),
                ("stake", Tokens(e.stake)),
            ],
            Self::ServiceUpdated(e) => vec![
                ("operator", Address(e.operator)),
                ("modelId", Hash(e.modelId)),
                ("firstBlock", Count(e.firstBlock.into())),
                ("lastBlock", Count(e.lastBlock.into())),
                ("pricePerToken", Tokens(e.pricePerToken)),
            ],
            Self::StakeAdded(e) => vec![
                ("operator", Address(e.operator)),
                ("amount", Tokens(e.amount)),
                ("newStake", Tokens(e.newStake)),
            ],
            Self::UnbondRequested(e) => vec![
                ("operator", Address(e.operator)),
                ("amount", Tokens(e.amount)),
                ("unbondingEndsAt", Time(e.unbondingEndsAt)),
            ],
            Self::Withdrawn(e) => {
                vec![("operator", Address(e.operator)), ("amount", Tokens(e.amount))]
            }
            Self::Slashed(e) => vec![
                ("operator", Address(e.operator)),
                ("amount", Tokens(e.amount)),
                ("to", Address(e.to)),
            ],
            Self::Jailed(e) => vec![("operator", Address(e.operator)), ("until", Time(e.until))],
            Self::Unjailed(e) => vec![("operator", Address(e.operator))],
            Self::NodeDeregistered(e) => {
                vec![("operator", Address(e.operator)), ("peerId", PeerId(e.peerId.clone()))]
            }
            Self::ResultCommitted(e) => vec![
                ("validator", Address(e.validator)),
                ("node", Address(e.node)),
                ("epoch", Count(e.epoch)),
            ],
            Self::ResultRevealed(e) => vec![
                ("validator", Address(e.validator)),
                ("node", Address(e.node)),
                ("epoch", Count(e.epoch)),
                ("passed", Count(e.passed.into())),
                ("failed", Count(e.failed.into())),
            ],
            Self::ResultFinalized(e) => vec![
                ("node", Address(e.node)),
                ("epoch", Count(e.epoch)),
                ("scoreBps", Bps(e.scoreBps)),
                ("newReputationBps", Bps(e.newReputationBps)),
                ("passed", Count(e.passed)),
                ("failed", Count(e.failed)),
            ],
            Self::FaultReported(e) => vec![
                ("reportId", Id(e.reportId)),
                ("node", Address(e.node)),
                ("reporter", Address(e.reporter)),
                ("epoch", Count(e.epoch)),
                ("requestHash", Hash(e.requestHash)),
                ("outputHash", Hash(e.outputHash)),
                ("expectedOutputHash", Hash(e.expectedOutputHash)),
            ],
            Self::FaultVoted(e) => vec![
                ("reportId", Id(e.reportId)),
                ("validator", Address(e.validator)),
                ("guilty", Bool(e.guilty)),
                ("stake", Tokens(e.stake)),
            ],
            Self::FaultFinalized(e) => vec![
                ("reportId", Id(e.reportId)),
                ("guilty", Bool(e.guilty)),
                ("slashed", Tokens(e.slashed)),
                ("reporterReward", Tokens(e.reporterReward)),
            ],
            Self::ChannelOpened(e) => vec![
                ("channelId", Id(e.channelId)),
                ("payer", Address(e.payer)),
                ("node", Address(e.node)),
                ("deposit", Tokens(e.deposit)),
            ],
            Self::ChannelToppedUp(e) => vec![
                ("channelId", Id(e.channelId)),
                ("amount", Tokens(e.amount)),
                ("newDeposit", Tokens(e.newDeposit)),
            ],
            Self::VoucherRedeemed(e) => vec![
                ("channelId", Id(e.channelId)),
                ("node", Address(e.node)),
                ("amount", Tokens(e.amount)),
                ("cumulativePaid", Tokens(e.cumulativePaid)),
            ],
            Self::CloseRequested(e) => {
                vec![("channelId", Id(e.channelId)), ("closesAt", Time(e.closesAt))]
            }
            Self::CloseCancelled(e) => vec![("channelId", Id(e.channelId))],
            Self::ChannelClosed(e) => vec![
                ("channelId", Id(e.channelId)),
                ("refund", Tokens(e.refund)),
                ("totalPaid", Tokens(e.totalPaid)),
            ],
        }
    }
}

/// One event of a node's history, where it happened on-chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    pub block: u64,
    pub log_index: u64,
    pub tx: B256,
    pub event: NodeEvent,
}

impl Serialize for HistoryEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Fields(Vec<(&'static str, Value)>);
        impl Serialize for Fields {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (name, value) in &self.0 {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
        let mut out = s.serialize_struct("HistoryEvent", 6)?;
        out.serialize_field("block", &self.block)?;
        out.serialize_field("log_index", &self.log_index)?;
        out.serialize_field("tx", &self.tx)?;
        out.serialize_field("contract", self.event.contract())?;
        out.serialize_field("event", self.event.name())?;
        out.serialize_field("fields", &Fields(self.event.fields()))?;
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_by_signature_and_serializes_amounts_exactly() {
        let operator = alloy::primitives::Address::repeat_byte(7);
        let amount = U256::from(10).pow(U256::from(30)) + U256::from(1);
        let event = NodeRegistry::UnbondRequested { operator, amount, unbondingEndsAt: 99 };
        let decoded = NodeEvent::decode(&event.encode_log_data()).unwrap();
        assert_eq!(decoded, NodeEvent::UnbondRequested(event));
        assert_eq!((decoded.contract(), decoded.name()), ("NodeRegistry", "UnbondRequested"));

        let json = serde_json::to_value(HistoryEvent {
            block: 5,
            log_index: 1,
            tx: B256::repeat_byte(1),
            event: decoded,
        })
        .unwrap();
        assert_eq!(json["fields"]["amount"], amount.to_string());
        assert_eq!(json["fields"]["unbondingEndsAt"], 99);
        assert_eq!(json["event"], "UnbondRequested");

        let unknown = LogData::new_unchecked(vec![B256::repeat_byte(9)], Bytes::new());
        assert!(NodeEvent::decode(&unknown).is_err());
    }
}
