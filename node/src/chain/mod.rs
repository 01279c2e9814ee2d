//! The chain: contract bindings, deployment, and typed clients over alloy.

pub mod audit;
pub mod bindings;
mod clients;
mod deployment;
mod error;
mod gas;

pub use clients::{
    BatchRedemption, Channels, NodeRegistration, RedeemedVoucher, Registry, SkipReason,
    SkippedVoucher, Tally, Token, ValidationClient, ValidatorStanding, latest_block_time,
};
pub use deployment::{ContractAddresses, DeployParams, Deployment, DeploymentFileError, deploy};
pub use error::{ChainError, describe_revert};
use gas::MarginGasFiller;

use std::time::Duration;

use alloy::contract::{CallBuilder, CallDecoder};
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest::{self, Url as ReqwestUrl};

/// A connection to an RPC endpoint that signs as one account.
#[derive(Debug, Clone)]
pub struct Account {
    pub provider: DynProvider,
    pub address: Address,
    pub url: String,
}

impl Account {
    /// Connects to `url` as the holder of `secret`, checking that the endpoint answers.
    pub async fn connect(url: &str, secret: &B256) -> Result<Self, ChainError> {
        let signer = PrivateKeySigner::from_bytes(secret)
            .map_err(|e| ChainError::Rpc(format!("invalid private key: {e}")))?;
        let address = signer.address();
        // The nonce is read from the node for every transaction: a cached nonce would skip
        // ahead after a call that failed gas estimation, and anvil would then hold every
        // later transaction back forever waiting for the gap.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .filler(MarginGasFiller::default())
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(EthereumWallet::from(signer))
            .connect_client(rpc_client(url)?)
            .erased();
        ensure_reachable(&provider, url).await?;
        Ok(Self { provider, address, url: url.to_owned() })
    }

    /// Checks that this endpoint serves `deployment`: same chain id, contracts present.
    pub async fn check_deployment(&self, deployment: &Deployment) -> Result<(), ChainError> {
        check_deployment(&self.provider, &self.url, deployment).await
    }

    /// Typed clients for every contract of `deployment`, signing as this account.
    pub fn contracts(&self, deployment: &Deployment) -> Contracts {
        let c = deployment.contracts;
        let p = || self.provider.clone();
        Contracts {
            token: Token::new(c.token, p()),
            registry: Registry::new(c.registry, p()),
            channels: Channels::new(c.channels, p()),
            validation: ValidationClient::new(c.validation, p()),
        }
    }
}

/// Identifies a deployment's chain history: the hash of the block the contracts were
/// deployed in. A fresh anvil deploying to the same addresses has another, so state kept
/// for one deployment (ledgers, wallets) is never applied to another.
pub async fn deployment_fingerprint(
    provider: &DynProvider,
    deployment: &Deployment,
) -> Result<B256, ChainError> {
    let block = provider
        .get_block_by_number(deployment.deploy_block.into())
        .await?
        .ok_or_else(|| ChainError::Rpc(format!("no block {}", deployment.deploy_block)))?;
    Ok(block.header.hash)
}

/// A read-only connection to `url`, checked to answer.
pub async fn connect_reader(url: &str) -> Result<DynProvider, ChainError> {
    let provider = ProviderBuilder::new().connect_client(rpc_client(url)?).erased();
    ensure_reachable(&provider, url).await?;
    Ok(provider)
}

/// Checks that the endpoint `url` behind `provider` serves `deployment`: same chain id,
/// contracts present. Without it a wrong deployment file reads as zeroes or as undecodable
/// return data instead of saying what is wrong.
pub async fn check_deployment(
    provider: &DynProvider,
    url: &str,
    deployment: &Deployment,
) -> Result<(), ChainError> {
    let actual = provider.get_chain_id().await?;
    if actual != deployment.chain_id {
        return Err(ChainError::WrongChain {
            url: url.to_owned(),
            expected: deployment.chain_id,
            actual,
        });
    }
    let c = deployment.contracts;
    for address in [c.token, c.registry, c.channels, c.validation] {
        if provider.get_code_at(address).await?.is_empty() {
            return Err(ChainError::NoCode(address));
        }
    }
    Ok(())
}

