use alloy::primitives::{B256, Bytes};
use alloy::sol_types::SolInterface;

use super::bindings::{BTT, NodeRegistry, PaymentChannels, Validation};

/// A failed interaction with the chain, with contract reverts decoded to their custom error.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("cannot reach the RPC at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the chain at {url} has chain id {actual}, the deployment is for {expected}")]
    WrongChain { url: String, expected: u64, actual: u64 },
    #[error("no contract code at {0}: wrong deployment file or a fresh chain?")]
    NoCode(alloy::primitives::Address),
    #[error("reverted: {0}")]
    Reverted(String),
    #[error("transaction {0} was mined but reverted")]
    MinedRevert(B256),
    #[error("rpc error: {0}")]
    Rpc(String),
}

impl From<alloy::contract::Error> for ChainError {
    fn from(err: alloy::contract::Error) -> Self {
        match err.as_revert_data() {
            Some(data) => ChainError::Reverted(describe_revert(&data)),
            None => ChainError::Rpc(err.to_string()),
        }
    }
}

impl From<alloy::transports::TransportError> for ChainError {
    fn from(err: alloy::transports::TransportError) -> Self {
        match err.as_error_resp().and_then(|resp| resp.as_revert_data()) {
            Some(data) => ChainError::Reverted(describe_revert(&data)),
            None => ChainError::Rpc(err.to_string()),
        }
    }
}

impl From<alloy::providers::PendingTransactionError> for ChainError {
    fn from(err: alloy::providers::PendingTransactionError) -> Self {
        ChainError::Rpc(err.to_string())
    }
}

/// Names the custom error behind revert data, trying every InferGrid contract's errors
/// (OpenZeppelin's included, since they are part of each contract's ABI).
pub fn describe_revert(data: &Bytes) -> String {
    fn try_decode<E: SolInterface + std::fmt::Debug>(
        contract: &str,
        data: &[u8],
    ) -> Option<String> {
        E::abi_decode(data).ok().map(|e| format!("{contract}.{e:?}"))
    }
    try_decode::<NodeRegistry::NodeRegistryErrors>("NodeRegistry", data)
        .or_else(|| try_decode::<PaymentChannels::PaymentChannelsErrors>("PaymentChannels", data))
        .or_else(|| try_decode::<Validation::ValidationErrors>("Validation", data))
        .or_else(|| try_decode::<BTT::BTTErrors>("BTT", data))
        .unwrap_or_else(|| format!("unknown revert data {data}"))
}
