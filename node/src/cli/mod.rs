//! Subcommands. `anyhow` lives here at the edge; the library speaks typed errors.

mod audit;
mod bench;
mod bench_batch;
mod bench_http;
mod bench_judge;
mod bench_load;
mod bench_swarm;
mod bench_validators;
mod chain;
mod channels;
mod devnet;
mod infer;
mod keys;
mod ledger;
mod model;
mod operator;
mod registration;
mod swarm;
mod validator;
mod when;

use std::path::PathBuf;

use alloy::primitives::B256;
use clap::{Args, Parser, Subcommand};
use infergrid::chain::{Account, Deployment};

/// InferGrid: a decentralized inference network paid per token in BTT.
///
/// Operators stake and serve layer blocks of a model, dApps pay per token through payment
/// channels, validators challenge nodes and vote on faults, auditors read it all on-chain.
#[derive(Debug, Parser)]
#[command(name = "infergrid", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Serve layer blocks of a model to the swarm (operators).
    Node(swarm::NodeArgs),
    /// Route requests through the swarm and serve an OpenAI-compatible API (dApps).
    Gateway(swarm::GatewayArgs),
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
                | Command::Node(_)
                | Command::Gateway(_)
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
        Command::Model(cmd) => model::run(cmd),
        Command::Infer(args) => infer::infer(args),
        Command::Embed(args) => infer::embed(args),
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Node(args) => swarm::node(args).await,
        Command::Operator(args) => operator::run(args).await,
        Command::Validator(args) => validator::run(args).await,
        Command::Keystore(cmd) => keys::run(cmd),
        Command::Audit(args) => audit::run(args).await,
        Command::Gateway(args) => swarm::gateway(args).await,
        Command::Ledger(args) => ledger::run(args),
        Command::Channels(args) => channels::run(args).await,
    }
}

/// The chain a command talks to and the InferGrid deployment on it.
#[derive(Debug, Args)]
pub struct ChainTarget {
    /// JSON-RPC endpoint of the chain with the InferGrid contracts.
    #[arg(long, global = true, env = "INFERGRID_RPC_URL", default_value = "http://127.0.0.1:8545")]
    rpc_url: String,
    /// Deployment file (from `infergrid devnet` or `infergrid deploy`); a relative path is
    /// read from the current directory.
    #[arg(
        long,
        global = true,
        env = "INFERGRID_DEPLOYMENT",
        default_value = "anvil-fixtures/devnet/deployment.json"
    )]
    deployment: PathBuf,
}

impl ChainTarget {
    /// The deployment file's contents; a missing file says which was tried and how to point
    /// at another.
    fn load(&self) -> anyhow::Result<Deployment> {
        match Deployment::load(&self.deployment) {
            Err(infergrid::chain::DeploymentFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let directory = std::env::current_dir()
                    .map(|d| format!(" in {}", d.display()))
                    .unwrap_or_default();
                anyhow::bail!(
                    "no deployment file {}{directory}: run `infergrid devnet` there, or pass \
                     --deployment FILE (or set INFERGRID_DEPLOYMENT) to the deployment.json that \
                     `infergrid devnet` or `infergrid deploy` wrote",
                    self.deployment.display()
                )
            }
            loaded => Ok(loaded?),
        }
    }

    /// Connects as the holder of `secret`, checked to serve the deployment.
    async fn account(&self, secret: &B256) -> anyhow::Result<(Deployment, Account)> {
        let deployment = self.load()?;
        let account = Account::connect(&self.rpc_url, secret).await?;
        account.check_deployment(&deployment).await?;
        Ok((deployment, account))
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
