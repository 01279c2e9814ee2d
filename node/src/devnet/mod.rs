//! `infergrid devnet`: a local chain with the contracts deployed and every role funded and
//! registered from anvil's well-known accounts, ready for nodes, gateways and tests.

mod accounts;
mod anvil;

pub use accounts::{DevAccount, Role, accounts_with, dev_accounts};
pub use anvil::{AnvilError, AnvilProcess};

use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256, Bytes, U256, utils::parse_ether};
use alloy::providers::Provider;
use serde::Serialize;

use crate::chain::{Account, ChainError, DeployParams, Deployment, NodeRegistration, deploy};
use crate::eip712::keccak256;
use crate::identity::NodeIdentity;

/// Anvil's default chain id.
pub const DEVNET_CHAIN_ID: u64 = 31337;

/// The model id operators register when the devnet serves no real model yet.
pub fn placeholder_model_id() -> B256 {
    keccak256(b"infergrid/devnet/placeholder-model")
}

/// A failure while bringing the devnet up.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error(transparent)]
    Anvil(#[from] AnvilError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "{wanted} {what} asked, the devnet has {available} such accounts (anvil-fixtures/dev-accounts.json)"
    )]
    NotEnoughAccounts { what: &'static str, wanted: usize, available: usize },
}

/// One registered operator, as written to the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorInfo {
    pub address: Address,
    pub peer_id: String,
    pub model_id: B256,
    pub first_block: u32,
    pub last_block: u32,
    pub price_per_token: U256,
    pub stake: U256,
    pub multiaddrs: Vec<String>,
}

/// Who plays which role on the devnet.
#[derive(Debug, Clone, Serialize)]
pub struct Roles {
    pub deployer: Address,
    pub treasury: Address,
    pub operators: Vec<OperatorInfo>,
    pub validators: Vec<Address>,
    pub payers: Vec<Address>,
}

/// Everything `--ready-file` and `anvil-fixtures/devnet/manifest.json` hold.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub rpc_url: String,
    pub chain_id: u64,
    pub deploy_block: u64,
    pub contracts: crate::chain::ContractAddresses,
    pub deployment_file: PathBuf,
    pub state_file: PathBuf,
    pub roles: Roles,
    /// The gateway's OpenAI API, when the devnet started nodes and a gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Process ids of the node processes it started.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_pids: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_pid: Option<u32>,
    /// Process ids of the validator processes it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validator_pids: Vec<u32>,
}

/// Amounts the devnet hands out.
const FUNDING: &str = "1000000";
const NODE_STAKE: &str = "10000";
const VALIDATOR_STAKE: &str = "10000";
/// Operator `i` charges `(i + 1) · 10^12` wei (10^-6 BTT) per token: distinct prices, so
/// that what each node is paid tells its metering apart.
const PRICE_PER_TOKEN: u64 = 1_000_000_000_000;

/// The model the devnet's operators register: its id and how many blocks it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedModel {
    pub model_id: B256,
    pub num_blocks: u32,
}

/// How many of the development accounts take part, and how long epochs last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staffing {
    /// Operators registered (at most the 16 operator accounts).
    pub operators: usize,
    /// Validators registered (at most the 5 validator accounts).
    pub validators: usize,
    /// Seconds per validation epoch; `None` keeps the hour-long default.
    pub epoch_secs: Option<u64>,
}

impl Default for Staffing {
    fn default() -> Self {
        Self { operators: 4, validators: 3, epoch_secs: None }
    }
}

