use std::path::PathBuf;

use alloy::primitives::utils::parse_ether;
use alloy::primitives::{Address, Bytes, U256};
use alloy::rpc::types::TransactionReceipt;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use infergrid::chain::audit::{AuditError, Auditor, format_tokens};
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
    /// Change what the registered node serves and where gateways dial it (`updateService`);
    /// what is not given stays as registered.
    Update {
        /// Imported model folder whose id is registered.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Blocks served, inclusive: `2` or `1-2`.
        #[arg(long)]
        blocks: Option<String>,
        /// Price per token, e.g. `0.000001BTT` or `1000000000000wei`.
        #[arg(long)]
        price: Option<String>,
        /// Where gateways dial the node (repeatable; replaces all registered ones; the
        /// /p2p/<peer id> suffix is added).
        #[arg(long)]
        multiaddr: Vec<String>,
    },
    /// Add stake (`1000`, `1000BTT`: whole BTT; or `…wei`).
    Stake { amount: String },
    /// Move stake (`2500`, `2500BTT`: whole BTT; or `…wei`) into unbonding; it can be withdrawn
    /// after the unbonding period. Below the minimum stake the node stops being routed to.
    Unbond {
        amount: String,
        /// Unbond even if what stays bonded falls below the minimum stake.
        #[arg(long)]
        yes: bool,
    },
    /// End a jail term that has run out, so the node is routed to again.
    Unjail,
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
                multiaddrs: with_peer(&multiaddr, peer),
                stake: parse_amount(&stake)?,
            };
            check_can_register(&account, &c, registration.stake).await?;
            report(
                "approve",
                &c.token.approve(deployment.contracts.registry, registration.stake).await?,
            );
            report("register", &c.registry.register(&registration).await?);
        }
        OperatorCommand::Update { model, blocks, price, multiaddr } => {
            let node = c.registry.node(account.address).await?;
            if node.registeredAt == 0 {
                bail!("{} is not registered: `infergrid operator register` first", account.address);
            }
            let model_id = match model {
                Some(model) => infergrid::model::ModelManifest::load(&model)?.id(),
                None => node.modelId,
            };
            let blocks = match blocks {
                Some(blocks) => super::parse_block_range(&blocks)?,
                None => (node.firstBlock, node.lastBlock),
            };
            let price = price.map(|p| parse_amount(&p)).transpose()?.unwrap_or(node.pricePerToken);
            let multiaddrs = if multiaddr.is_empty() {
                node.multiaddrs
            } else {
                with_peer(&multiaddr, NodeIdentity::derive(&key).peer_id())
            };
            report(
                "update",
                &c.registry.update_service(model_id, blocks, price, multiaddrs).await?,
            );
        }
        OperatorCommand::Stake { amount } => {
            let amount = parse_amount(&amount)?;
            report("approve", &c.token.approve(deployment.contracts.registry, amount).await?);
            report("stake", &c.registry.add_stake(amount).await?);
        }
        OperatorCommand::Unbond { amount, yes } => {
            let amount = parse_amount(&amount)?;
            let (node, min_stake) =
                (c.registry.node(account.address).await?, c.registry.min_stake().await?);
            let staying = node.stake.saturating_sub(amount);
            if staying < min_stake && amount <= node.stake && !yes {
                bail!(
                    "unbonding {} leaves {} bonded, below the minimum {}: the node \
                     stops being routed to. Pass --yes to unbond anyway",
                    format_tokens(amount),
                    format_tokens(staying),
                    format_tokens(min_stake)
                );
            }
            if !node.unbonding.is_zero() {
                println!(
                    "note: {} already unbonding; this unbonding restarts the wait for all of it",
                    format_tokens(node.unbonding)
                );
            }
            report("unbond", &c.registry.request_unbond(amount).await?)
        }
        OperatorCommand::Unjail => report("unjail", &c.registry.unjail().await?),
        OperatorCommand::Withdraw => {
            let node = c.registry.node(account.address).await?;
            let now = infergrid::chain::latest_block_time(&account.provider).await?;
            if node.unbonding.is_zero() {
                bail!("nothing is unbonding: `infergrid operator unbond AMOUNT` first");
            }
            if now < node.unbondingEndsAt {
                bail!(
                    "{} can be withdrawn at {}, by the chain's clock; unbonding takes {}",
                    format_tokens(node.unbonding),
                    super::when::at(node.unbondingEndsAt, now),
                    super::when::span(c.registry.unbonding_period().await?)
                );
            }
            report("withdraw", &c.registry.withdraw().await?)
        }
        OperatorCommand::Deregister => report("deregister", &c.registry.deregister().await?),
        OperatorCommand::Status { address } => {
            return status(&args.chain.rpc_url(), &deployment, address.unwrap_or(account.address))
                .await;
        }
    }
    status(&args.chain.rpc_url(), &deployment, account.address).await
}

/// `addresses` with this node's `/p2p/<peer id>` suffix.
fn with_peer(addresses: &[String], peer: libp2p::PeerId) -> Vec<String> {
    addresses.iter().map(|a| format!("{}/p2p/{peer}", a.trim_end_matches('/'))).collect()
}

/// What `register` needs, checked before any transaction: not registered yet, a stake of at
/// least the minimum, that much BTT, and ether for gas.
async fn check_can_register(
    account: &infergrid::chain::Account,
    c: &infergrid::chain::Contracts,
    stake: U256,
) -> anyhow::Result<()> {
    use alloy::providers::Provider;
    let me = account.address;
    if c.registry.node(me).await?.registeredAt != 0 {
        bail!(
            "{me} is already registered: `infergrid operator update` changes what it serves, \
             `infergrid operator stake` adds stake"
        );
    }
    let min_stake = c.registry.min_stake().await?;
    if stake < min_stake {
        bail!(
            "a stake of {} is below the registry's minimum {} (`infergrid chain info`)",
            format_tokens(stake),
            format_tokens(min_stake)
        );
    }
    let balance = c.token.balance_of(me).await?;
    if balance < stake {
        bail!(
            "{me} holds {}, less than the stake {}: get BTT first (on a devnet, \
             `infergrid devnet fund {me}`)",
            format_tokens(balance),
            format_tokens(stake)
        );
    }
    if account.provider.get_balance(me).await?.is_zero() {
        bail!(
            "{me} has no ether to pay gas: send it some (on a devnet, `infergrid devnet fund {me}`)"
        );
    }
    Ok(())
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
