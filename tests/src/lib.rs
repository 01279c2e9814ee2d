//! Shared harness for the end-to-end tests: a real anvil with the real contracts, and
//! model fixtures made by the repository's scripts.

pub mod http;
pub mod models;
pub mod nodes;
pub mod procs;
pub mod proxy;
pub mod versions;

use alloy::primitives::{Address, B256, Bytes, U256, utils::parse_ether};
use alloy::providers::Provider;
use infergrid::chain::{Account, Contracts, DeployParams, Deployment, NodeRegistration, deploy};
use infergrid::devnet::{AnvilProcess, DEVNET_CHAIN_ID, DevAccount, Role, accounts_with};
use infergrid::identity::NodeIdentity;
use infergrid::tools::{self, Tool};

/// A fresh anvil (on a free port) with the suite deployed by the deployer dev account.
pub struct Chain {
    pub anvil: AnvilProcess,
    pub deployment: Deployment,
    pub deployer: Account,
}

impl Chain {
    /// Starts anvil and deploys with the devnet parameters.
    pub async fn start() -> anyhow::Result<Self> {
        let anvil =
            AnvilProcess::spawn(&tools::locate(Tool::Anvil)?, "127.0.0.1", 0, DEVNET_CHAIN_ID)
                .await?;
        let deployer = Account::connect(anvil.url(), &dev(Role::Deployer, 0).private_key).await?;
        let params = DeployParams::devnet(dev(Role::Treasury, 0).address);
        let deployment = deploy(&deployer, &params, None).await?;
        Ok(Self { anvil, deployment, deployer })
    }

    /// Connects as `account` and returns its contract clients.
    pub async fn as_account(&self, account: &DevAccount) -> anyhow::Result<Contracts> {
        Ok(Account::connect(self.anvil.url(), &account.private_key)
            .await?
            .contracts(&self.deployment))
    }

    /// Mints `amount` whole BTT to `to`.
    pub async fn fund(&self, to: Address, amount: &str) -> anyhow::Result<()> {
        self.deployer.contracts(&self.deployment).token.mint(to, parse_ether(amount)?).await?;
        Ok(())
    }

    /// What `operator` registers for its node: the identity derived from its key, with that
    /// identity's signature letting `operator` register it here, serving `blocks` of
    /// `model_id` at `price` wei per token, bonding 10,000 BTT.
    pub fn registration(
        &self,
        operator: &DevAccount,
        model_id: B256,
        blocks: (u32, u32),
        price: U256,
    ) -> NodeRegistration {
        let identity = NodeIdentity::derive(&operator.private_key);
        let signature = identity.peer_id_ownership_signature(
            self.chain_id(),
            self.deployment.contracts.registry,
            operator.address,
        );
        NodeRegistration {
            peer_id: Bytes::from(identity.peer_id().to_bytes()),
            peer_id_signature: Bytes::copy_from_slice(&signature),
            model_id,
            first_block: blocks.0,
            last_block: blocks.1,
            price_per_token: price,
            multiaddrs: Vec::new(),
            stake: btt("10000"),
        }
    }

    /// Funds `operator` with 20,000 BTT and registers [`Chain::registration`]; returns the
    /// operator's contract clients.
    pub async fn register_node(
        &self,
        operator: &DevAccount,
        model_id: B256,
        blocks: (u32, u32),
        price: U256,
    ) -> anyhow::Result<Contracts> {
        self.fund(operator.address, "20000").await?;
        let contracts = self.as_account(operator).await?;
        let registration = self.registration(operator, model_id, blocks, price);
        contracts.token.approve(self.deployment.contracts.registry, registration.stake).await?;
        contracts.registry.register(&registration).await?;
        Ok(contracts)
    }

    /// Moves the chain's clock forward and mines a block.
    pub async fn advance_time(&self, seconds: u64) -> anyhow::Result<()> {
        let p = &self.deployer.provider;
        let _: serde_json::Value = p.raw_request("evm_increaseTime".into(), (seconds,)).await?;
        let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await?;
        Ok(())
    }

    /// Makes anvil mine the next block, whatever transaction it holds, at `timestamp`.
    pub async fn set_next_block_timestamp(&self, timestamp: u64) -> anyhow::Result<()> {
        let p = &self.deployer.provider;
        let _: serde_json::Value =
            p.raw_request("anvil_setNextBlockTimestamp".into(), (timestamp,)).await?;
        Ok(())
    }

    /// Replaces the latest `depth` blocks with empty ones: their transactions are gone, as
    /// after a reorg.
    pub async fn reorg(&self, depth: u64) -> anyhow::Result<()> {
        let p = &self.deployer.provider;
        let none: Vec<serde_json::Value> = Vec::new();
        let _: serde_json::Value = p.raw_request("anvil_reorg".into(), (depth, none)).await?;
        Ok(())
    }

    /// Mines a block at `timestamp`; later blocks follow on from it.
    pub async fn mine_at(&self, timestamp: u64) -> anyhow::Result<()> {
        self.set_next_block_timestamp(timestamp).await?;
        let _: serde_json::Value =
            self.deployer.provider.raw_request("evm_mine".into(), ()).await?;
        Ok(())
    }

    /// The latest block's timestamp.
    pub async fn now(&self) -> anyhow::Result<u64> {
        Ok(infergrid::chain::latest_block_time(&self.deployer.provider).await?)
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.deployment.chain_id
    }
}

/// The `n`-th development account with `role`.
pub fn dev(role: Role, n: usize) -> DevAccount {
    accounts_with(role).swap_remove(n)
}

/// `amount` whole BTT in wei.
pub fn btt(amount: &str) -> U256 {
    parse_ether(amount).expect("valid amount")
}

/// A deterministic 32-byte value for test data.
pub fn word(tag: &str) -> B256 {
    infergrid::eip712::keccak256(tag.as_bytes())
}

/// `cast call` of `signature` on `contract` with `args`, at `block` (the latest if `None`):
/// each word of the answer (a tuple's fields in order), without cast's `[1e21]` annotations.
pub fn cast_call(
    rpc: &str,
    contract: &str,
    signature: &str,
    args: &[&str],
    block: Option<&str>,
) -> Vec<String> {
    let out = std::process::Command::new(tools::locate(Tool::Cast).unwrap())
        .args(["call", "--rpc-url", rpc, contract, signature])
        .args(args)
        .args(block.map(|block| ["--block", block]).into_iter().flatten())
        .output()
        .unwrap();
    assert!(out.status.success(), "cast: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(", ")
        .map(|word| word.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}
