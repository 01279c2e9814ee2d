//! Subcommands. `anyhow` lives here at the edge; the library speaks typed errors.

mod audit;
mod bench;
mod bench_batch;
mod bench_fetch;
mod bench_http;
mod bench_judge;
mod bench_load;
mod bench_nat;
mod bench_spec;
mod bench_swarm;
mod bench_validators;
mod chain;
mod channels;
mod dashboard;
mod devnet;
mod fetch;
mod infer;
mod keys;
mod ledger;
mod model;
mod operator;
mod registration;
mod relay;
mod swarm;
mod target;
mod validator;

use clap::{Parser, Subcommand};
use infergrid::when;

pub use target::ChainTarget;

/// InferGrid: a decentralized inference network paid per token in BTT.
///
/// Operators stake and serve layer blocks of a model, dApps pay per token through payment
/// channels, validators challenge nodes and vote on faults, auditors read it all on-chain.
#[derive(Debug, Parser)]
#[command(name = "infergrid", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or `json` (one object per line). Which lines: `RUST_LOG`, e.g.
    /// `RUST_LOG=debug` for every hop of every step, `RUST_LOG=info,libp2p=debug` for the
    /// network's own events; default `warn,infergrid=info`.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: infergrid::telemetry::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local chain (anvil) with the contracts deployed and every role provisioned.
    Devnet(devnet::DevnetArgs),
    /// Deploy the contract suite to an RPC endpoint and write a deployment file.
    Deploy(chain::DeployArgs),
    /// Inspect a deployment on-chain.
    #[command(subcommand)]
    Chain(chain::ChainCommand),
    /// Import and verify models split into layer blocks.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Generate text with a model, all blocks in this process.
    Infer(infer::InferArgs),
    /// Print sentence embeddings from an encoder model.
    Embed(infer::EmbedArgs),
    /// Stake, register, unbond and withdraw as a node operator.
    Operator(operator::OperatorArgs),
    /// Stake, unbond and withdraw as a validator.
    Validator(validator::ValidatorArgs),
    /// Create encrypted keystore files for `--keystore`.
    #[command(subcommand)]
    Keystore(keys::KeystoreCommand),
    /// Read stake, reputation, slashes, challenges and payments back from the chain (auditors).
    Audit(audit::AuditArgs),
    /// Serve the auditors' web page of the network: operators, stake, reputation, history.
    Dashboard(dashboard::DashboardArgs),
    /// Serve layer blocks of a model to the swarm (operators).
    Node(swarm::NodeArgs),
    /// Route requests through the swarm and serve an OpenAI-compatible API (dApps).
    Gateway(swarm::GatewayArgs),
    /// Relay traffic to registered nodes behind NAT (circuit relay v2), for anyone to reach them.
    Relay(relay::RelayArgs),
    /// A payer's payment channels: list them, close them, take unused deposits back (dApps).
    Channels(channels::ChannelsArgs),
    /// Print a node's payment ledger: vouchers held, usage metered, amounts redeemed.
    Ledger(ledger::LedgerArgs),
    /// Benchmarks that print the figures the project reports.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Cli {
    /// Whether the command serves until stopped (a devnet, node, gateway, validator or
    /// benchmark) rather than answering and exiting.
    pub fn serves(&self) -> bool {
        matches!(
            self.command,
            Command::Devnet(_)
                | Command::Dashboard(_)
                | Command::Node(_)
                | Command::Gateway(_)
                | Command::Relay(_)
                | Command::Validator(_)
                | Command::Bench(_)
        )
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Devnet(args) => devnet::run(args).await,
        Command::Deploy(args) => chain::deploy(args).await,
        Command::Chain(cmd) => chain::run(cmd).await,
        Command::Model(cmd) => model::run(cmd).await,
        Command::Infer(args) => infer::infer(args),
        Command::Embed(args) => infer::embed(args),
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Node(args) => swarm::node(args).await,
        Command::Operator(args) => operator::run(args).await,
        Command::Validator(args) => validator::run(args).await,
        Command::Keystore(cmd) => keys::run(cmd),
        Command::Audit(args) => audit::run(args).await,
        Command::Dashboard(args) => dashboard::run(args).await,
        Command::Gateway(args) => swarm::gateway(args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::Ledger(args) => ledger::run(args),
        Command::Channels(args) => channels::run(args).await,
    }
}

/// Parses an inclusive block range: `2` or `1-3`.
fn parse_block_range(text: &str) -> anyhow::Result<(u32, u32)> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| anyhow::anyhow!("{text:?} is not a block range like 2 or 1-3"))
    };
    let (first, last) = (parse(a)?, parse(b)?);
    anyhow::ensure!(first <= last, "block range {text} ends before it starts");
    Ok((first, last))
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT), or SIGTERM, which service
/// managers (systemd, Docker, Kubernetes) send. Long-running commands stop gracefully on
/// either: a node flushes its payment ledger, a devnet stops the processes it started.
pub async fn stop_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted,
        _ = terminate.recv() => Ok(()),
    }
}
