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
    #[error(
        "the sending account has too little ether to pay for gas ({0}): on a devnet, run \
         `infergrid devnet fund ADDRESS`; elsewhere, send it ether"
    )]
    InsufficientFunds(String),
    #[error("rpc error: {0}")]
    Rpc(String),
}

impl ChainError {
    /// An RPC error without revert data. A sender short of ether for gas is named as such:
    /// nodes word it differently (anvil `-32003 Insufficient funds for gas * price + value`,
    /// geth `-32000 insufficient funds for gas * price + value: address … have … want …`).
    fn rpc(message: String) -> Self {
        if message.to_ascii_lowercase().contains("insufficient funds") {
            ChainError::InsufficientFunds(message)
        } else {
            ChainError::Rpc(message)
        }
    }
}

impl From<alloy::contract::Error> for ChainError {
    fn from(err: alloy::contract::Error) -> Self {
        match err.as_revert_data() {
            Some(data) => ChainError::Reverted(describe_revert(&data)),
            None => ChainError::rpc(err.to_string()),
        }
    }
}

impl From<alloy::transports::TransportError> for ChainError {
    fn from(err: alloy::transports::TransportError) -> Self {
        match err.as_error_resp().and_then(|resp| resp.as_revert_data()) {
            Some(data) => ChainError::Reverted(describe_revert(&data)),
            None => ChainError::rpc(err.to_string()),
        }
    }
}

impl From<alloy::providers::PendingTransactionError> for ChainError {
    fn from(err: alloy::providers::PendingTransactionError) -> Self {
        ChainError::rpc(err.to_string())
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

#[cfg(test)]
mod tests {
    use super::ChainError;

    #[test]
    fn a_sender_short_of_gas_money_is_told_what_to_do() {
        for said in [
            "server returned an error response: error code -32003: Insufficient funds for gas * price + value",
            "server returned an error response: error code -32000: insufficient funds for gas * price + value: address 0x11 have 0 want 21000",
        ] {
            let error = ChainError::rpc(said.into());
            assert!(matches!(error, ChainError::InsufficientFunds(_)), "{said}");
            assert!(error.to_string().contains("infergrid devnet fund ADDRESS"), "{error}");
        }
        let other = ChainError::rpc("nonce too low".into());
        assert_eq!(other.to_string(), "rpc error: nonce too low");
    }
}
