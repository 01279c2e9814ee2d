use std::path::PathBuf;

use alloy::primitives::{Address, Bytes, U256, utils::parse_ether};
use alloy::rpc::types::TransactionReceipt;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use infergrid::chain::audit::{AuditError, Auditor};
use infergrid::chain::{Deployment, NodeRegistration};
use infergrid::identity::NodeIdentity;

use super::keys::KeyArgs;

/// Where and as whom an operator command runs.
#[derive(Debug, Args)]
#[command(mut_arg("key_env", |a| a.default_value("INFERGRID_OPERATOR_KEY")))]
pub struct OperatorArgs {
    #[command(flatten)]
    chain: super::ChainTarget,
    /// The operator's key.
    #[command(flatten)]
    key: KeyArgs,
    #[command(subcommand)]
    command: OperatorCommand,
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Stake and register this operator's node: its libp2p identity, derived from the key,
    /// signs that this operator may register its peer id.
    Register {
        /// Imported model folder whose id is registered.
        #[arg(long)]
        model: PathBuf,
        /// Blocks served, inclusive: `2` or `1-2`.
        #[arg(long)]
        blocks: String,
        /// Price per token, e.g. `0.000001BTT` or `1000000000000wei`.
        #[arg(long)]
        price: String,
        /// Stake to bond, e.g. `1000BTT`.
        #[arg(long)]
        stake: String,
        /// Where gateways dial the node, e.g. /ip4/1.2.3.4/tcp/40000 (repeatable; the
        /// /p2p/<peer id> suffix is added).
        #[arg(long)]
        multiaddr: Vec<String>,
    },
    /// Add stake.
    Stake { amount: String },
    /// Move stake into unbonding; it can be withdrawn after the unbonding period.
    Unbond { amount: String },
    /// Withdraw stake whose unbonding period has passed.
    Withdraw,
    /// Remove the node and free its peer id, once all stake is withdrawn and no jail term runs.
    /// `infergrid node` then serves no one, but still redeems the vouchers in its ledger: run it
    /// until they are redeemed, before the payers' closes end.
    Deregister,
    /// Print the node's on-chain state (default: this operator's).
    Status {
        #[arg(long)]
        address: Option<Address>,
    },
}

/// Parses `1000`, `1000BTT`, `1.5 btt` (whole tokens) or `123wei`.
pub fn parse_amount(text: &str) -> anyhow::Result<U256> {
    let t = text.trim().to_ascii_lowercase();
    let amount = if let Some(wei) = t.strip_suffix("wei") {
        wei.trim().parse::<U256>().with_context(|| format!("{text:?} is not a wei amount"))?
    } else {
        let tokens = t.strip_suffix("btt").unwrap_or(&t).trim();
        parse_ether(tokens)
            .with_context(|| format!("{text:?} is not an amount (e.g. 1000BTT or 5wei)"))?
    };
    if amount.is_zero() {
        bail!("amount must be greater than zero");
    }
    Ok(amount)
}

pub fn report(what: &str, receipt: &TransactionReceipt) {
    println!(
        "{what}: tx {} (block {}, gas {})",
        receipt.transaction_hash,
        receipt.block_number.unwrap_or(0),
        receipt.gas_used
    );
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let key = args.key.secret()?;
    let (deployment, account) = args.chain.account(&key).await?;
    let c = account.contracts(&deployment);
    match args.command {
        OperatorCommand::Register { model, blocks, price, stake, multiaddr } => {
            let manifest = infergrid::model::ModelManifest::load(&model)?;
            let (first_block, last_block) = super::parse_block_range(&blocks)?;
            let identity = NodeIdentity::derive(&key);
            let peer = identity.peer_id();
            let signature = identity.peer_id_ownership_signature(
                deployment.chain_id,
                deployment.contracts.registry,
                account.address,
            );
            let registration = NodeRegistration {
                peer_id: Bytes::from(peer.to_bytes()),
                peer_id_signature: Bytes::copy_from_slice(&signature),
                model_id: manifest.id(),
                first_block,
                last_block,
                price_per_token: parse_amount(&price)?,
                multiaddrs: multiaddr
                    .iter()
                    .map(|a| format!("{}/p2p/{peer}", a.trim_end_matches('/')))
                    .collect(),
                stake: parse_amount(&stake)?,
            };
            report(
                "approve",
                &c.token.approve(deployment.contracts.registry, registration.stake).await?,
            );
            report("register", &c.registry.register(&registration).await?);
        }
        OperatorCommand::Stake { amount } => {
            let amount = parse_amount(&amount)?;
            report("approve", &c.token.approve(deployment.contracts.registry, amount).await?);
            report("stake", &c.registry.add_stake(amount).await?);
        }
        OperatorCommand::Unbond { amount } => {
            report("unbond", &c.registry.request_unbond(parse_amount(&amount)?).await?)
        }
        OperatorCommand::Withdraw => report("withdraw", &c.registry.withdraw().await?),
        OperatorCommand::Deregister => report("deregister", &c.registry.deregister().await?),
        OperatorCommand::Status { address } => {
            return status(&args.chain.rpc_url, &deployment, address.unwrap_or(account.address))
                .await;
        }
    }
    status(&args.chain.rpc_url, &deployment, account.address).await
}

/// The node's on-chain state, as an auditor sees it.
async fn status(rpc_url: &str, deployment: &Deployment, operator: Address) -> anyhow::Result<()> {
    match Auditor::connect(rpc_url, deployment).await?.node(operator).await {
        Ok(node) => super::audit::print_node(&node),
        Err(AuditError::NotRegistered { .. }) => println!("{operator}: not registered"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
