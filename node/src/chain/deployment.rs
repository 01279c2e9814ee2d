use std::path::Path;

use alloy::primitives::{Address, U256, utils::parse_ether};
use alloy::providers::Provider;
use serde::{Deserialize, Serialize};

use super::bindings::{BTT, NodeRegistry, PaymentChannels, Validation};
use super::{Account, ChainError, send};

/// Every parameter fixed at deployment; all of them are readable on-chain afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployParams {
    /// Least stake an active node must bond (token wei).
    pub min_node_stake: U256,
    /// Seconds a node's unbonded stake waits before it can be withdrawn. Must exceed
    /// `Validation.faultExposure()` (the epoch plus the commit, reveal and vote windows), so a
    /// node cannot withdraw ahead of a report about its answers; else `setValidation` reverts.
    pub node_unbonding_period: u64,
    /// Seconds a node stays jailed after a proven fault.
    pub jail_period: u64,
    /// Seconds between a payer's close request and its refund, for nodes to redeem; non-zero.
    pub channel_close_window: u64,
    pub min_validator_stake: U256,
    pub epoch_duration: u64,
    pub result_commit_window: u64,
    pub result_reveal_window: u64,
    pub fault_vote_window: u64,
    /// Must exceed `Validation.faultExposure()` too, or deploying `Validation` reverts.
    pub validator_unbonding_period: u64,
    /// Stake-weighted quorum, in basis points of the total validator stake.
    pub quorum_bps: u16,
    /// Share of a node's stake slashed on a proven fault (bps).
    pub slash_bps: u16,
    /// Share of a slash paid to the reporting validator (bps); the rest goes to the treasury.
    pub reporter_reward_bps: u16,
    /// Weight of a new epoch's score in the reputation moving average (bps).
    pub reputation_alpha_bps: u16,
    /// Bond a validator posts with a fault report, lost if the report is rejected.
    pub report_bond: U256,
    /// Taken from a validator's stake for a committed result it never revealed, or for a
    /// vote against a report's verdict.
    pub validator_penalty: U256,
    pub treasury: Address,
}

impl DeployParams {
    /// Parameters for a local development chain: short windows, small stakes.
    pub fn devnet(treasury: Address) -> Self {
        Self {
            min_node_stake: parse_ether("1000").expect("constant"),
            node_unbonding_period: 7 * 24 * 3600,
            jail_period: 24 * 3600,
            channel_close_window: 3600,
            min_validator_stake: parse_ether("1000").expect("constant"),
            epoch_duration: 3600,
            result_commit_window: 600,
            result_reveal_window: 600,
            fault_vote_window: 3600,
            validator_unbonding_period: 7 * 24 * 3600,
            quorum_bps: 6667,
            slash_bps: 1000,
            reporter_reward_bps: 5000,
            reputation_alpha_bps: 3000,
            report_bond: parse_ether("100").expect("constant"),
            validator_penalty: parse_ether("100").expect("constant"),
            treasury,
        }
    }

    /// The devnet's parameters with epochs of `epoch_secs` (at least 4): commit and reveal
    /// windows of a quarter epoch each and a vote window of one epoch, so a whole validation
    /// round — challenges, results, a fault report and its vote — fits in a few minutes.
    pub fn devnet_with_epochs(treasury: Address, epoch_secs: u64) -> Self {
        let epoch = epoch_secs.max(4);
        Self {
            epoch_duration: epoch,
            result_commit_window: epoch / 4,
            result_reveal_window: epoch / 4,
            fault_vote_window: epoch,
            ..Self::devnet(treasury)
        }
    }

    fn validation_params(&self) -> Validation::Params {
        Validation::Params {
            minValidatorStake: self.min_validator_stake,
            epochDuration: self.epoch_duration,
            commitWindow: self.result_commit_window,
            revealWindow: self.result_reveal_window,
            voteWindow: self.fault_vote_window,
            unbondingPeriod: self.validator_unbonding_period,
            quorumBps: self.quorum_bps,
            slashBps: self.slash_bps,
            reporterRewardBps: self.reporter_reward_bps,
            reputationAlphaBps: self.reputation_alpha_bps,
            reportBond: self.report_bond,
            validatorPenalty: self.validator_penalty,
            treasury: self.treasury,
        }
    }
}

/// The addresses of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractAddresses {
    pub token: Address,
    pub registry: Address,
    pub channels: Address,
    pub validation: Address,
}

/// What a client needs to talk to a deployment: written by `infergrid devnet` and
/// `infergrid deploy`, read by every other command (`--deployment FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub chain_id: u64,
    /// First block holding InferGrid contracts: where event scans start.
    pub deploy_block: u64,
    pub deployer: Address,
    pub contracts: ContractAddresses,
    pub params: DeployParams,
}

/// A deployment file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentFileError {
    // The cause is the error's source, not part of its message: printed as a chain, it
    // would otherwise show twice.
    #[error("cannot read deployment file {path}")]
    Io { path: String, source: std::io::Error },
    #[error("deployment file {path} is not a valid deployment")]
    Parse { path: String, source: serde_json::Error },
}

impl Deployment {
    /// Reads a deployment file.
    pub fn load(path: &Path) -> Result<Self, DeploymentFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeploymentFileError::Io { path: shown.clone(), source })?;
        serde_json::from_str(&text)
            .map_err(|source| DeploymentFileError::Parse { path: shown, source })
    }

    /// Writes this deployment as pretty JSON.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self).expect("serializable") + "\n")
    }
}

/// Deploys the suite in dependency order (BTT → NodeRegistry → PaymentChannels → Validation)
/// and wires the registry's slashing hook to the validation contract.
///
/// `token` reuses an existing ERC-20 (wrapped BTT on a real chain); `None` deploys the
/// mintable test token owned by the deployer.
pub async fn deploy(
    account: &Account,
    params: &DeployParams,
    token: Option<Address>,
) -> Result<Deployment, ChainError> {
    let (provider, deployer) = (&account.provider, account.address);
    let chain_id = provider.get_chain_id().await?;
    let deploy_block = provider.get_block_number().await? + 1;

    let token = match token {
        Some(address) => address,
        None => *BTT::deploy(provider.clone(), deployer).await?.address(),
    };
    let registry = NodeRegistry::deploy(
        provider.clone(),
        token,
        params.min_node_stake,
        params.node_unbonding_period,
        params.jail_period,
    )
    .await?;
    let channels =
        PaymentChannels::deploy(provider.clone(), token, params.channel_close_window).await?;
    let validation = Validation::deploy(
        provider.clone(),
        token,
        *registry.address(),
        params.validation_params(),
    )
    .await?;
    send(registry.setValidation(*validation.address())).await?;

    Ok(Deployment {
        chain_id,
        deploy_block,
        deployer,
        contracts: ContractAddresses {
            token,
            registry: *registry.address(),
            channels: *channels.address(),
            validation: *validation.address(),
        },
        params: params.clone(),
    })
}
