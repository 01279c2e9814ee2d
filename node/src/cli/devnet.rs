use std::path::PathBuf;
use std::time::Instant;

use alloy::primitives::Address;
use alloy::primitives::utils::parse_ether;
use anyhow::Context;
use clap::{Args, Subcommand};
use infergrid::chain::Account;
use infergrid::chain::audit::format_units;
use infergrid::devnet::{
    self, AnvilProcess, DEVNET_CHAIN_ID, Manifest, Staffing, StateFile, accounts_with, provision,
};
use infergrid::tools::{self, Tool};

use super::target::CurrentDevnet;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevnetArgs {
    /// Helpers for a devnet already running (without one: start a devnet).
    #[command(subcommand)]
    action: Option<DevnetAction>,
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
    /// Also start this many `infergrid node` processes (needs --model; at most one per dev
    /// operator, 16): node i serves block i mod blocks, so extra nodes are replicas. The
    /// devnet registers max(4, N) operators.
    #[arg(long, default_value_t = 0, requires = "model")]
    nodes: usize,
    /// With --nodes: only the first K nodes start with the model's files; the others start
    /// with empty folders (under --out), choose their blocks (`--blocks auto`) and fetch
    /// them from the swarm (`--fetch`). Default: every node holds the files.
    #[arg(long, requires = "nodes", value_parser = clap::value_parser!(u64).range(1..))]
    seeders: Option<u64>,
    /// Validators registered (at most 5).
    #[arg(long, default_value_t = Staffing::default().validators)]
    validators: usize,
    /// Seconds per validation epoch (default: an hour); commit and reveal windows are a
    /// quarter epoch each, the fault vote window one epoch. With --nodes, also starts one
    /// `infergrid validator run` process per validator, each paying from its own payer.
    #[arg(long)]
    epoch_secs: Option<u64>,
    /// TESTING ONLY — make node I cheat, to watch validators convict it: `I:perturb:FRACTION`
    /// (perturb that fraction of its answers) or `I:lazy` (skip work on every answer).
    #[arg(long, value_name = "SPEC", value_parser = parse_cheat)]
    testing_cheat: Vec<(usize, Vec<String>)>,
    /// TESTING ONLY — make validator V lie (`validator run --testing-false-reports`), to watch
    /// the others vote its reports down.
    #[arg(long, value_name = "V")]
    testing_false_reporter: Option<usize>,
    /// TESTING ONLY — make validator V commit its results and never reveal them
    /// (`validator run --testing-withhold-reveals`), to watch the others penalize it.
    #[arg(long, value_name = "V")]
    testing_silent_validator: Option<usize>,
    /// TESTING ONLY — validator V reaches the chain through URL instead of anvil's own
    /// (`V=URL`: a proxy a test can freeze, to watch a validator ride out an RPC outage).
    #[arg(long, value_name = "V=URL", value_parser = parse_validator_rpc)]
    testing_validator_rpc: Option<(usize, String)>,
    /// With --nodes and --epoch-secs: challenge sessions per epoch of each validator.
    #[arg(long, default_value_t = 4)]
    challenges_per_epoch: usize,
    /// With --nodes: the gateway's OpenAI API address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: std::net::SocketAddr,
    /// With --nodes: the gateway's `--wei-per-ms`, what one millisecond less per token is
    /// worth in wei when it plans routes (the devnet prices operator i at (i + 1)·10^12 wei
    /// a token; a small value makes price decide every route).
    #[arg(long, default_value_t = infergrid::route::DEFAULT_WEI_PER_MS, value_parser = super::swarm::parse_wei_per_ms)]
    wei_per_ms: f64,
    /// With --nodes: the gateway's `--speculate`, drafted tokens verified per decode step
    /// (0: plain decoding).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    speculate: u32,
    /// With --nodes and --speculate: the gateway's `--draft-model`, a small copy of the model
    /// (same tokenizer) drafting in the gateway's process instead of prompt lookup.
    #[arg(long)]
    draft_model: Option<PathBuf>,
    /// With --draft-model: serve the draft model on a draft node — one more node process, the
    /// next devnet operator, registered for the draft model at its own price — which the
    /// gateway asks for drafts (`gateway --draft-nodes`) instead of running the model itself.
    #[arg(long, requires = "draft_model")]
    draft_node: bool,
    /// With --nodes: the gateway's `--cross-check`, every hop also run on a witness node and
    /// an answer used only once the two agree.
    #[arg(long)]
    cross_check: bool,
    /// TESTING ONLY — with --nodes: every node holds each answer this many milliseconds
    /// (`node --testing-delay-ms`), a wide-area hop emulated on loopback.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    testing_delay_ms: u64,
}

