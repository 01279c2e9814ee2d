//! `infergrid ledger`: what a node's payment ledger holds, read offline (stop the node first:
//! the ledger file is locked while it runs).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use infergrid::pay::Ledger;

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// The node's ledger file (`infergrid node --ledger`).
    #[arg(long)]
    ledger: PathBuf,
    /// Print JSON, amounts as decimal wei strings.
    #[arg(long)]
    json: bool,
}

pub fn run(args: LedgerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.ledger.is_file(), "no ledger at {}", args.ledger.display());
    let ledger = Ledger::inspect(&args.ledger).with_context(|| {
        format!("opening {} (is its node still running?)", args.ledger.display())
    })?;
    let records = ledger.all()?;
    if args.json {
        let rows: Vec<_> = records
            .iter()
            .map(|(channel, r)| {
                serde_json::json!({
                    "channel": channel.to_string(),
                    "payer": r.payer.to_string(),
                    "metered_block_tokens": r.metered,
                    "vouched": r.vouched().to_string(),
                    "redeemed": r.redeemed.to_string(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:>8}  {:<42}  {:>14}  {:>24}  {:>24}",
        "channel", "payer", "block-tokens", "vouched (wei)", "redeemed (wei)"
    );
    for (channel, r) in &records {
        println!(
            "{:>8}  {:<42}  {:>14}  {:>24}  {:>24}",
            channel.to_string(),
            r.payer.to_string(),
            r.metered,
            r.vouched().to_string(),
            r.redeemed.to_string()
        );
    }
    Ok(())
}
