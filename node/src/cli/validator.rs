//! `infergrid validator`: a validator's stake in the `Validation` contract. Validators weigh
//! in every result round and fault vote by the stake they had at the round's snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use infergrid::chain::audit::format_tokens;
use infergrid::chain::{Account, Deployment, Registry, ValidationClient};
use infergrid::gateway::{Directory, HopClient, RemoteModelConfig, SignatureCheck};
use infergrid::generate::{ChatFormat, ChatMessage};
use infergrid::identity::NodeIdentity;
use infergrid::net::{Inbound, NetConfig, Network};
use infergrid::telemetry::ValidatorMetrics;
use infergrid::validate::{DEFAULT_TOLERANCE, Judge, ResultBook, validation_domain};
use infergrid::validator::http::{self, ValidatorView};
use infergrid::validator::{
    ChallengeLoop, ChallengeRate, EvidencePool, FaultDesk, RoundWindows, run_rounds,
};
use libp2p::Multiaddr;
use tokio::sync::mpsc;

use super::infer::EngineArgs;
use super::keys::KeyArgs;
use super::operator::{parse_amount, report};
use super::swarm::{PaymentArgs, chain_time, wallet};

/// Prompts that look like what users send: challenges are drawn from them.
const PROMPT_CORPUS: &str = include_str!("validator_prompts.txt");

/// Where and as whom a validator command runs.
#[derive(Debug, Args)]
#[command(mut_arg("key_env", |a| a.default_value("INFERGRID_VALIDATOR_KEY")))]
pub struct ValidatorArgs {
    #[command(flatten)]
    chain: super::ChainTarget,
    /// The validator's key: its address holds the stake (challenges are paid from other
    /// payer accounts, so nodes cannot tell them from user traffic).
    #[command(flatten)]
    key: KeyArgs,
    #[command(subcommand)]
    command: ValidatorCommand,
}

#[derive(Debug, Subcommand)]
enum ValidatorCommand {
    /// Stake and register as a validator (at least the contract's minValidatorStake).
    Register {
        /// Stake to bond, e.g. `1000BTT`.
        #[arg(long)]
        stake: String,
    },
    /// Add stake.
    Stake { amount: String },
    /// Move stake into unbonding. It keeps weighing in, and can be penalized in, the rounds
    /// whose snapshot it was part of; it can be withdrawn after the unbonding period.
    Unbond { amount: String },
    /// Withdraw stake whose unbonding period has passed.
    Withdraw,
    /// Print the validator's stake, weight and record (default: this validator's).
    Status {
        #[arg(long)]
        address: Option<Address>,
    },
    /// Validate: every epoch, commit a secret challenge set ahead, send its challenges
    /// through the swarm as ordinary paid traffic (paid by --payer-key-env, never by the
    /// staked key), judge the answers, commit and reveal per-node results, report wrong
    /// answers with their evidence, and vote on other validators' reports by re-executing
    /// them. Runs until interrupted.
    Run(Box<RunArgs>),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model the validator challenges: it holds every block and computes the expected
    /// answers with its own engine.
    #[command(flatten)]
    engine: EngineArgs,
    /// Environment variable holding the key that pays for the challenges (and whose
    /// derived libp2p identity sends them): an account that is not the staked one, so
    /// challenges look like any dApp's requests.
    #[arg(long, value_name = "VAR", default_value = "INFERGRID_PAYER_KEY")]
    payer_key_env: String,
    #[command(flatten)]
    payment: PaymentArgs,
    /// libp2p listen address.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    p2p_listen: Vec<Multiaddr>,
    /// Extra peers to dial, `/…/p2p/<peer id>`.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Challenge sessions per epoch (each a prompt from the built-in corpus of user-like
    /// requests, then --decode-steps greedy tokens), sent at random times.
    #[arg(long, default_value_t = 4)]
    sessions_per_epoch: usize,
    /// Greedy decode steps after each challenge prompt.
    #[arg(long, default_value_t = 7)]
    decode_steps: usize,
    /// Share of each epoch, from its start, over which challenges are spread; the rest
    /// keeps every answer inside the epoch its challenge was committed for.
    #[arg(long, default_value_t = 0.6, value_parser = super::swarm::parse_fraction)]
    spread: f64,
    /// Judge tolerance: the largest relative L2 error per row accepted as an honest answer.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE)]
    tolerance: f64,
    /// TESTING ONLY — a faulty, lying validator, to show the others outvote it: its expected
    /// answers are perturbed, so it reports honest nodes, and it publishes a forged copy of
    /// each piece of evidence first. Its reports are rejected and its bonds forfeited.
    #[arg(long)]
    testing_false_reports: bool,
    /// TESTING ONLY — a validator that stalls rounds: it commits its results and never
    /// reveals them. The others' rounds about the same nodes cannot finalize without it (at
    /// the devnet's quorum) and they penalize it for every withheld reveal.
    #[arg(long)]
    testing_withhold_reveals: bool,
    /// The result book (tallies and salts between commit and reveal), kept across restarts.
    /// Default: .infergrid/validators/<validator address>/results.json
    #[arg(long)]
    results: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus: challenge sets, sessions, answers judged, reports,
    /// votes, libp2p) and `/healthz` over HTTP on this address, e.g. 127.0.0.1:9200 (port 0:
    /// any free port, printed at start). Off by default.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
}

