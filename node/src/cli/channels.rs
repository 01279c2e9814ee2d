//! `infergrid channels`: a payer's payment channels — what each holds and has paid, and
//! closing them to take the unused deposit back. Gateways open and top them up on their own.

use std::collections::HashMap;
use std::path::Path;

use alloy::primitives::{Address, U256};
use anyhow::bail;
use clap::{Args, Subcommand};
use infergrid::chain::Channels;
use infergrid::chain::audit::format_tokens;
use infergrid::pay::Wallet;

use super::swarm::default_wallet;

use super::keys::KeyArgs;

#[derive(Debug, Args)]
#[command(mut_arg("key_env", |a| a.default_value("INFERGRID_PAYER_KEY")))]
pub struct ChannelsArgs {
    #[command(flatten)]
    chain: super::ChainTarget,
    /// The payer's key.
    #[command(flatten)]
    key: KeyArgs,
    /// The payer's gateway wallet, read for vouchers signed but not yet redeemed.
    /// Default: .infergrid/wallets/<payer address>.redb
    #[arg(long, global = true)]
    wallet: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: ChannelsCommand,
}

#[derive(Debug, Subcommand)]
enum ChannelsCommand {
    /// Every channel this payer opened: node, deposit, paid (redeemed on-chain), unredeemed
    /// (signed by the gateway, not yet redeemed by the node), refundable, state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Ask to close channels; nodes redeem their latest vouchers during the close window.
    Close {
        /// Channel ids (default: every open channel).
        ids: Vec<U256>,
    },
    /// Refund the unpaid deposit of channels whose close window has passed.
    Finalize {
        /// Channel ids (default: every channel ready to finalize).
        ids: Vec<U256>,
    },
}

/// A channel as its payer sees it.
struct Row {
    id: U256,
    node: Address,
    /// Everything deposited, also after the close (when the contract keeps only `paid`).
    deposit: U256,
    paid: U256,
    /// The latest voucher the payer's wallet signed, when the wallet could be read.
    signed: Option<U256>,
    closes_at: u64,
    /// What `finalizeClose` refunded, once closed.
    refunded: Option<U256>,
}

impl Row {
    /// Signed and not yet redeemed: the node may still redeem it (not after the close).
    fn unredeemed(&self) -> Option<U256> {
        match self.refunded {
            Some(_) => Some(U256::ZERO),
            None => self.signed.map(|signed| signed.min(self.deposit).saturating_sub(self.paid)),
        }
    }

    /// What a close would give back now: the deposit less everything paid or signed.
    fn refundable(&self) -> U256 {
        match self.refunded {
            Some(_) => U256::ZERO,
            None => self
                .deposit
                .saturating_sub(self.paid)
                .saturating_sub(self.unredeemed().unwrap_or_default()),
        }
    }

    fn state(&self, now: u64) -> String {
        match (self.refunded, self.closes_at) {
            (Some(refund), _) => format!("closed, {} refunded", format_tokens(refund)),
            (None, 0) => "open".into(),
            (None, t) if now < t => format!("closing (finalize from {})", super::when::at(t, now)),
            (None, _) => "ready to finalize".into(),
        }
    }
}

async fn rows(
    channels: &Channels,
    payer: Address,
    from_block: u64,
    signed: Option<&HashMap<U256, U256>>,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for id in channels.opened_by(payer, from_block).await? {
        let c = channels.channel(id).await?;
        let paid = U256::from(c.paid);
        let refunded = match channels.is_closed(id).await? {
            true => Some(channels.refunded(id, from_block).await?.unwrap_or_default()),
            false => None,
        };
        rows.push(Row {
            id,
            node: c.node,
            deposit: U256::from(c.deposit) + refunded.unwrap_or_default(),
            paid,
            // A channel the wallet does not hold (opened from another wallet, or replaced in
            // it by a newer channel to the same node): what was signed on it is unknown.
            signed: signed.and_then(|s| s.get(&id).copied()),
            closes_at: c.closesAt,
            refunded,
        });
    }
    Ok(rows)
}