/// Longest an RPC request may take. Without a bound, an endpoint that accepts connections and
/// never answers (overloaded, stopped) would hang every caller forever; with it, the call
/// fails with an error the caller logs and retries.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries of a request the endpoint refused for its rate limit (HTTP 429 or a rate-limit
/// error), with backoff, before the error reaches the caller.
const RATE_LIMIT_RETRIES: u32 = 5;
/// The backoff's base, in milliseconds.
const RATE_LIMIT_BACKOFF_MS: u64 = 250;
/// The compute units per second assumed of the endpoint, for the backoff's pacing.
const COMPUTE_UNITS_PER_SECOND: u64 = 10_000;

/// The JSON-RPC client for `url`: HTTP with [`RPC_TIMEOUT`] on every request, and
/// rate-limited requests retried with backoff (alloy's `RetryBackoffLayer`).
fn rpc_client(url: &str) -> Result<alloy::rpc::client::RpcClient, ChainError> {
    let retry = alloy::transports::layers::RetryBackoffLayer::new(
        RATE_LIMIT_RETRIES,
        RATE_LIMIT_BACKOFF_MS,
        COMPUTE_UNITS_PER_SECOND,
    );
    Ok(alloy::rpc::client::ClientBuilder::default()
        .layer(retry)
        .http_with_client(http_client()?, parse_url(url)?))
}

fn http_client() -> Result<reqwest::Client, ChainError> {
    reqwest::Client::builder()
        .timeout(RPC_TIMEOUT)
        .connect_timeout(RPC_TIMEOUT)
        .build()
        .map_err(|e| ChainError::Rpc(format!("cannot build the HTTP client: {e}")))
}

fn parse_url(url: &str) -> Result<ReqwestUrl, ChainError> {
    url.parse().map_err(|e| ChainError::Unreachable {
        url: url.to_owned(),
        reason: format!("invalid URL: {e}"),
    })
}

async fn ensure_reachable(provider: &DynProvider, url: &str) -> Result<(), ChainError> {
    provider
        .get_chain_id()
        .await
        .map(|_| ())
        .map_err(|e| ChainError::Unreachable { url: url.to_owned(), reason: e.to_string() })
}

/// The four contracts of a deployment, as seen by one account.
#[derive(Debug, Clone)]
pub struct Contracts {
    pub token: Token,
    pub registry: Registry,
    pub channels: Channels,
    pub validation: ValidationClient,
}

/// One transaction submission at a time per process (see [`send`]).
static SUBMISSION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends a contract call as a transaction and waits until it is mined.
///
/// Reverts surface as [`ChainError::Reverted`] with the decoded custom error, because the
/// gas estimate already executes the call.
pub async fn send<P, D>(call: CallBuilder<P, D>) -> Result<TransactionReceipt, ChainError>
where
    P: Provider,
    D: CallDecoder,
{
    // Submissions from one process go one at a time: the nonce is read from the node for each
    // transaction (see `Account::connect`), so two submitted at once would get the same one
    // and one would be refused "nonce too low". Only the submission is serialized — the gas
    // estimate, the nonce read and the raw send, as any nonce manager must — never the wait
    // for the receipt, so a validator's commits, reports and votes still confirm in parallel.
    let pending = {
        let _submitting = SUBMISSION.lock().await;
        call.send().await?
    };
    let hash = *pending.tx_hash();
    // With anvil's automine the receipt exists as soon as the send returns; asking for it
    // directly avoids the watcher's poll interval on every transaction.
    let receipt = match pending.provider().get_transaction_receipt(hash).await? {
        Some(receipt) => receipt,
        None => pending.get_receipt().await?,
    };
    if receipt.status() { Ok(receipt) } else { Err(ChainError::MinedRevert(hash)) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An endpoint that answers HTTP 429 to its first `refusals` requests, then `eth_chainId`.
    async fn rate_limited_endpoint(refusals: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 8192];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&request[..n]).into_owned();
                    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
                    let id = serde_json::from_str::<serde_json::Value>(body)
                        .map(|v| v["id"].clone())
                        .unwrap_or(serde_json::Value::Null);
                    let response = if counter.fetch_add(1, Ordering::SeqCst) < refusals {
                        "HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                    } else {
                        let json =
                            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": "0x7a69"})
                                .to_string();
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                            json.len()
                        )
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn rate_limited_requests_are_retried_with_backoff() {
        use alloy::providers::{Provider, ProviderBuilder};
        let (url, seen) = rate_limited_endpoint(2).await;
        let provider = ProviderBuilder::new().connect_client(super::rpc_client(&url).unwrap());
        assert_eq!(provider.get_chain_id().await.unwrap(), 31337);
        assert_eq!(seen.load(Ordering::SeqCst), 3, "two refusals, then the answer");
    }
}