pub async fn run(args: ValidatorArgs) -> anyhow::Result<()> {
    let key = args.key.secret()?;
    let (deployment, account) = args.chain.account(&key).await?;
    let c = account.contracts(&deployment);
    let validation = deployment.contracts.validation;
    match args.command {
        ValidatorCommand::Register { stake } => {
            let stake = parse_amount(&stake)?;
            report("approve", &c.token.approve(validation, stake).await?);
            report("register", &c.validation.register_validator(stake).await?);
        }
        ValidatorCommand::Stake { amount } => {
            let amount = parse_amount(&amount)?;
            report("approve", &c.token.approve(validation, amount).await?);
            report("stake", &c.validation.add_validator_stake(amount).await?);
        }
        ValidatorCommand::Unbond { amount } => {
            report("unbond", &c.validation.request_validator_unbond(parse_amount(&amount)?).await?)
        }
        ValidatorCommand::Withdraw => {
            report("withdraw", &c.validation.withdraw_validator_stake().await?)
        }
        ValidatorCommand::Status { address } => {
            return status(&c.validation, address.unwrap_or(account.address)).await;
        }
        ValidatorCommand::Run(run_args) => {
            return run_validator(*run_args, &args.chain, deployment, account).await;
        }
    }
    status(&c.validation, account.address).await
}

/// The validator's standing, with its share of the quorum weight.
async fn status(validation: &ValidationClient, validator: Address) -> anyhow::Result<()> {
    let v = validation.validator(validator).await?;
    let clock = validation.epoch_clock().await?;
    let epoch = validation.current_epoch().await?;
    let share = if v.active && !v.total_active_stake.is_zero() {
        let bps = v.stake * U256::from(10_000) / v.total_active_stake;
        format!("{:.2}%", bps.to::<u64>() as f64 / 100.0)
    } else {
        "0%".into()
    };
    println!("validator {validator}");
    println!("  stake            {}", format_tokens(v.stake));
    println!("  active           {}", v.active);
    println!(
        "  weight           {share} of the active validator stake ({})",
        format_tokens(v.total_active_stake)
    );
    println!("  unbonding        {}", format_tokens(v.unbonding));
    if !v.unbonding.is_zero() {
        println!("  withdrawable at  {}", super::when::utc(v.unbonding_ends_at));
    }
    println!(
        "  record           {} missed reveals, {} dissents, {} penalized",
        v.missed_reveals,
        v.dissents,
        format_tokens(v.total_penalized)
    );
    println!("  epoch            {epoch} ({} s each, genesis {})", clock.duration, clock.genesis);
    Ok(())
}