/// What a newcomer needs on a running devnet without reaching for `cast`.
#[derive(Debug, Subcommand)]
enum DevnetAction {
    /// Give an address test BTT (minted by the deployer) and ether for gas.
    Fund {
        address: Address,
        /// BTT to mint to it (0: only set its ether).
        #[arg(long, default_value = "10000")]
        btt: String,
        /// Ether to set as its balance (not added to it).
        #[arg(long, default_value = "10")]
        eth: String,
        #[command(flatten)]
        chain: super::ChainTarget,
    },
    /// Move the devnet's clock forward (unbonding periods, jail terms, close windows), e.g.
    /// `7d`, `36h`, `90m`, `600s`, and mine a block at the new time.
    AdvanceTime {
        duration: String,
        #[command(flatten)]
        chain: super::ChainTarget,
    },
}

pub async fn run(args: DevnetArgs) -> anyhow::Result<()> {
    match args.action {
        Some(action) => helper(action).await,
        None => start(args).await,
    }
}

/// Runs a helper against the devnet at the action's RPC URL, refusing any other chain.
async fn helper(action: DevnetAction) -> anyhow::Result<()> {
    use alloy::providers::Provider;
    let (DevnetAction::Fund { chain, .. } | DevnetAction::AdvanceTime { chain, .. }) = &action;
    let deployment = chain.load()?;
    let deployer = accounts_with(infergrid::devnet::Role::Deployer)[0].private_key;
    let rpc_url = chain.rpc_url();
    let account = Account::connect(&rpc_url, &deployer).await?;
    let chain_id = account.provider.get_chain_id().await?;
    anyhow::ensure!(
        chain_id == DEVNET_CHAIN_ID,
        "{rpc_url} is chain {chain_id}, not a devnet ({DEVNET_CHAIN_ID}): this only works on `infergrid devnet`"
    );
    match action {
        DevnetAction::Fund { address, btt, eth, .. } => {
            let contracts = account.contracts(&deployment);
            let btt =
                parse_ether(&btt).with_context(|| format!("--btt {btt:?} is not an amount"))?;
            let eth =
                parse_ether(&eth).with_context(|| format!("--eth {eth:?} is not an amount"))?;
            if !btt.is_zero() {
                contracts.token.mint(address, btt).await?;
            }
            let _: () = account
                .provider
                .raw_request("anvil_setBalance".into(), (address, eth))
                .await
                .context("anvil_setBalance")?;
            println!(
                "{address}: {}, {}",
                format_units(contracts.token.balance_of(address).await?, "BTT"),
                format_units(account.provider.get_balance(address).await?, "ether")
            );
        }
        DevnetAction::AdvanceTime { duration, .. } => {
            let seconds = parse_duration(&duration)?;
            let _: serde_json::Value = account
                .provider
                .raw_request("evm_increaseTime".into(), (seconds,))
                .await
                .context("evm_increaseTime")?;
            let _: serde_json::Value =
                account.provider.raw_request("evm_mine".into(), ()).await.context("evm_mine")?;
            let now = infergrid::chain::latest_block_time(&account.provider).await?;
            println!(
                "devnet: clock moved {duration} forward; chain time is now {}",
                super::when::utc(now)
            );
        }
    }
    Ok(())
}

/// `7d`, `36h`, `90m`, `600s` or `600`, in seconds.
fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => t.split_at(at),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => anyhow::bail!("{text:?} is not a duration like 7d, 36h, 90m or 600s"),
    };
    let n: u64 =
        number.parse().with_context(|| format!("{text:?} is not a duration like 7d or 600s"))?;
    n.checked_mul(scale).with_context(|| format!("{text:?} is too long"))
}

