use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use infergrid::chain::Account;
use infergrid::devnet::{
    self, AnvilProcess, DEVNET_CHAIN_ID, Manifest, StateFile, accounts_with, provision,
};
use infergrid::tools::{self, Tool};

#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// Port anvil listens on (0: any free port).
    #[arg(long, default_value_t = 8545)]
    port: u16,
    /// Address anvil binds to.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Where the deployment file, manifest and state dump are written.
    #[arg(long, default_value = "anvil-fixtures/devnet")]
    out: PathBuf,
    /// Also write the manifest (RPC URL, addresses, roles) here once everything is ready.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// The anvil binary (default: from `scripts/setup`'s env file or INFERGRID_ANVIL).
    #[arg(long)]
    anvil: Option<PathBuf>,
    /// Register the operators for this imported model (operator i serves block i mod N),
    /// instead of a placeholder model id.
    #[arg(long)]
    model: Option<PathBuf>,
}

pub async fn run(args: DevnetArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let anvil_path = match args.anvil {
        Some(path) => path,
        None => tools::locate(Tool::Anvil)?,
    };
    eprintln!("devnet: starting anvil on {}:{}", args.host, args.port);
    let mut anvil =
        AnvilProcess::spawn(&anvil_path, &args.host, args.port, DEVNET_CHAIN_ID).await?;
    let url = anvil.url().to_owned();

    eprintln!("devnet: deploying contracts and provisioning roles");
    let served = match &args.model {
        Some(dir) => {
            let manifest = infergrid::model::ModelManifest::load(dir)?;
            Some(devnet::ServedModel {
                model_id: manifest.model_id.parse().context("manifest model id")?,
                num_blocks: manifest.blocks.len() as u32,
            })
        }
        None => None,
    };
    let (deployment, roles) = provision(&url, served).await.context("provisioning the devnet")?;

    let deployment_file = args.out.join("deployment.json");
    let state_file = args.out.join("state.json");
    devnet::write_json(&deployment_file, &deployment)?;
    let deployer =
        Account::connect(&url, &accounts_with(devnet::Role::Deployer)[0].private_key).await?;
    let state = StateFile::capture(&deployer).await?;
    devnet::write_json(&state_file, &state)?;

    let manifest = Manifest {
        rpc_url: url.clone(),
        chain_id: deployment.chain_id,
        deploy_block: deployment.deploy_block,
        contracts: deployment.contracts,
        deployment_file: absolute(&deployment_file),
        state_file: absolute(&state_file),
        roles,
    };
    devnet::write_json(&args.out.join("manifest.json"), &manifest)?;
    if let Some(ready) = &args.ready_file {
        devnet::write_json(ready, &manifest)?;
    }

    let c = &deployment.contracts;
    println!(
        "devnet ready in {:.1} s at {url} (chain id {})",
        started.elapsed().as_secs_f64(),
        deployment.chain_id
    );
    println!("  BTT              {}", c.token);
    println!("  NodeRegistry     {}", c.registry);
    println!("  PaymentChannels  {}", c.channels);
    println!("  Validation       {}", c.validation);
    for op in &manifest.roles.operators {
        println!("  operator {} peer {} block {}", op.address, op.peer_id, op.first_block);
    }
    println!("  manifest         {}", args.out.join("manifest.json").display());
    println!("press Ctrl-C to stop");

    tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            signal.context("waiting for Ctrl-C")?;
            eprintln!("devnet: stopping anvil");
            anvil.stop().await.context("stopping anvil")?;
        }
        status = anvil.exited() => {
            anyhow::bail!("anvil exited unexpectedly ({})", status.context("waiting for anvil")?);
        }
    }
    Ok(())
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
