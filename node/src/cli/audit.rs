//! `infergrid audit`: stake, reputation, challenges, slashes and payments read back from
//! the chain, as tables for people or JSON for scripts. Read-only: no key.

use alloy::primitives::Address;
use clap::{Args, Subcommand};
use infergrid::chain::audit::{
    AuditError, Auditor, DEFAULT_LOG_WINDOW, EpochSummary, HistoryEvent, NodeAudit, Value, epochs,
    format_tokens, peer_id_text,
};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    chain: super::ChainTarget,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Every registered node: stake, reputation, challenge results, faults, slashes, jail.
    Nodes {
        /// Print a JSON array instead; token amounts are exact decimal strings of wei.
        #[arg(long)]
        json: bool,
    },
    /// One node's state and its history from the registry, validation and channel events.
    Node {
        /// The node's operator address.
        operator: Address,
        /// Print JSON instead; token amounts and ids are exact decimal strings.
        #[arg(long)]
        json: bool,
        /// Blocks per `eth_getLogs` request; lower it for endpoints that cap the range.
        #[arg(long, default_value_t = DEFAULT_LOG_WINDOW)]
        log_window: u64,
    },
}

/// `audit node --json`.
#[derive(Serialize)]
struct NodeReport<'a> {
    /// `null` for an operator whose node was deregistered: its history stays on the chain.
    node: Option<&'a NodeAudit>,
    /// The history folded per epoch: results, score, reports, verdicts, slashes.
    epochs: &'a [EpochSummary],
    history: &'a [HistoryEvent],
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let deployment = args.chain.load()?;
    let auditor = Auditor::connect(&args.chain.rpc_url(), &deployment).await?;
    match args.command {
        AuditCommand::Nodes { json } => {
            let nodes = auditor.nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!(
                    "{} nodes registered with {} as of block {}",
                    nodes.len(),
                    auditor.registry(),
                    auditor.block()
                );
                print_table(&nodes);
            }
        }
        AuditCommand::Node { operator, json, log_window } => {
            let auditor = auditor.with_log_window(log_window);
            let (node, history) = match auditor.node(operator).await {
                Ok(node) => (Some(node), auditor.history(operator).await?),
                // A deregistered node has no record left, but everything it did is in the logs.
                Err(unregistered @ AuditError::NotRegistered { .. }) => {
                    let history = auditor.history(operator).await?;
                    if history.is_empty() {
                        return Err(unregistered.into());
                    }
                    (None, history)
                }
                Err(e) => return Err(e.into()),
            };
            let epochs = epochs(&history);
            if json {
                let report = NodeReport { node: node.as_ref(), epochs: &epochs, history: &history };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                match &node {
                    Some(node) => print_node(node),
                    None => println!(
                        "{operator} has no node registered as of block {} (deregistered); its history:",
                        auditor.block()
                    ),
                }
                print_epochs(&epochs);
                print_history(operator, &history);
            }
        }
    }
    Ok(())
}

const COLUMNS: [&str; 13] = [
    "OPERATOR",
    "PEER ID",
    "MODEL",
    "BLOCKS",
    "PRICE/TOKEN",
    "STAKE",
    "REPUTATION",
    "PASSED",
    "FAILED",
    "FAULTS",
    "SLASHED",
    "JAILED",
    "ACTIVE",
];

fn print_table(nodes: &[NodeAudit]) {
    let rows: Vec<[String; 13]> = nodes
        .iter()
        .map(|n| {
            [
                n.operator.to_string(),
                peer_id_text(&n.peer_id),
                format!("{}…", &n.model_id.to_string()[..10]),
                format!("{}-{}", n.first_block, n.last_block),
                format_tokens(n.price_per_token),
                format_tokens(n.stake),
                format!("{} bps", n.reputation_bps),
                n.challenges_passed.to_string(),
                n.challenges_failed.to_string(),
                n.faults.to_string(),
                format_tokens(n.total_slashed),
                jailed(n),
                if n.active { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let header = COLUMNS.map(str::to_owned);
    let width = |i: usize| {
        std::iter::once(&header).chain(&rows).map(|row| row[i].chars().count()).max().unwrap_or(0)
    };
    let widths: Vec<usize> = (0..COLUMNS.len()).map(width).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

fn jailed(node: &NodeAudit) -> String {
    if node.jailed {
        format!("until {}", super::when::at(node.jailed_until, node.as_of_time))
    } else {
        "no".to_owned()
    }
}

pub fn print_node(n: &NodeAudit) {
    println!("operator     {}", n.operator);
    println!("peer id      {}", peer_id_text(&n.peer_id));
    println!("model        {}", n.model_id);
    println!("blocks       {}-{}", n.first_block, n.last_block);
    println!("price        {} per token", format_tokens(n.price_per_token));
    println!("stake        {}", format_tokens(n.stake));
    if n.unbonding.is_zero() {
        println!("unbonding    0 BTT");
    } else {
        println!(
            "unbonding    {} (withdrawable at {})",
            format_tokens(n.unbonding),
            super::when::at(n.unbonding_ends_at, n.as_of_time)
        );
    }
    println!("registered   {}", super::when::utc(n.registered_at));
    println!("jailed       {}", jailed(n));
    println!("active       {}", n.active);
    println!("reputation   {} bps after {} scored epochs", n.reputation_bps, n.epochs_scored);
    println!("challenges   {} passed, {} failed", n.challenges_passed, n.challenges_failed);
    println!("faults       {}, {} slashed in all", n.faults, format_tokens(n.total_slashed));
    println!("multiaddrs   {}", n.multiaddrs.join(", "));
    println!("as of block  {}", n.as_of_block);
}

/// One line per epoch the validators or a report touched.
fn print_epochs(epochs: &[EpochSummary]) {
    println!("epochs       {} with validation activity", epochs.len());
    for e in epochs {
        let score = match e.score_bps {
            Some(bps) => format!("score {bps} bps"),
            None => "not finalized".to_owned(),
        };
        let mut line = format!(
            "  epoch {}: {score}; results {} committed, {} revealed: {} passed, {} failed",
            e.epoch, e.committed, e.revealed, e.passed, e.failed
        );
        if e.reports > 0 {
            line.push_str(&format!(
                "; {} reports: {} guilty, {} rejected, {} slashed",
                e.reports,
                e.guilty,
                e.rejected,
                format_tokens(e.slashed)
            ));
        }
        println!("{line}");
    }
}

/// One line per event; the audited node's own address is left out of its fields.
fn print_history(operator: Address, history: &[HistoryEvent]) {
    println!("history      {} events", history.len());
    for e in history {
        let fields: Vec<String> = e
            .event
            .fields()
            .into_iter()
            .filter(|(_, value)| *value != Value::Address(operator))
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        println!("  block {} tx {} {} {}", e.block, e.tx, e.event.name(), fields.join(" "));
    }
}