async fn start(args: DevnetArgs) -> anyhow::Result<()> {
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
                model_id: manifest.id(),
                num_blocks: manifest.blocks.len() as u32,
            })
        }
        None => None,
    };
    let staffing = Staffing {
        operators: (args.nodes + usize::from(args.draft_node)).max(Staffing::default().operators),
        validators: args.validators,
        epoch_secs: args.epoch_secs,
    };
    let (deployment, roles) =
        provision(&url, served, staffing).await.context("provisioning the devnet")?;

    let deployment_file = args.out.join("deployment.json");
    let state_file = args.out.join("state.json");
    devnet::write_json(&deployment_file, &deployment)?;
    let deployer =
        Account::connect(&url, &accounts_with(devnet::Role::Deployer)[0].private_key).await?;
    let state = StateFile::capture(&deployer).await?;
    devnet::write_json(&state_file, &state)?;

    let swarm = if args.nodes > 0 {
        let model = args.model.as_ref().expect("clap requires --model with --nodes");
        eprintln!("devnet: starting {} node processes and a gateway", args.nodes);
        // A fresh chain: vouchers and channels of an earlier run are void.
        let payments = args.out.join("payments");
        if payments.exists() {
            std::fs::remove_dir_all(&payments)?;
        }
        std::fs::create_dir_all(&payments)?;
        let mut swarm = start_swarm(
            model,
            args.nodes,
            &url,
            &deployment_file,
            &payments,
            GatewaySettings {
                api: args.api,
                wei_per_ms: args.wei_per_ms,
                speculate: args.speculate,
                draft_model: args.draft_model.clone(),
                draft_node: args.draft_node,
                cross_check: args.cross_check,
            },
            NodeTesting { cheats: &args.testing_cheat, delay_ms: args.testing_delay_ms },
            Seeding { seeders: args.seeders.map_or(args.nodes, |k| k as usize), work: &args.out },
        )
        .await?;
        if args.epoch_secs.is_some() && args.validators > 0 {
            eprintln!("devnet: starting {} validator processes", args.validators);
            let validators = ValidatorProcesses {
                count: args.validators,
                sessions_per_epoch: args.challenges_per_epoch,
                liar: args.testing_false_reporter,
                silent: args.testing_silent_validator,
                rpc_override: args.testing_validator_rpc.clone(),
            };
            swarm.validators = validators.start(model, &url, &deployment_file, &payments).await?;
        }
        Some(swarm)
    } else {
        None
    };

    let manifest = Manifest {
        api_url: swarm.as_ref().map(|s| s.api_url.clone()),
        node_pids: swarm
            .as_ref()
            .map(|s| s.nodes.iter().filter_map(|c| c.id()).collect())
            .unwrap_or_default(),
        gateway_pid: swarm.as_ref().and_then(|s| s.gateway.id()),
        validator_pids: swarm
            .as_ref()
            .map(|s| s.validators.iter().filter_map(|c| c.id()).collect())
            .unwrap_or_default(),
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
    if let Some(api) = &manifest.api_url {
        println!("  OpenAI API       {api} ({} nodes)", manifest.node_pids.len());
        let dashboard = api.trim_end_matches("/v1");
        println!("  dashboard        {dashboard}/dashboard");
    }
    // Commands run from any directory, without --rpc-url and --deployment, use this devnet.
    let current =
        CurrentDevnet { rpc_url: url.clone(), deployment_file: absolute(&deployment_file) };
    match current.record() {
        Ok(file) => println!(
            "  recorded in      {} (the default for commands run elsewhere)",
            file.display()
        ),
        Err(e) => eprintln!("devnet: warning: not recorded as your current devnet: {e}"),
    }
    println!("press Ctrl-C to stop");

    let mut swarm = swarm;
    loop {
        tokio::select! {
            signal = super::stop_signal() => {
                signal.context("waiting for Ctrl-C or SIGTERM")?;
                if let Some(swarm) = swarm {
                    eprintln!("devnet: stopping the validators, gateway and nodes");
                    swarm.stop().await;
                }
                eprintln!("devnet: stopping anvil");
                current.forget();
                anvil.stop().await.context("stopping anvil")?;
                return Ok(());
            }
            status = anvil.exited() => {
                current.forget();
                anyhow::bail!("anvil exited unexpectedly ({})", status.context("waiting for anvil")?);
            }
            exited = next_exit(swarm.as_mut()) => eprintln!("devnet: {exited}"),
        }
    }
}

