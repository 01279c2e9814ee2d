//! `infergrid channels`: a payer's payment channels — what each holds and has paid, and
//! closing them to take the unused deposit back. Gateways open and top them up on their own.

use alloy::primitives::{Address, U256};
use anyhow::bail;
use clap::{Args, Subcommand};
use infergrid::chain::Channels;
use infergrid::chain::audit::format_tokens;

use super::keys::KeyArgs;

#[derive(Debug, Args)]
#[command(mut_arg("key_env", |a| a.default_value("INFERGRID_PAYER_KEY")))]
pub struct ChannelsArgs {
    #[command(flatten)]
    chain: super::ChainTarget,
    /// The payer's key.
    #[command(flatten)]
    key: KeyArgs,
    #[command(subcommand)]
    command: ChannelsCommand,
}

#[derive(Debug, Subcommand)]
enum ChannelsCommand {
    /// Every channel this payer opened: node, deposit, paid, refundable, state.
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
    deposit: U256,
    paid: U256,
    closes_at: u64,
    closed: bool,
}

impl Row {
    fn state(&self, now: u64) -> String {
        match (self.closed, self.closes_at) {
            (true, _) => "closed".into(),
            (false, 0) => "open".into(),
            (false, t) if now < t => format!("closing (finalize from {})", super::when::at(t, now)),
            (false, _) => "ready to finalize".into(),
        }
    }
}

async fn rows(channels: &Channels, payer: Address, from_block: u64) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for id in channels.opened_by(payer, from_block).await? {
        let c = channels.channel(id).await?;
        rows.push(Row {
            id,
            node: c.node,
            deposit: U256::from(c.deposit),
            paid: U256::from(c.paid),
            closes_at: c.closesAt,
            closed: channels.is_closed(id).await?,
        });
    }
    Ok(rows)
}

pub async fn run(args: ChannelsArgs) -> anyhow::Result<()> {
    let (deployment, account) = args.chain.account(&args.key.secret()?).await?;
    let channels = account.contracts(&deployment).channels;
    let all = rows(&channels, account.address, deployment.deploy_block).await?;
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
                        "refundable": (r.deposit - r.paid).to_string(),
                        "closes_at": r.closes_at, "closed": r.closed, "state": r.state(now),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        ChannelsCommand::List { json: false } => {
            println!(
                "{:>8}  {:<42}  {:>16}  {:>16}  {:>16}  state",
                "channel", "node", "deposit", "paid", "refundable"
            );
            for r in &all {
                println!(
                    "{:>8}  {:<42}  {:>16}  {:>16}  {:>16}  {}",
                    r.id.to_string(),
                    r.node.to_string(),
                    format_tokens(r.deposit),
                    format_tokens(r.paid),
                    format_tokens(r.deposit - r.paid),
                    r.state(now)
                );
            }
        }
        ChannelsCommand::Close { ids } => {
            let open = chosen(&ids, &|r| !r.closed && r.closes_at == 0)?;
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
            let ready = |r: &Row| !r.closed && r.closes_at != 0 && now >= r.closes_at;
            let finalizable = chosen(&ids, &ready)?;
            if finalizable.is_empty() {
                // Say what is pending, and when it can be finalized.
                let closing: Vec<String> = all
                    .iter()
                    .filter(|r| !r.closed && r.closes_at > now)
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
                let after = channels.channel(id).await?;
                let row = all.iter().find(|r| r.id == id).expect("chosen from all");
                println!(
                    "finalize channel {id}: tx {}, refunded {}",
                    receipt.transaction_hash,
                    format_tokens(row.deposit - U256::from(after.deposit))
                );
            }
        }
    }
    Ok(())
}