/// The payer's signed vouchers from its wallet at `path`, or `None` with a note saying why
/// they are left out (no wallet here; a running gateway holds it).
fn signed_vouchers(path: &Path) -> Option<HashMap<U256, U256>> {
    if !path.is_file() {
        eprintln!(
            "note: no wallet at {}: vouchers signed but not redeemed are not shown (pass \
             --wallet with the gateway's wallet)",
            path.display()
        );
        return None;
    }
    match Wallet::signed_in(path) {
        Ok(signed) => Some(signed),
        Err(e) => {
            eprintln!(
                "note: cannot read the wallet {} ({e}; is its gateway running?): vouchers \
                 signed but not redeemed are not shown; the gateway's /healthz lists them \
                 (routing.payments)",
                path.display()
            );
            None
        }
    }
}

pub async fn run(args: ChannelsArgs) -> anyhow::Result<()> {
    let (deployment, account) = args.chain.account(&args.key.secret()?).await?;
    let channels = account.contracts(&deployment).channels;
    let signed = match &args.command {
        ChannelsCommand::List { .. } => {
            let path = args.wallet.clone().unwrap_or_else(|| default_wallet(account.address));
            signed_vouchers(&path)
        }
        _ => None,
    };
    let all = rows(&channels, account.address, deployment.deploy_block, signed.as_ref()).await?;
    let (_, now) = channels.gas_price_and_time().await?;
    let chosen = |ids: &[U256], default: &dyn Fn(&Row) -> bool| -> anyhow::Result<Vec<U256>> {
        if let Some(unknown) = ids.iter().find(|id| !all.iter().any(|r| r.id == **id)) {
            bail!("channel {unknown} was not opened by {}", account.address);
        }
        Ok(all
            .iter()
            .filter(|r| if ids.is_empty() { default(r) } else { ids.contains(&r.id) })
            .map(|r| r.id)
            .collect())
    };
    match args.command {
        ChannelsCommand::List { json: true } => {
            let list: Vec<_> = all
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "channel": r.id.to_string(), "node": r.node.to_string(),
                        "deposit": r.deposit.to_string(), "paid": r.paid.to_string(),
                        "unredeemed": r.unredeemed().map(|u| u.to_string()),
                        "refundable": r.refundable().to_string(),
                        "refunded": r.refunded.map(|u| u.to_string()),
                        "closes_at": r.closes_at, "closed": r.refunded.is_some(),
                        "state": r.state(now),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        ChannelsCommand::List { json: false } => {
            println!(
                "{:>8}  {:<42}  {:>16}  {:>16}  {:>16}  {:>16}  state",
                "channel", "node", "deposit", "paid", "unredeemed", "refundable"
            );
            for r in &all {
                println!(
                    "{:>8}  {:<42}  {:>16}  {:>16}  {:>16}  {:>16}  {}",
                    r.id.to_string(),
                    r.node.to_string(),
                    format_tokens(r.deposit),
                    format_tokens(r.paid),
                    r.unredeemed().map_or_else(|| "?".into(), format_tokens),
                    format_tokens(r.refundable()),
                    r.state(now)
                );
            }
        }
        ChannelsCommand::Close { ids } => {
            let open = chosen(&ids, &|r| r.refunded.is_none() && r.closes_at == 0)?;
            if open.is_empty() {
                println!(
                    "no open channel to close ({} channels: `infergrid channels list`)",
                    all.len()
                );
            }
            for id in open {
                let receipt = channels.request_close(id).await?;
                println!("close channel {id}: tx {}", receipt.transaction_hash);
            }
        }
        ChannelsCommand::Finalize { ids } => {
            let ready = |r: &Row| r.refunded.is_none() && r.closes_at != 0 && now >= r.closes_at;
            let finalizable = chosen(&ids, &ready)?;
            if finalizable.is_empty() {
                // Say what is pending, and when it can be finalized.
                let closing: Vec<String> = all
                    .iter()
                    .filter(|r| r.refunded.is_none() && r.closes_at > now)
                    .map(|r| format!("channel {} from {}", r.id, super::when::at(r.closes_at, now)))
                    .collect();
                match closing.is_empty() {
                    true => println!("no channel is ready to finalize (none is closing)"),
                    false => {
                        println!("no channel is ready to finalize yet: {}", closing.join(", "))
                    }
                }
            }
            for id in finalizable {
                let receipt = channels.finalize_close(id).await?;
                let refunded =
                    channels.refunded(id, receipt.block_number.unwrap_or_default()).await?;
                println!(
                    "finalize channel {id}: tx {}, refunded {}",
                    receipt.transaction_hash,
                    format_tokens(refunded.unwrap_or_default())
                );
            }
        }
    }
    Ok(())
}