/// Deploys the suite to the anvil at `url`, funds every role and registers
/// `staffing.operators` operators (operator `i` serving block `i mod num_blocks` of `model`,
/// or block `i` of a placeholder model, at price `(i + 1) · 10^12` wei per token) and
/// `staffing.validators` validators. Returns the deployment and who plays which role.
pub async fn provision(
    url: &str,
    model: Option<ServedModel>,
    staffing: Staffing,
) -> Result<(Deployment, Roles), DevnetError> {
    let role = |r| accounts_with(r);
    for (wanted, available, what) in [
        (staffing.operators, role(Role::Operator).len(), "operators"),
        (staffing.validators, role(Role::Validator).len(), "validators"),
    ] {
        if wanted > available {
            return Err(DevnetError::NotEnoughAccounts { what, wanted, available });
        }
    }
    let deployer_key = role(Role::Deployer)[0].private_key;
    let treasury = role(Role::Treasury)[0].address;
    let deployer = Account::connect(url, &deployer_key).await?;
    let params = match staffing.epoch_secs {
        Some(secs) => DeployParams::devnet_with_epochs(treasury, secs),
        None => DeployParams::devnet(treasury),
    };
    let deployment = deploy(&deployer, &params, None).await?;
    let admin = deployer.contracts(&deployment);

    let funding = parse_ether(FUNDING).expect("constant");
    let funded: Vec<DevAccount> =
        [Role::Operator, Role::Validator, Role::Payer].into_iter().flat_map(role).collect();
    for account in &funded {
        admin.token.mint(account.address, funding).await?;
    }

    let mut operators = Vec::new();
    let model =
        model.unwrap_or(ServedModel { model_id: placeholder_model_id(), num_blocks: u32::MAX });
    for (index, operator) in (0u32..).zip(role(Role::Operator).into_iter().take(staffing.operators))
    {
        let block = index % model.num_blocks;
        let identity = NodeIdentity::derive(&operator.private_key);
        let peer_id = identity.peer_id();
        let signature = identity.peer_id_ownership_signature(
            deployment.chain_id,
            deployment.contracts.registry,
            operator.address,
        );
        let registration = NodeRegistration {
            peer_id: Bytes::from(peer_id.to_bytes()),
            peer_id_signature: Bytes::copy_from_slice(&signature),
            model_id: model.model_id,
            first_block: block,
            last_block: block,
            price_per_token: U256::from(PRICE_PER_TOKEN) * U256::from(index + 1),
            multiaddrs: vec![node_multiaddr(index, &peer_id)],
            stake: parse_ether(NODE_STAKE).expect("constant"),
        };
        let contracts = Account::connect(url, &operator.private_key).await?.contracts(&deployment);
        contracts.token.approve(deployment.contracts.registry, registration.stake).await?;
        contracts.registry.register(&registration).await?;
        operators.push(OperatorInfo {
            address: operator.address,
            peer_id: peer_id.to_string(),
            model_id: registration.model_id,
            first_block: block,
            last_block: block,
            price_per_token: registration.price_per_token,
            stake: registration.stake,
            multiaddrs: registration.multiaddrs,
        });
    }

    let validator_stake = parse_ether(VALIDATOR_STAKE).expect("constant");
    let validators: Vec<DevAccount> =
        role(Role::Validator).into_iter().take(staffing.validators).collect();
    for validator in &validators {
        let contracts = Account::connect(url, &validator.private_key).await?.contracts(&deployment);
        contracts.token.approve(deployment.contracts.validation, validator_stake).await?;
        contracts.validation.register_validator(validator_stake).await?;
    }

    let roles = Roles {
        deployer: deployer.address,
        treasury,
        operators,
        validators: validators.iter().map(|a| a.address).collect(),
        payers: role(Role::Payer).iter().map(|a| a.address).collect(),
    };
    Ok((deployment, roles))
}

/// First TCP port of the devnet's nodes: node `i` listens on `NODE_PORT_BASE + i`. Below
/// Linux's ephemeral range (32768–60999), so that no outbound connection of the devnet's own
/// processes ever holds one of these ports (a closed one lingers in TIME-WAIT for a minute and
/// the next devnet's node could not listen on it).
pub const NODE_PORT_BASE: u16 = 31_000;

/// Where the devnet's operator `index` listens: `/ip4/127.0.0.1/tcp/<NODE_PORT_BASE + index>/p2p/<peer>`.
pub fn node_multiaddr(index: u32, peer: &libp2p::PeerId) -> String {
    format!("/ip4/127.0.0.1/tcp/{}/p2p/{peer}", u32::from(NODE_PORT_BASE) + index)
}

/// Asks anvil for a snapshot of its whole state (`anvil_dumpState`: gzipped JSON, hex).
/// Load it into a fresh anvil with [`load_state`] to skip deployment.
pub async fn dump_state(account: &Account) -> Result<Bytes, ChainError> {
    Ok(account.provider.raw_request::<_, Bytes>("anvil_dumpState".into(), ()).await?)
}

/// Loads a state written by [`dump_state`] into the anvil behind `account`.
pub async fn load_state(account: &Account, state: Bytes) -> Result<(), ChainError> {
    let loaded: bool = account.provider.raw_request("anvil_loadState".into(), (state,)).await?;
    if loaded { Ok(()) } else { Err(ChainError::Rpc("anvil_loadState returned false".into())) }
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), DevnetError> {
    // Written aside and renamed into place: whoever waits for the file (a ready file) never
    // reads it half-written.
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut aside = path.as_os_str().to_owned();
        aside.push(".partial");
        let text = serde_json::to_string_pretty(value).expect("serializable") + "\n";
        std::fs::write(&aside, text)?;
        std::fs::rename(&aside, path)
    };
    write().map_err(|source| DevnetError::Write { path: path.to_path_buf(), source })
}

/// An anvil state snapshot on disk: a fresh anvil that loads it has the whole devnet
/// (contracts, balances, registrations) without redeploying.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StateFile {
    pub chain_id: u64,
    pub block_number: u64,
    /// `anvil_dumpState` output: gzipped JSON.
    pub state: Bytes,
}

impl StateFile {
    /// Snapshots the anvil behind `account`.
    pub async fn capture(account: &Account) -> Result<Self, ChainError> {
        Ok(Self {
            chain_id: account.provider.get_chain_id().await?,
            block_number: account.provider.get_block_number().await?,
            state: dump_state(account).await?,
        })
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}
