use std::path::PathBuf;

use alloy::primitives::Address;
use anyhow::Context;
use clap::{Args, Subcommand};
use infergrid::chain::audit::format_tokens;
use infergrid::chain::bindings::{NodeRegistry, PaymentChannels, Validation};
use infergrid::chain::{Account, DeployParams, Deployment, Registry, connect_reader};

use super::keys::KeyArgs;

#[derive(Debug, Args)]
#[command(mut_arg("key_env", |a| a.default_value("INFERGRID_DEPLOYER_KEY")))]
pub struct DeployArgs {
    /// JSON-RPC endpoint of the target chain.
    #[arg(long, env = "INFERGRID_RPC_URL")]
    rpc_url: String,
    /// The deployer's key.
    #[command(flatten)]
    key: KeyArgs,
    /// An existing ERC-20 to stake and pay with (e.g. wrapped BTT); default deploys the
    /// mintable test token.
    #[arg(long)]
    token: Option<Address>,
    /// Deployment parameters as JSON (the `params` object of a deployment file); default:
    /// the devnet parameters with the deployer as treasury.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Where to write the deployment file.
    #[arg(long, default_value = "deployment.json")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Print a deployment's parameters and state as read from the chain.
    Info {
        #[command(flatten)]
        chain: super::ChainTarget,
    },
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let account = Account::connect(&args.rpc_url, &args.key.secret()?).await?;
    let params = match &args.params {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => DeployParams::devnet(account.address),
    };
    eprintln!("deploy: deploying to {} from {}", args.rpc_url, account.address);
    let deployment = infergrid::chain::deploy(&account, &params, args.token).await?;
    deployment.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&deployment)?);
    eprintln!("deploy: wrote {}", args.out.display());
    Ok(())
}

pub async fn run(cmd: ChainCommand) -> anyhow::Result<()> {
    match cmd {
        ChainCommand::Info { chain } => info(&chain.rpc_url(), &chain.load()?).await,
    }
}

async fn info(url: &str, deployment: &Deployment) -> anyhow::Result<()> {
    let provider = connect_reader(url).await?;
    let c = deployment.contracts;
    let registry = NodeRegistry::new(c.registry, provider.clone());
    let channels = PaymentChannels::new(c.channels, provider.clone());
    let validation = Validation::new(c.validation, provider.clone());
    let operators = Registry::new(c.registry, provider.clone())
        .operators()
        .await
        .context("reading NodeRegistry.operators")?;
    println!(
        "chain {} at {url}, contracts since block {}",
        deployment.chain_id, deployment.deploy_block
    );
    println!(
        "registry {}: min stake {}, unbonding period {}, jail term {}",
        c.registry,
        format_tokens(registry.minStake().call().await?),
        span(registry.unbondingPeriod().call().await?),
        span(registry.jailPeriod().call().await?)
    );
    for operator in operators {
        let node = registry.getNode(operator).call().await?;
        let active = registry.isActive(operator).call().await?;
        let reputation = validation.reputationOf(operator).call().await?;
        println!(
            "  node {operator}: blocks {}-{}, stake {}, reputation {reputation} bps, {}",
            node.firstBlock,
            node.lastBlock,
            format_tokens(node.stake),
            if active { "active" } else { "inactive" }
        );
    }
    println!(
        "channels {}: {} opened, close window {}",
        c.channels,
        channels.channelCount().call().await?,
        span(channels.closeWindow().call().await?)
    );
    println!(
        "validation {}: epoch {}, total validator stake {}, {} fault reports",
        c.validation,
        validation.currentEpoch().call().await?,
        format_tokens(validation.totalValidatorStake().call().await?),
        validation.faultReportCount().call().await?
    );
    Ok(())
}

/// Seconds as the largest whole unit that divides them: `7d`, `36h`, `90m`, `45s`.
fn span(seconds: u64) -> String {
    match seconds {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