/// The next of `swarm`'s processes to exit (stopped by hand, or crashed), reaped so that no
/// zombie is left; never, without a swarm.
async fn next_exit(swarm: Option<&mut Swarm>) -> String {
    match swarm {
        Some(swarm) => swarm.next_exit().await,
        None => std::future::pending().await,
    }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The node processes, gateway and validators a devnet started.
struct Swarm {
    nodes: Vec<tokio::process::Child>,
    gateway: tokio::process::Child,
    validators: Vec<tokio::process::Child>,
    api_url: String,
}

impl Swarm {
    /// Every process, validators first (they pay the nodes and must not see them go first).
    fn everyone(&mut self) -> impl Iterator<Item = &mut tokio::process::Child> {
        let nodes = self.nodes.iter_mut();
        self.validators.iter_mut().chain(std::iter::once(&mut self.gateway)).chain(nodes)
    }

    /// Waits until one of the processes exits and says which; a reaped process has no pid
    /// any more, so it is reported once.
    async fn next_exit(&mut self) -> String {
        loop {
            let validators =
                self.validators.iter_mut().enumerate().map(|(i, c)| (format!("validator {i}"), c));
            let nodes = self.nodes.iter_mut().enumerate().map(|(i, c)| (format!("node {i}"), c));
            let everyone = validators
                .chain(std::iter::once(("gateway".to_owned(), &mut self.gateway)))
                .chain(nodes);
            for (name, child) in everyone {
                let Some(pid) = child.id() else { continue };
                if let Ok(Some(status)) = child.try_wait() {
                    return format!("{name} (pid {pid}) exited ({status})");
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Interrupts every process (as Ctrl-C would) and waits for it.
    async fn stop(mut self) {
        for child in self.everyone() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
            }
        }
        for child in self.everyone() {
            if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await.is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// Starts `infergrid ARGS` with `envs` and waits for its `ready` line on stdout. Its output
/// (stdout and log) is copied to ours, each line prefixed with `name` (`node 3 | …`), so an
/// operator reading the devnet's log can tell which process said what.
async fn spawn_ready(
    name: String,
    args: &[String],
    envs: &[(&str, String)],
    ready: &str,
) -> anyhow::Result<tokio::process::Child> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .envs(envs.iter().map(|(name, value)| (*name, value)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let prefix = format!("{name} | ");
    forward(prefix.clone(), tokio::io::BufReader::new(child.stderr.take().expect("piped")), None);
    // What it prints before it is ready (where it serves metrics) is shown too.
    let (is_ready, ready_seen) = tokio::sync::oneshot::channel();
    let stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
    forward(prefix, stdout, Some((ready.to_string(), is_ready)));
    match tokio::time::timeout(std::time::Duration::from_secs(60), ready_seen).await {
        Ok(Ok(())) => Ok(child),
        _ => anyhow::bail!("`infergrid {}` did not become ready", args.join(" ")),
    }
}

/// Copies a child's output to the devnet's stderr, each line after `prefix`, until it ends,
/// and signals the first line that starts with `ready`'s marker. Bytes, not `lines()`: a line
/// that is not UTF-8 must not end the copy (the child would then die writing to a closed
/// pipe).
fn forward(
    prefix: String,
    mut output: impl tokio::io::AsyncBufRead + Unpin + Send + 'static,
    mut ready: Option<(String, tokio::sync::oneshot::Sender<()>)>,
) {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut line = Vec::new();
        while output.read_until(b'\n', &mut line).await.is_ok_and(|read| read > 0) {
            let text = String::from_utf8_lossy(&line);
            eprintln!("{prefix}{}", text.trim_end());
            if ready.as_ref().is_some_and(|(marker, _)| text.starts_with(marker.as_str()))
                && let Some((_, is_ready)) = ready.take()
            {
                let _ = is_ready.send(());
            }
            line.clear();
        }
    });
}

/// How the devnet's gateway listens, plans routes and decodes.
struct GatewaySettings {
    api: std::net::SocketAddr,
    wei_per_ms: f64,
    speculate: u32,
    draft_model: Option<PathBuf>,
    /// The draft model runs on a node of its own, not in the gateway.
    draft_node: bool,
    cross_check: bool,
}

/// What the devnet's nodes do for tests: node `i` cheats with the flags given for it, and
/// every node holds its answers `delay_ms`.
struct NodeTesting<'a> {
    cheats: &'a [(usize, Vec<String>)],
    delay_ms: u64,
}

/// Which of the devnet's nodes start with the model's files: the first `seeders`; the others
/// get empty folders under `work` and fetch what they choose to serve.
struct Seeding<'a> {
    seeders: usize,
    work: &'a std::path::Path,
}

#[allow(clippy::too_many_arguments)]
async fn start_swarm(
    model: &std::path::Path,
    count: usize,
    url: &str,
    deployment: &std::path::Path,
    payments: &std::path::Path,
    gateway: GatewaySettings,
    testing: NodeTesting<'_>,
    seeding: Seeding<'_>,
) -> anyhow::Result<Swarm> {
    let manifest = infergrid::model::ModelManifest::load(model)?;
    let operators = accounts_with(devnet::Role::Operator);
    let draft_node = gateway.draft_model.as_ref().filter(|_| gateway.draft_node);
    let processes = count + draft_node.iter().count();
    anyhow::ensure!(
        processes <= operators.len(),
        "{processes} node processes: the devnet has {} operators",
        operators.len()
    );
    let payer = &accounts_with(devnet::Role::Payer)[0];
    let (model, deployment) = (model.display().to_string(), deployment.display().to_string());
    let mut nodes = Vec::new();
    for (index, operator) in operators.iter().take(processes).enumerate() {
        let seeds = index < seeding.seeders;
        // The draft node (after the others) registers itself for the draft model, whole.
        let (folder, blocks, extra) = match draft_node {
            Some(draft) if index == count => {
                let last = infergrid::model::ModelManifest::load(draft)?.blocks.len() - 1;
                let update = vec!["--update-registration".to_owned()];
                (draft.display().to_string(), format!("0-{last}"), update)
            }
            _ if seeds => (model.clone(), (index % manifest.blocks.len()).to_string(), vec![]),
            _ => {
                let empty = seeding.work.join(format!("node-{index}-model"));
                if empty.exists() {
                    std::fs::remove_dir_all(&empty)?;
                }
                let fetch = vec!["--fetch".to_owned(), manifest.model_id.clone()];
                (empty.display().to_string(), "auto".to_owned(), fetch)
            }
        };
        let args = [
            "node",
            "--model",
            &folder,
            "--blocks",
            &blocks,
            "--key-env",
            "INFERGRID_NODE_KEY",
            "--rpc-url",
            url,
            "--deployment",
            &deployment,
            "--listen",
            &format!("/ip4/127.0.0.1/tcp/{}", usize::from(devnet::NODE_PORT_BASE) + index),
            "--ledger",
            &payments.join(format!("node-{}.redb", operator.address)).display().to_string(),
        ]
        .map(String::from);
        let cheat =
            testing.cheats.iter().filter(|(node, _)| *node == index).flat_map(|(_, f)| f).cloned();
        let delay = (testing.delay_ms > 0)
            .then(|| ["--testing-delay-ms".to_owned(), testing.delay_ms.to_string()]);
        let args: Vec<String> =
            args.into_iter().chain(cheat).chain(delay.into_iter().flatten()).chain(extra).collect();
        nodes.push(
            spawn_ready(
                format!("node {index}"),
                &args,
                &[("INFERGRID_NODE_KEY", operator.private_key.to_string())],
                "node ready",
            )
            .await?,
        );
    }
    let api = match gateway.api {
        any if any.port() == 0 => std::net::TcpListener::bind(any)?.local_addr()?,
        api => api,
    };
    let args = [
        "gateway",
        "--model",
        &model,
        "--key-env",
        "INFERGRID_PAYER_KEY",
        "--rpc-url",
        url,
        "--deployment",
        &deployment,
        "--listen",
        &api.to_string(),
        "--wallet",
        &payments.join("gateway-wallet.redb").display().to_string(),
        // A devnet is for development: a dApp page served from anywhere may call it.
        "--cors-origin",
        "*",
        "--wei-per-ms",
        &gateway.wei_per_ms.to_string(),
        "--speculate",
        &gateway.speculate.to_string(),
    ]
    .map(String::from)
    .into_iter()
    .chain(gateway.cross_check.then(|| "--cross-check".to_owned()))
    .chain(
        gateway
            .draft_model
            .iter()
            .flat_map(|dir| ["--draft-model".to_owned(), dir.display().to_string()]),
    )
    .chain(draft_node.map(|_| "--draft-nodes".to_owned()))
    .collect::<Vec<_>>();
    let gateway = spawn_ready(
        "gateway".to_owned(),
        &args,
        &[("INFERGRID_PAYER_KEY", payer.private_key.to_string())],
        "gateway ready",
    )
    .await?;
    Ok(Swarm { nodes, gateway, validators: Vec::new(), api_url: format!("http://{api}/v1") })
}

/// The devnet's validator processes: validator `i` stakes with dev validator `i` and pays for
/// its challenges from dev payer `i + 1` (payer 0 is the gateway's).
struct ValidatorProcesses {
    count: usize,
    sessions_per_epoch: usize,
    /// The validator started with `--testing-false-reports`.
    liar: Option<usize>,
    /// The validator started with `--testing-withhold-reveals`.
    silent: Option<usize>,
    /// The validator reaching the chain through another URL, and that URL.
    rpc_override: Option<(usize, String)>,
}

impl ValidatorProcesses {
    async fn start(
        &self,
        model: &std::path::Path,
        url: &str,
        deployment: &std::path::Path,
        payments: &std::path::Path,
    ) -> anyhow::Result<Vec<tokio::process::Child>> {
        let validators = accounts_with(devnet::Role::Validator);
        let payers = accounts_with(devnet::Role::Payer);
        anyhow::ensure!(
            self.count <= validators.len() && self.count < payers.len(),
            "--validators {}: the devnet has {} validators and {} payers (one is the gateway's)",
            self.count,
            validators.len(),
            payers.len()
        );
        let mut started = Vec::new();
        for (index, (validator, payer)) in
            validators.iter().zip(&payers[1..]).take(self.count).enumerate()
        {
            let file = |name: &str| payments.join(name).display().to_string();
            let rpc = match &self.rpc_override {
                Some((overridden, rpc)) if *overridden == index => rpc.as_str(),
                _ => url,
            };
            let args = [
                "validator",
                "--key-env",
                "INFERGRID_VALIDATOR_KEY",
                "run",
                "--model",
                &model.display().to_string(),
                "--payer-key-env",
                "INFERGRID_PAYER_KEY",
                "--rpc-url",
                rpc,
                "--deployment",
                &deployment.display().to_string(),
                "--wallet",
                &file(&format!("validator-{index}-wallet.redb")),
                "--results",
                &file(&format!("validator-{index}-results.json")),
                "--sessions-per-epoch",
                &self.sessions_per_epoch.to_string(),
                // Its metrics on a free port, named in its log.
                "--http",
                "127.0.0.1:0",
            ]
            .map(String::from);
            let lies = (self.liar == Some(index)).then(|| "--testing-false-reports".to_owned());
            let silent =
                (self.silent == Some(index)).then(|| "--testing-withhold-reveals".to_owned());
            let args: Vec<String> = args.into_iter().chain(lies).chain(silent).collect();
            let envs = [
                ("INFERGRID_VALIDATOR_KEY", validator.private_key.to_string()),
                ("INFERGRID_PAYER_KEY", payer.private_key.to_string()),
            ];
            let name = format!("validator {index}");
            started.push(spawn_ready(name, &args, &envs, "validator ready").await?);
        }
        Ok(started)
    }
}

/// `V=URL`: validator `V` and the RPC URL it uses.
fn parse_validator_rpc(text: &str) -> Result<(usize, String), String> {
    let (validator, url) =
        text.split_once('=').ok_or_else(|| format!("{text:?}: expected V=URL"))?;
    let validator = validator.parse().map_err(|_| format!("{text:?}: no validator index"))?;
    Ok((validator, url.to_owned()))
}

/// `I:perturb:FRACTION` or `I:lazy`: node `I` and the flags that make it cheat.
fn parse_cheat(text: &str) -> Result<(usize, Vec<String>), String> {
    let parts: Vec<&str> = text.split(':').collect();
    let node = parts[0].parse::<usize>().map_err(|_| format!("{text:?}: no node index"))?;
    let flags = match parts[1..] {
        ["perturb", fraction] => {
            super::swarm::parse_fraction(fraction)?;
            vec!["--testing-perturb-answers".to_owned(), fraction.to_owned()]
        }
        ["lazy"] => vec!["--testing-lazy".to_owned()],
        _ => return Err(format!("{text:?}: expected I:perturb:FRACTION or I:lazy")),
    };
    Ok((node, flags))
}