/// `validator run`: the validator's tasks, wired together.
async fn run_validator(
    args: RunArgs,
    chain: &super::ChainTarget,
    deployment: Deployment,
    account: Account,
) -> anyhow::Result<()> {
    let contracts = account.contracts(&deployment);
    let validation = contracts.validation.clone();
    let standing = validation.validator(account.address).await?;
    if !standing.active {
        bail!(
            "{} is not an active validator: register first (`infergrid validator register`)",
            account.address
        );
    }
    let payer_key = super::keys::from_env(&args.payer_key_env)?;
    let (_, payer) = chain.account(&payer_key).await?;
    if payer.address == account.address {
        bail!("the payer key is the staked validator key: challenges would be recognizable");
    }
    let (pipeline, tokenizer) = args.engine.load()?;
    let manifest = pipeline.manifest().clone();
    if !manifest.architecture.is_decoder() {
        bail!(
            "validators challenge decoder models (generation sessions); this model is an encoder"
        );
    }
    let prompts = corpus(&manifest, &tokenizer)?;
    let wallet =
        Arc::new(wallet(&args.payment, &payer_key, &deployment, &payer, "validator").await?);
    let (net, mut inbound) = Network::spawn(NetConfig {
        keypair: NodeIdentity::derive(&payer_key).keypair(),
        listen: args.p2p_listen.clone(),
        bootstrap: args.bootstrap.clone(),
        request_timeout: Duration::from_secs(30),
        nat: Default::default(),
    })?;
    let metrics = ValidatorMetrics::new(Some(net.metrics()));
    let registry = Registry::new(deployment.contracts.registry, account.provider.clone());
    let directory =
        Directory::new(registry, validation.clone(), manifest.id(), manifest.blocks.len() as u16);
    let found = directory.refresh(&net).await?;
    directory.keep_fresh(net.clone(), Duration::from_secs(5), "validator");
    let pool = Arc::new(EvidencePool::default());
    let (announcements, heard) = (directory.clone(), pool.clone());
    tokio::spawn(async move {
        while let Some(message) = inbound.recv().await {
            match message {
                Inbound::Announcement { from, announcement } => {
                    announcements.announce(from, announcement)
                }
                Inbound::Evidence { from, evidence } => heard.offer(from, &evidence),
                Inbound::Request { .. } | Inbound::Steps { .. } => {}
            }
        }
    });

    let clock = validation.epoch_clock().await?;
    let time = chain_time(&account.provider, "validator").await?;
    let params = validation.params().await?;
    let domain = validation_domain(deployment.chain_id, deployment.contracts.validation);
    let signatures = SignatureCheck {
        domain: domain.clone(),
        clock,
        time: time.clone(),
        operators: directory.terms(),
    };
    let hops = HopClient::new(net.clone(), &RemoteModelConfig::for_model(&manifest, 1))
        .paying(wallet, directory.terms())
        .verifying(signatures);
    let judge = Judge { tolerance: args.tolerance };
    let pipeline = Arc::new(pipeline);

    let path = args.results.clone().unwrap_or_else(|| {
        PathBuf::from(format!(".infergrid/validators/{}/results.json", account.address))
    });
    let book = ResultBook::open(&path)?;
    let (rounds, round_events) = mpsc::unbounded_channel();
    let windows = RoundWindows {
        commit_secs: params.commitWindow,
        reveal_secs: params.revealWindow,
        withhold_reveals: args.testing_withhold_reveals,
    };
    tokio::spawn(run_rounds(
        book,
        validation.clone(),
        account.address,
        clock,
        time.clone(),
        windows,
        round_events,
    ));
    let desk = FaultDesk {
        validator: account.address,
        validation: validation.clone(),
        token: contracts.token.clone(),
        domain,
        time: time.clone(),
        net: net.clone(),
        pipeline: pipeline.clone(),
        judge,
        report_bond: params.reportBond,
        vote_secs: params.voteWindow,
        forge_evidence: args.testing_false_reports,
        metrics: metrics.clone(),
    };
    let (faults, found_faults) = mpsc::unbounded_channel();
    tokio::spawn(desk.clone().run_reporter(found_faults));
    tokio::spawn(desk.run_voter(pool));

    tracing::info!(
        "validator {}: peer {}, {found} staked nodes serve {}; {} sessions of {} steps per {} s \
         epoch, results in {}",
        account.address,
        net.local_peer(),
        manifest.model_id,
        args.sessions_per_epoch,
        args.decode_steps + 1,
        clock.duration,
        path.display()
    );
    if args.testing_false_reports {
        tracing::warn!("TESTING: lying — perturbed expected answers, forged evidence");
    }
    if args.testing_withhold_reveals {
        tracing::warn!("TESTING: withholding every reveal");
    }
    if let Some(address) = args.http {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("validator: --http {address}: cannot listen there"))?;
        let address = listener.local_addr()?;
        println!("validator: metrics on http://{address}/metrics, health on /healthz");
        let view = Arc::new(ValidatorView { validator: account.address, metrics: metrics.clone() });
        tokio::spawn(async move { axum::serve(listener, http::router(view)).await });
    }
    println!("validator ready: {} challenging as {}", account.address, payer.address);
    let challenges = Arc::new(ChallengeLoop {
        validation,
        clock,
        time,
        pipeline,
        hops: Arc::new(hops),
        candidates: directory.candidates(),
        operators: directory.terms(),
        judge,
        prompts,
        rate: ChallengeRate {
            sessions_per_epoch: args.sessions_per_epoch,
            decode_steps: args.decode_steps,
            spread: args.spread,
        },
        rounds,
        faults,
        metrics,
        corrupt_expected: args.testing_false_reports,
    });
    tokio::select! {
        () = challenges.run() => Ok(()),
        _ = super::stop_signal() => {
            tracing::warn!("interrupted; tallies not yet committed stay in {}", path.display());
            Ok(())
        }
    }
}

/// The corpus, each prompt sent as a user message through the model's chat template (as
/// `/v1/chat/completions` would) and tokenized.
pub fn corpus(
    manifest: &infergrid::model::ModelManifest,
    tokenizer: &tokenizers::Tokenizer,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let chat = ChatFormat::load(manifest, tokenizer)?;
    let mut prompts = Vec::new();
    for line in PROMPT_CORPUS.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let rendered = chat.render(&[ChatMessage { role: "user".into(), content: line.into() }])?;
        let ids = chat.prompt(&rendered).encode(tokenizer).context("tokenizing the corpus")?;
        prompts.push(ids.into_iter().map(i64::from).collect());
    }
    Ok(prompts)
}
