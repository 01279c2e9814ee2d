use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{B256, U256};
use alloy::providers::DynProvider;
use anyhow::{Context, bail};
use clap::Args;
use infergrid::api::{ApiLimits, ApiState, DraftSource, router};
use infergrid::chain::{
    Account, Deployment, Registry, SkippedVoucher, deployment_fingerprint, latest_block_time,
};
use infergrid::eip712::Eip712Signer;
use infergrid::engine::{BlockRunner, CacheLimits, Device, Pipeline, Runtime};
use infergrid::gateway::{Directory, DraftNodes, RemoteModel, RemoteModelConfig, SignatureCheck};
use infergrid::generate::{ChatFormat, check_draft};
use infergrid::identity::NodeIdentity;
use infergrid::model::{ModelManifest, verify_block_files};
use infergrid::net::nat::{self, Reachability, RegisteredPeers, RelayLimits, RelayService};
use infergrid::net::{Announcement, Inbound, NatConfig, NetConfig, Network, block_key, files_key};
use infergrid::pay::meter::Tariff;
use infergrid::pay::{Collector, Ledger, RedeemPolicy, Wallet, WalletConfig, channels_domain};
use infergrid::serve::http::{self, NodeView};
use infergrid::serve::{Admission, Attester, Batcher, BlockServer, Cheat, LoadGuard, ServeLimits};
use infergrid::telemetry::{GatewayMetrics, NodeMetrics};
use infergrid::validate::{ChainClock, validation_domain};
use libp2p::{Multiaddr, PeerId};

use super::ChainTarget;
use super::keys::KeyArgs;
use super::registration;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The model folder; only the blocks served need to be present and intact.
    #[arg(long)]
    model: PathBuf,
    /// Blocks served, inclusive: `2` or `1-2`; or `auto`: the span of --auto-span blocks
    /// that raises the swarm's throughput most (its least-served blocks, by the throughput
    /// the other nodes announce), registered as this node's service; re-chosen every
    /// --rebalance-secs when moving would serve the least-served block 20% better.
    #[arg(long)]
    blocks: String,
    /// With --blocks auto: how many blocks to serve.
    #[arg(long, default_value_t = 1)]
    auto_span: usize,
    /// With --blocks auto: seconds between looks at the swarm's coverage (0: never move).
    #[arg(long, default_value_t = 300)]
    rebalance_secs: u64,
    /// Fetch the blocks' files of this model id into --model first, from the peers that
    /// seed them (the registry's nodes on those blocks, DHT provider records, --bootstrap
    /// peers), every piece checked against the id; pieces already there are kept.
    #[arg(long, value_name = "MODEL_ID")]
    fetch: Option<alloy::primitives::B256>,
    #[command(flatten)]
    chain: ChainTarget,
    /// The operator's key for a node, the payer's for a gateway.
    #[command(flatten)]
    key: KeyArgs,
    /// libp2p listen address (repeatable). It must reach the multiaddrs registered on-chain,
    /// which gateways dial; the node checks at start and refuses otherwise.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/40000")]
    listen: Vec<Multiaddr>,
    /// When the registration disagrees with how the node is started (model, blocks, listen
    /// addresses), register how it is started (`updateService`) instead of refusing to start.
    #[arg(long)]
    update_registration: bool,
    /// Peers to dial at start, `/…/p2p/<peer id>` (repeatable).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// A relay for when gateways cannot dial this node (behind a home router's NAT),
    /// `/…/p2p/<relay peer id>` (repeatable; `infergrid relay`, or a node run with
    /// --relay-service). When AutoNAT finds the node unreachable at its own addresses, it
    /// reserves a slot on up to two relays and registers its addresses through them on-chain
    /// in place of --listen's, again whenever they change; reachable again, it registers
    /// --listen's. Gateways then upgrade to a direct connection by hole punching where the
    /// routers allow it.
    #[arg(long)]
    relay: Vec<Multiaddr>,
    /// With --relay: reserve on the relays at once rather than waiting for AutoNAT.
    #[arg(long, requires = "relay")]
    behind_nat: bool,
    /// Relay for active registered nodes behind NAT (for a node others can dial).
    #[arg(long)]
    relay_service: bool,
    /// A peer served without payment (a private deployment's own gateway), repeatable.
    /// Everyone else pays through a payment channel to this operator.
    #[arg(long)]
    allow_peer: Vec<PeerId>,
    /// The payment ledger: latest voucher per channel, written durably before serving
    /// against it. Default: .infergrid/ledgers/<operator address>.redb
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Usage a payer may run up beyond its latest voucher, in tokens at this node's price.
    #[arg(long, default_value_t = 256)]
    credit_tokens: u64,
    /// Serve on credit only channels holding at least this much (`1BTT`, `5000wei`);
    /// default: the credit itself. Others must cover every step with a voucher.
    #[arg(long)]
    min_deposit: Option<String>,
    /// Redeem once the vouchers' value is this many times the redemption's gas cost
    /// (channels being closed are redeemed at once).
    #[arg(long, default_value_t = RedeemPolicy::default().value_to_gas)]
    redeem_value_to_gas: u64,
    /// Blocks on top of a redemption before it counts as final; until then its channels are
    /// re-read each round, and a redemption a reorg dropped is sent again.
    #[arg(long, default_value_t = infergrid::pay::DEFAULT_CONFIRMATIONS)]
    redeem_confirmations: u64,
    /// Seconds between looks at the channels (close requests, value worth redeeming).
    #[arg(long, default_value_t = 10)]
    redeem_check_secs: u64,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/status` (sessions, KV cache, the live
    /// ledger) over HTTP on this address, e.g. 127.0.0.1:9100. Off by default.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Seconds between looks at the node's standing on-chain: it logs when it turns inactive
    /// (stake unbonded below the minimum, jailed) or active again.
    #[arg(long, default_value_t = 30)]
    standing_check_secs: u64,
    /// Where the blocks run: `cpu`, or `cuda[:N]` (falls back to CPU with a warning).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// ONNX Runtime threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// TESTING ONLY — a cheating node, to show validators catch it: perturb this fraction of
    /// answers (each value moved by up to 1%) before signing them. The stake will be slashed.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    testing_perturb_answers: Option<f64>,
    /// TESTING ONLY — a lazy cheating node: skip the last block of the requested span on
    /// every answer (passing its input on as its output) unless that block produces the
    /// logits. The stake will be slashed.
    #[arg(long, conflicts_with = "testing_perturb_answers")]
    testing_lazy: bool,
    /// TESTING ONLY — hold every answer (and every piece seeded) this many milliseconds
    /// before sending it: a wide-area hop emulated on loopback, for benchmarks (`bench spec`).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    testing_delay_ms: u64,
    /// TESTING ONLY — a bad seeder: corrupt one piece in N served to fetching peers (they
    /// refuse it and ban this node).
    #[arg(long, value_name = "N")]
    testing_corrupt_pieces: Option<u64>,
    #[command(flatten)]
    limits: NodeLimitArgs,
}

/// What the node lets its peers use at once; steps beyond it are refused `Overloaded`
/// before any compute or payment.
#[derive(Debug, Args)]
struct NodeLimitArgs {
    /// Steps computing or waiting for the engine.
    #[arg(long, default_value_t = ServeLimits::default().max_queued_steps)]
    max_queued_steps: usize,
    /// Sessions one peer may hold here.
    #[arg(long, default_value_t = ServeLimits::default().sessions_per_peer)]
    sessions_per_peer: usize,
    /// KV-cache tokens one peer's sessions may hold together (of 65,536 per block).
    #[arg(long, default_value_t = ServeLimits::default().tokens_per_peer)]
    cache_tokens_per_peer: usize,
    /// Decode steps of concurrent sessions run together in one engine call, at most this many.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    max_batch: u32,
    /// Seconds after which an unused session is forgotten and its cache freed.
    #[arg(long, default_value_t = ServeLimits::default().idle_ttl.as_secs())]
    session_ttl_secs: u64,
}

impl NodeLimitArgs {
    fn limits(&self) -> ServeLimits {
        ServeLimits {
            max_queued_steps: self.max_queued_steps.max(1),
            sessions_per_peer: self.sessions_per_peer.max(1),
            tokens_per_peer: self.cache_tokens_per_peer,
            idle_ttl: Duration::from_secs(self.session_ttl_secs),
        }
    }
}

/// Compares the node's registration with how it was started: refuses a mismatch with the fix,
/// or with `update` registers how it was started; says loudly when the node is inactive or
/// jailed, since it then earns nothing (and [`registration::watch_standing`] says so later).
async fn check_registration(
    registry: &Registry,
    operator: alloy::primitives::Address,
    started: &registration::Started<'_>,
    update: bool,
) -> anyhow::Result<()> {
    let record = registry.node(operator).await?;
    let mut refusals = Vec::new();
    for finding in registration::check(&record, started) {
        match finding {
            registration::Finding::Refuse(why) => refusals.push(why),
            registration::Finding::Warn(why) => tracing::warn!("{why}"),
        }
    }
    if !refusals.is_empty() && !update {
        bail!("node: {}", refusals.join("\nnode: "));
    }
    if !refusals.is_empty() {
        // With --relay the node's reachability decides its multiaddrs, later.
        let multiaddrs = match started.addresses_later {
            true => record.multiaddrs.clone(),
            false => registration::registrable(started.listen, started.peer)
                .map_err(|e| anyhow::anyhow!("node: --update-registration: {e}"))?,
        };
        let receipt = registry
            .update_service(
                started.model_id,
                started.blocks,
                record.pricePerToken,
                multiaddrs.clone(),
            )
            .await
            .context("node: --update-registration: updateService")?;
        tracing::info!(
            "registration updated (tx {}): model {}, blocks {}-{}, multiaddrs {multiaddrs:?}",
            receipt.transaction_hash,
            started.model_id,
            started.blocks.0,
            started.blocks.1
        );
    }
    if let Some(why) = registration::inactive(registry, operator).await? {
        tracing::warn!("INACTIVE, gateways will not route here: {why}");
    }
    Ok(())
}

/// Seeds the model folder's manifest and the pieces of the files it holds to fetching peers.
async fn seed(net: &Network, manifest: &ModelManifest, args: &NodeArgs) -> anyhow::Result<()> {
    match infergrid::share::Seed::open(manifest) {
        Ok(seed) => {
            let seed = seed.delaying(Duration::from_millis(args.testing_delay_ms));
            let seed = match args.testing_corrupt_pieces {
                Some(every) => {
                    tracing::warn!("TESTING: corrupting one piece in {every} served");
                    seed.corrupting(every)
                }
                None => seed,
            };
            let blocks = seed.held_blocks();
            tracing::info!(
                "seeding {} files of model {} (blocks {blocks:?})",
                seed.held(),
                manifest.model_id
            );
            for block in blocks {
                net.provide(files_key(&manifest.id().0, block)).await?;
            }
            net.seed(Arc::new(seed)).await?;
        }
        Err(e) => tracing::warn!("not seeding: {e}"),
    }
    Ok(())
}

/// The relay service a node offers with --relay-service: to the active registered nodes, read from the
/// registry now and then.
fn relay_service(args: &NodeArgs, registry: &Registry) -> Option<RelayService> {
    if !args.relay_service {
        return None;
    }
    let registered = RegisteredPeers::default();
    let every = Duration::from_secs(args.standing_check_secs.max(1));
    tokio::spawn(super::relay::keep_active(registry.clone(), registered.clone(), every));
    Some(RelayService { registered, limits: RelayLimits::default() })
}

/// Keeps the node's registered multiaddrs where gateways can reach it now: the address
/// others dialed it back at while AutoNAT finds it reachable, its addresses through relays
/// while it is not.
async fn keep_addresses_registered(
    registry: Registry,
    operator: alloy::primitives::Address,
    peer: PeerId,
    mut reachability: tokio::sync::watch::Receiver<Reachability>,
) {
    loop {
        let now = reachability.borrow_and_update().clone();
        let wanted: Vec<String> = match (now.status, now.public) {
            (nat::Status::Private, _) => now.relayed.iter().map(|a| a.to_string()).collect(),
            (nat::Status::Public, Some(public)) => {
                let public = match public.iter().last() {
                    Some(libp2p::multiaddr::Protocol::P2p(_)) => public,
                    _ => public.with(libp2p::multiaddr::Protocol::P2p(peer)),
                };
                vec![public.to_string()]
            }
            _ => Vec::new(),
        };
        if !wanted.is_empty() {
            match registry.node(operator).await {
                Ok(record) if record.multiaddrs != wanted => {
                    let blocks = (record.firstBlock, record.lastBlock);
                    let update = registry.update_service(
                        record.modelId,
                        blocks,
                        record.pricePerToken,
                        wanted.clone(),
                    );
                    match update.await {
                        Ok(receipt) => tracing::info!(
                            "registered multiaddrs {wanted:?} (tx {})",
                            receipt.transaction_hash
                        ),
                        Err(e) => tracing::warn!("cannot register multiaddrs {wanted:?}: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot read the registration: {e}"),
            }
        }
        if reachability.changed().await.is_err() {
            return;
        }
    }
}

pub async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let key = args.key.secret()?;
    let operator = Eip712Signer::from_bytes(&key)?;
    let me = operator.address();
    let source = super::fetch::FetchSource {
        peers: args.bootstrap.clone(),
        no_registry: false,
        not: Some(NodeIdentity::derive(&key).peer_id()),
    };
    let auto = args.blocks == "auto";
    let (first, last) = match auto {
        true => auto_blocks(&args, &source, me).await?,
        false => super::parse_block_range(&args.blocks)?,
    };
    if let Some(model) = args.fetch {
        let span = (u16::try_from(first)?, u16::try_from(last)?);
        super::fetch::fetch_blocks(model, span, &args.model, &source, &args.chain).await?;
    }
    let manifest = ModelManifest::load(&args.model)?;
    let (first, last) = (first as usize, last as usize);
    if last >= manifest.blocks.len() {
        bail!("the model has {} blocks; cannot serve {first}-{last}", manifest.blocks.len());
    }
    let (deployment, account) = args.chain.account(&key).await?;
    let registry = Registry::new(deployment.contracts.registry, account.provider.clone());
    let identity = NodeIdentity::derive(&key);
    let peer = identity.peer_id();
    registration::check_ports_free(&args.listen).map_err(|e| anyhow::anyhow!("node: {e}"))?;
    let registered = registry.operator_of(peer.to_bytes().into()).await? == operator.address();
    let standing = Arc::new(std::sync::Mutex::new(
        (!registered).then(|| "its peer id is not registered on-chain".to_owned()),
    ));
    if registered {
        let started = registration::Started {
            peer,
            model_id: manifest.id(),
            blocks: (first as u32, last as u32),
            listen: &args.listen,
            addresses_later: !args.relay.is_empty(),
        };
        let update = args.update_registration || auto;
        check_registration(&registry, operator.address(), &started, update).await?;
        let every = Duration::from_secs(args.standing_check_secs.max(1));
        let watcher = registration::watch_standing(
            registry.clone(),
            operator.address(),
            every,
            standing.clone(),
        );
        tokio::spawn(watcher);
    } else {
        tracing::warn!(
            "peer id {peer} is not registered on-chain for {}; gateways will not route \
             here and only --allow-peer peers are served (vouchers already in the ledger are \
             still redeemed)",
            operator.address()
        );
    }
    // The ledger is settled whether or not the peer id is registered: vouchers earned before a
    // deregistration are still owed, and only this node can redeem them.
    let collector = Arc::new(collector(&args, &deployment, &account, &registry).await?);

    let runtime = Runtime::new_shared_host(args.device, args.threads)?;
    if let Some(reason) = runtime.fallback() {
        tracing::warn!("{reason}");
    }
    let mut blocks = Vec::new();
    for index in first..=last {
        verify_block_files(&manifest, &manifest.blocks[index])?;
        blocks.push(Arc::new(BlockRunner::load(
            &manifest,
            index,
            &runtime,
            CacheLimits::default(),
        )?));
    }
    let model_id = manifest.id().0;
    let clock = account
        .contracts(&deployment)
        .validation
        .epoch_clock()
        .await
        .context("reading the Validation contract's epochs (genesis, epochDuration)")?;
    let time = chain_time(&account.provider, "node").await?;
    let (net, inbound) = Network::spawn(NetConfig {
        keypair: identity.keypair(),
        listen: args.listen.clone(),
        bootstrap: args.bootstrap.clone(),
        request_timeout: Duration::from_secs(60),
        nat: NatConfig {
            relays: args.relay.clone(),
            force_private: args.behind_nat,
            relay_service: relay_service(&args, &registry),
            external: Vec::new(),
        },
    })?;
    if registered && !args.relay.is_empty() {
        let keeper = keep_addresses_registered(
            registry.clone(),
            operator.address(),
            peer,
            net.reachability(),
        );
        tokio::spawn(keeper);
    }
    // Seeding first: a provider record must not send fetchers to a node not yet answering.
    seed(&net, &manifest, &args).await?;
    for block in first..=last {
        net.provide(block_key(&model_id, block as u16)).await?;
    }
    let metrics = NodeMetrics::new(Some(net.metrics()));
    let server = Arc::new(BlockServer {
        model_id,
        first_block: first as u16,
        blocks: blocks.clone(),
        batcher: Batcher::start(blocks.clone(), args.limits.max_batch as usize, metrics.clone()),
        attester: Attester {
            signer: operator,
            domain: validation_domain(deployment.chain_id, deployment.contracts.validation),
            clock,
            time,
        },
        decode_ms: Default::default(),
        load: LoadGuard::new(args.limits.limits()),
        admission: Admission::Peers(args.allow_peer.iter().copied().collect::<HashSet<_>>()),
        collector: registered.then(|| collector.clone()),
        metrics: metrics.clone(),
        cheat: match (args.testing_perturb_answers, args.testing_lazy) {
            (Some(fraction), _) => {
                tracing::warn!("TESTING: perturbing {:.1}% of answers", fraction * 100.0);
                let seed = u64::from_le_bytes(model_id[..8].try_into().expect("8 bytes"));
                Some(Cheat::perturbing(fraction, seed))
            }
            (None, true) => {
                tracing::warn!("TESTING: lazy, skipping the last block of every span");
                Some(Cheat::Lazy)
            }
            (None, false) => None,
        },
        registered: std::sync::RwLock::new(registered.then_some((first as u16, last as u16))),
        answer_delay: {
            if args.testing_delay_ms > 0 {
                tracing::warn!("TESTING: every answer held {} ms", args.testing_delay_ms);
            }
            Duration::from_millis(args.testing_delay_ms)
        },
    });
    tokio::spawn(server.clone().run(inbound));
    if registered {
        let every = Duration::from_secs(args.standing_check_secs.max(1));
        tokio::spawn(watch_terms(registry.clone(), every, collector.clone(), server.clone()));
    }
    if let Some(address) = args.http {
        let view = NodeView {
            peer,
            net: net.clone(),
            server: server.clone(),
            collector: collector.clone(),
            inactive: standing.clone(),
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("node: --http {address}: cannot listen there"))?;
        let address = listener.local_addr()?;
        println!(
            "node: metrics on http://{address}/metrics, status on /status, health on /healthz"
        );
        tokio::spawn(async move { axum::serve(listener, http::router(Arc::new(view))).await });
    }
    // Metering reaches the ledger every second, so a crash loses at most a second of it.
    let flusher = {
        let collector = collector.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                if let Err(e) = collector.flush().await {
                    tracing::warn!("writing metering to the ledger failed (retrying): {e}");
                }
            }
        })
    };
    // Redemption runs until shutdown; a redemption in flight then completes and is recorded.
    let (stop_redeeming, mut stopped) = tokio::sync::watch::channel(false);
    let redeemer = {
        let (collector, metrics) = (collector.clone(), metrics.clone());
        let policy = RedeemPolicy { value_to_gas: args.redeem_value_to_gas };
        let every = Duration::from_secs(args.redeem_check_secs.max(1));
        tokio::spawn(async move {
            loop {
                match collector.settle(&policy).await {
                    Ok(Some(s)) if s.channels == 0 => {
                        metrics.redemption(s.value, s.gas_used);
                        tracing::warn!(tx = %s.tx, gas = s.gas_used, "redeemBatch paid nothing");
                        log_skipped(&s.skipped);
                    }
                    Ok(Some(s)) => {
                        metrics.redemption(s.value, s.gas_used);
                        tracing::info!(
                            wei = %s.value, channels = s.channels, tx = %s.tx, gas = s.gas_used,
                            "redeemed"
                        );
                        log_skipped(&s.skipped);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("redemption failed (retrying): {e}"),
                }
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    };

    // Load announcements, so gateways can weigh routes.
    let announcer = net.clone();
    let model_hex = manifest.model_id.clone();
    tokio::spawn(async move {
        loop {
            let (sessions, _) = blocks[0].cache_usage();
            let free = blocks.iter().map(|b| b.free_cache_tokens()).min().unwrap_or(0);
            let _ = announcer
                .publish(Announcement {
                    peer_id: peer.to_string(),
                    model_id: model_hex.clone(),
                    first_block: first as u16,
                    last_block: last as u16,
                    active_sessions: sessions,
                    free_cache_tokens: free,
                    compute_ms_per_token: server.decode_ms.get().unwrap_or(0.0),
                })
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    println!(
        "node ready: peer {peer}, blocks {first}-{last} of {}, listening on {:?}",
        manifest.model_id, args.listen
    );
    let watching = auto && args.rebalance_secs > 0;
    let moved = tokio::select! {
        stop = super::stop_signal() => {
            stop?;
            None
        }
        moved = watch_coverage(&args, &source, me, manifest.id(), first),
            if watching => moved,
    };
    tracing::info!("stopping");
    net.shutdown().await?;
    let _ = stop_redeeming.send(true);
    let _ = redeemer.await;
    flusher.abort();
    collector.flush().await?;
    if let Some(start) = moved {
        // The same command again: it chooses its span anew, fetches and registers it.
        tracing::info!("moving to blocks from {start}: restarting with the same arguments");
        use std::os::unix::process::CommandExt;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        return Err(std::process::Command::new(std::env::current_exe()?).args(args).exec().into());
    }
    Ok(())
}

/// `--blocks auto`: the span this operator should serve now.
async fn auto_blocks(
    args: &NodeArgs,
    source: &super::fetch::FetchSource,
    me: alloy::primitives::Address,
) -> anyhow::Result<(u32, u32)> {
    // It may choose blocks whose files are not here yet: it must be able to fetch them
    // before it registers them.
    let model = args.fetch.context(
        "--blocks auto fetches the blocks it chooses: give --fetch MODEL_ID (pieces already \
         in --model are kept)",
    )?;
    let survey = super::fetch::survey(model, &args.model, source, &args.chain, me).await?;
    let span = args.auto_span.clamp(1, survey.blocks);
    let start = survey.coverage.best_start(span, survey.typical);
    let shown: Vec<String> = survey.coverage.0.iter().map(|t| format!("{t:.1}")).collect();
    println!(
        "auto: serving blocks {start}-{} (tokens/s on each block from the other nodes: [{}])",
        start + span - 1,
        shown.join(", ")
    );
    Ok((start as u32, (start + span - 1) as u32))
}

/// Looks at the swarm's coverage every --rebalance-secs (±25%); returns the new span's start
/// once moving has been worth it on two looks in a row: a node passing through a restart,
/// unheard for a moment, does not move the others.
async fn watch_coverage(
    args: &NodeArgs,
    source: &super::fetch::FetchSource,
    me: alloy::primitives::Address,
    model: alloy::primitives::B256,
    first: usize,
) -> Option<usize> {
    let mut worth = None;
    loop {
        // Jittered, so that nodes started together do not all look, and move, at once.
        let jitter = rand::random_range(0.75..1.25);
        tokio::time::sleep(Duration::from_secs(args.rebalance_secs).mul_f64(jitter)).await;
        let survey = match super::fetch::survey(model, &args.model, source, &args.chain, me).await {
            Ok(survey) => survey,
            Err(e) => {
                tracing::warn!("looking at the swarm's coverage failed (retrying): {e:#}");
                continue;
            }
        };
        let span = args.auto_span.clamp(1, survey.blocks);
        let best = survey.coverage.worth_moving(first, span, survey.typical);
        if best.is_some() && best == worth {
            return best;
        }
        if let Some(start) = best {
            tracing::info!(
                "blocks from {start} are less served than this node's (tokens/s per block: {:?}); \
                 moving if still so at the next look",
                survey.coverage.0
            );
        }
        worth = best;
    }
}

/// The node's registered terms: its price per token over its registered span; `None` for an
/// operator not registered.
async fn registered_terms(
    registry: &Registry,
    operator: alloy::primitives::Address,
) -> anyhow::Result<Option<(Tariff, (u16, u16))>> {
    let node = registry.node(operator).await?;
    if node.registeredAt == 0 {
        return Ok(None);
    }
    let span = (u16::try_from(node.firstBlock)?, u16::try_from(node.lastBlock)?);
    let blocks = span.1.checked_sub(span.0).context("registered span ends before it starts")?;
    let span_blocks = blocks.checked_add(1).context("registered span of over 65,535 blocks")?;
    Ok(Some((Tariff { price_per_token: node.pricePerToken, span_blocks }, span)))
}

/// Follows the node's registration on-chain: a new price or span applies to each channel
/// from its payer's next voucher on (`payments.md`, "Price changes"), and only registered
/// blocks are served to paying peers.
async fn watch_terms(
    registry: Registry,
    every: Duration,
    collector: Arc<Collector>,
    server: Arc<BlockServer>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match registered_terms(&registry, collector.operator()).await {
            // Deregistered meanwhile: the standing watcher says so; terms stay as they were.
            Ok(None) => {}
            Ok(Some((tariff, span))) => {
                if collector.set_tariff(tariff) {
                    tracing::info!(
                        price_per_token = %tariff.price_per_token, first_block = span.0,
                        last_block = span.1,
                        "registered terms changed: each channel moves to them with its next voucher"
                    );
                }
                *server.registered.write().expect("registered span") = Some(span);
            }
            Err(e) => tracing::warn!("reading its registration failed (retrying): {e}"),
        }
    }
}

/// The node's payment collector: its registered price, its ledger, and the operator's
/// account for redemptions.
async fn collector(
    args: &NodeArgs,
    deployment: &Deployment,
    account: &Account,
    registry: &Registry,
) -> anyhow::Result<Collector> {
    let operator = account.address;
    // Not registered: nothing is charged (only vouchers already in the ledger are redeemed).
    let unregistered = Tariff { price_per_token: U256::ZERO, span_blocks: 1 };
    let tariff = registered_terms(registry, operator).await?.map_or(unregistered, |(t, _)| t);
    let path = args
        .ledger
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!(".infergrid/ledgers/{operator}.redb")));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let fingerprint = deployment_fingerprint(&account.provider, deployment).await?;
    let ledger = Ledger::open(&path, fingerprint)
        .with_context(|| format!("opening the ledger {}", path.display()))?;
    let credit = tariff.price_per_token * U256::from(args.credit_tokens);
    tracing::info!(
        "paid at {} wei per token, credit {credit} wei, ledger {}",
        tariff.price_per_token,
        path.display()
    );
    let collector = Collector::new(
        operator,
        tariff,
        channels_domain(deployment.chain_id, deployment.contracts.channels),
        credit,
        account.contracts(deployment).channels,
        ledger,
    );
    let collector = collector.with_confirmations(args.redeem_confirmations);
    Ok(match &args.min_deposit {
        Some(amount) => collector.with_min_deposit(super::operator::parse_amount(amount)?),
        None => collector,
    })
}

/// How a gateway (or a validator's challenges) pays the nodes.
#[derive(Debug, Args)]
pub struct PaymentArgs {
    /// Deposit of each payment channel to a node, and of each top-up (`1BTT`, `5000wei`).
    #[arg(long, default_value = "1BTT")]
    deposit: String,
    /// Most this gateway deposits into channels in one run.
    #[arg(long, default_value = "100BTT")]
    budget: String,
    /// Sign a new voucher for a node once this many tokens' worth is unpaid (and at the
    /// end of every request). Must stay below the nodes' credit.
    #[arg(long, default_value_t = 32)]
    sign_every_tokens: u64,
    /// What was signed to which channel, kept across restarts.
    /// Default: .infergrid/wallets/<payer address>.redb
    #[arg(long)]
    wallet: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The model folder (the manifest and tokenizer are read; no weights needed).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    chain: ChainTarget,
    /// The operator's key for a node, the payer's for a gateway.
    #[command(flatten)]
    key: KeyArgs,
    /// HTTP address of the OpenAI-compatible API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// libp2p listen address.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    p2p_listen: Vec<Multiaddr>,
    /// Extra peers to dial, `/…/p2p/<peer id>`.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    #[command(flatten)]
    payment: PaymentArgs,
    /// Never route through a node whose on-chain reputation (basis points; 5000 until
    /// validators first score it, 0 once convicted) is below this. Routes prefer higher
    /// reputation among comparable nodes either way.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    min_reputation: u32,
    /// What one millisecond less per token is worth to you, in wei: routes are planned by
    /// price plus latency at this rate (the default makes 0.000001 BTT a token worth 10 ms,
    /// so the cheapest nodes win unless a pricier one is much faster).
    #[arg(long, default_value_t = infergrid::route::DEFAULT_WEI_PER_MS, value_parser = parse_wei_per_ms)]
    wei_per_ms: f64,
    /// Speculative decoding: verify up to N drafted tokens in each decode step, one round
    /// trip through the route for all of them. Drafts come from prompt lookup (the
    /// continuation of an earlier occurrence of the last tokens: right when the output quotes
    /// its input), or from --draft-model. The output is exactly plain decoding's; 0 turns it
    /// off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    speculate: u32,
    /// With --speculate: drafts come from this model instead, run greedily in this process
    /// (CPU): a small copy of the served model with its tokenizer, e.g. `model import
    /// --quantize int8`. The output stays exactly the served model's; a draft that fails
    /// leaves that step without drafts.
    #[arg(long)]
    draft_model: Option<PathBuf>,
    /// With --draft-model: ask the swarm's draft nodes for drafts instead — nodes registered
    /// on-chain for that model and serving it whole, each paid per token at its registered
    /// price — rather than running it here (only the folder's manifest and tokenizer are
    /// read). A draft node that fails leaves its generation without drafts until another
    /// answers.
    #[arg(long, requires = "draft_model")]
    draft_nodes: bool,
    /// Cross-check generation: each step of every hop also runs on a witness, a node of
    /// another operator serving the same blocks, and an answer is used only once two nodes
    /// agree within the validators' tolerance; a disputed step is asked of both again, then
    /// of a third node, and a node caught answering unlike two agreeing ones is left out for
    /// the rest of the run. Users get the honest model's output even from a node validators
    /// have not caught yet, for twice the compute and payment on every hop that has a
    /// witness (a hop no other operator serves, and embeddings, run unchecked).
    #[arg(long)]
    cross_check: bool,
    /// TESTING ONLY — throw away the answers to the first N paid decode steps as if they
    /// were lost on the way (the nodes metered them), to watch the gateway and the nodes
    /// agree again on what is owed.
    #[arg(long, default_value_t = 0)]
    testing_drop_answers: u64,
    #[command(flatten)]
    limits: ApiLimitArgs,
}

/// How much of the gateway a client can use: every request spends the gateway's wallet.
#[derive(Debug, Args)]
struct ApiLimitArgs {
    /// Require `Authorization: Bearer <KEY>` on every /v1 request (/healthz stays open).
    #[arg(long, env = "INFERGRID_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Generations running at once; one more is answered 429 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions: u32,
    /// HTTP connections open at once; more are closed on accept.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// HTTP connections open at once from one client address.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_address: u32,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds a client has to send its request headers; slower ones are cut off.
    #[arg(long, default_value_t = 10)]
    header_timeout_secs: u64,
    /// Longest pause in seconds between two parts of a request body; a stalled body is
    /// answered 408.
    #[arg(long, default_value_t = 30)]
    body_timeout_secs: u64,
    /// A web origin (`https://app.example`) whose pages may call the API from a browser
    /// (CORS); repeat for several, or `*` for any. None by default.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
}

impl ApiLimitArgs {
    fn limits(&self) -> ApiLimits {
        ApiLimits {
            max_sessions: self.max_sessions as usize,
            max_connections: self.max_connections as usize,
            max_connections_per_address: self.max_connections_per_address as usize,
            max_body_bytes: self.max_body_bytes,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            cors_origins: self.cors_origins.clone(),
            api_key: self.api_key.clone(),
            ..ApiLimits::default()
        }
    }
}

/// How often a gateway looks for nodes whose account to settle (an answer to them was lost).
const SETTLE_EVERY: Duration = Duration::from_secs(2);

/// The draft model in `dir`, checked to draft for `served` (same tokenizer and vocabulary).
fn draft_manifest(dir: &std::path::Path, served: &ModelManifest) -> anyhow::Result<ModelManifest> {
    let draft = ModelManifest::load(dir)?;
    check_draft(&draft, served).with_context(|| format!("--draft-model {}", dir.display()))?;
    Ok(draft)
}

/// The draft model in `dir`, loaded on this machine's CPU.
fn load_draft(dir: &std::path::Path, draft: &ModelManifest) -> anyhow::Result<Arc<Pipeline>> {
    // Idle pool threads sleep: the gateway shares its cores (with nodes, on a devnet).
    let runtime = Runtime::new_shared_host(Device::Cpu, None)?;
    let pipeline = Pipeline::load(dir, &runtime, CacheLimits::default())?;
    tracing::info!(
        model = draft.name,
        weight_mb = pipeline.weight_bytes() as f64 / 1e6,
        "drafting with a draft model run here"
    );
    Ok(Arc::new(pipeline))
}

pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let manifest = ModelManifest::load(&args.model)?;
    let tokenizer = super::infer::load_tokenizer(&args.model, &manifest.tokenizer.file)?;
    // Checked before any chain or network work, so that a wrong flag fails at once.
    let draft = match &args.draft_model {
        Some(_) if args.speculate == 0 => bail!("--draft-model drafts for --speculate K: set K"),
        Some(dir) => Some((dir, draft_manifest(dir, &manifest)?)),
        None => None,
    };
    let draft_model = match &draft {
        Some((dir, draft)) if !args.draft_nodes => Some(load_draft(dir, draft)?),
        _ => None,
    };
    let key = args.key.secret()?;
    let (deployment, account) = args.chain.account(&key).await?;
    let registry = Registry::new(deployment.contracts.registry, account.provider.clone());
    let wallet = Arc::new(wallet(&args.payment, &key, &deployment, &account, "gateway").await?);
    let (net, mut inbound) = Network::spawn(NetConfig {
        keypair: NodeIdentity::derive(&key).keypair(),
        listen: args.p2p_listen.clone(),
        bootstrap: args.bootstrap.clone(),
        request_timeout: Duration::from_secs(30),
        nat: Default::default(),
    })?;
    let validation = account.contracts(&deployment).validation;
    let directory_of = |model: &ModelManifest| {
        Directory::new(registry.clone(), validation.clone(), model.id(), model.blocks.len() as u16)
            .with_min_reputation(args.min_reputation)
    };
    let directory = directory_of(&manifest);
    let found = directory.refresh(&net).await?;
    tracing::info!("peer {}, {found} staked nodes serve {}", net.local_peer(), manifest.model_id);
    let draft_directory = match &draft {
        Some((_, draft)) if args.draft_nodes => {
            let directory = directory_of(draft);
            let found = directory.refresh(&net).await?;
            tracing::info!("{found} staked draft nodes serve {}", draft.model_id);
            Some((directory, draft))
        }
        _ => None,
    };

    // Announcements are drained by one task and the registry re-read by another, so a slow
    // RPC never leaves the swarm waiting to hand over inbound messages.
    let directories: Vec<Directory> = std::iter::once(&directory)
        .chain(draft_directory.as_ref().map(|(d, _)| d))
        .cloned()
        .collect();
    for (directory, role) in directories.iter().zip(["gateway", "gateway's draft directory"]) {
        directory.keep_fresh(net.clone(), Duration::from_secs(5), role);
    }
    tokio::spawn(async move {
        while let Some(message) = inbound.recv().await {
            if let Inbound::Announcement { from, announcement } = message {
                // Each directory keeps only its own model's nodes.
                directories.iter().for_each(|d| d.announce(from, announcement.clone()));
            }
        }
    });

    let config = RemoteModelConfig::for_model(&manifest, 4);
    let signatures = SignatureCheck {
        domain: validation_domain(deployment.chain_id, deployment.contracts.validation),
        clock: validation.epoch_clock().await?,
        time: chain_time(&account.provider, "gateway").await?,
        operators: directory.terms(),
    };
    let drafts_from = match (draft_model, draft_directory) {
        (Some(model), _) => DraftSource::Model(model),
        (None, Some((directory, draft))) => {
            let signatures = SignatureCheck { operators: directory.terms(), ..signatures.clone() };
            let nodes = DraftNodes::new(net.clone(), draft, directory.candidates())
                .paying(wallet.clone(), directory.terms())
                .verifying(signatures)
                .pricing(args.wei_per_ms);
            DraftSource::Nodes(Arc::new(nodes))
        }
        (None, None) => DraftSource::PromptLookup,
    };
    let metrics = GatewayMetrics::new(Some(net.metrics()));
    let remote = RemoteModel::new(net.clone(), config, directory.candidates())
        .paying(wallet, directory.terms())
        .verifying(signatures)
        .pricing(args.wei_per_ms)
        .observed(metrics.clone());
    let remote = if args.cross_check { remote.cross_checking() } else { remote };
    if args.testing_drop_answers > 0 {
        tracing::warn!(
            "TESTING: dropping the answers to {} decode steps",
            args.testing_drop_answers
        );
        remote.drop_answers(args.testing_drop_answers);
    }
    // Accounts that may differ from a node's (an answer lost) are settled off the request path,
    // by a task (not a thread of its own), so that shutting down does not wait for it.
    let settler = Arc::new(remote.open());
    let draft_settler = match &drafts_from {
        DraftSource::Nodes(nodes) => Some(nodes.clone()),
        _ => None,
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SETTLE_EVERY);
        loop {
            tick.tick().await;
            let (settler, draft_settler) = (settler.clone(), draft_settler.clone());
            let settle = move || {
                settler.settle_accounts();
                draft_settler.iter().for_each(|nodes| nodes.settle_accounts());
            };
            let _ = tokio::task::spawn_blocking(settle).await;
        }
    });
    let status: Arc<dyn infergrid::gateway::RoutingStatus> = Arc::new(remote.open());
    let routing = infergrid::api::Routing {
        status: status.clone(),
        metrics,
        drafts: args.speculate as usize,
        drafts_from,
    };
    let dashboard = infergrid::dashboard::DashboardSource {
        rpc_url: args.chain.rpc_url(),
        deployment: deployment.clone(),
        gateway: Some(status),
    };
    let limits = args.limits.limits();
    let model = infergrid::api::ModelLimits {
        name: manifest.name.clone(),
        context_length: manifest.config.max_positions,
        vocab_size: manifest.config.vocab_size,
    };
    let state = if manifest.architecture.is_decoder() {
        let backend: infergrid::api::Backend = Arc::new(move || Box::new(remote.open()));
        let chat = ChatFormat::load(&manifest, &tokenizer)?;
        ApiState::new(
            model,
            tokenizer,
            chat,
            Some(backend),
            None,
            Some(routing),
            limits.max_sessions,
        )
    } else {
        let pooling = manifest.pooling.clone().context("the encoder's manifest has no pooling")?;
        let (remote, tokenizer_for_embeddings) = (Arc::new(remote), tokenizer.clone());
        let embedder: infergrid::api::Embedder = Arc::new(move |texts: &[String]| {
            infergrid::generate::pool_texts(&*remote, &tokenizer_for_embeddings, &pooling, texts)
        });
        let sessions = limits.max_sessions;
        ApiState::new(
            model,
            tokenizer,
            ChatFormat::Plain,
            None,
            Some(embedder),
            Some(routing),
            sessions,
        )
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!(
        "gateway ready: OpenAI API on http://{address}/v1 (model {:?}), dashboard on \
         http://{address}/dashboard",
        manifest.name,
        address = listener.local_addr()?,
    );
    let app = router(state, &limits).merge(infergrid::dashboard::router(dashboard));
    limits
        .serve(listener, app, async {
            let _ = super::stop_signal().await;
        })
        .await?;
    Ok(())
}

/// A payer's wallet: the payer key's channels, funded from the budget. `role` names the
/// payer in logs.
pub async fn wallet(
    args: &PaymentArgs,
    key: &B256,
    deployment: &Deployment,
    account: &Account,
    role: &str,
) -> anyhow::Result<Wallet> {
    let payer = Eip712Signer::from_bytes(key)?;
    let contracts = account.contracts(deployment);
    let config = WalletConfig {
        deposit: super::operator::parse_amount(&args.deposit)?,
        budget: super::operator::parse_amount(&args.budget)?,
        sign_every_tokens: args.sign_every_tokens,
    };
    let balance = contracts.token.balance_of(payer.address()).await?;
    if balance < config.deposit {
        bail!(
            "the payer {} holds {balance} wei of BTT, less than one channel deposit ({} wei)",
            payer.address(),
            config.deposit
        );
    }
    let path = args.wallet.clone().unwrap_or_else(|| default_wallet(payer.address()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tracing::info!(
        "{role}: paying as {}, deposit {} wei per channel, budget {} wei, wallet {}",
        payer.address(),
        config.deposit,
        config.budget,
        path.display()
    );
    Wallet::open(
        payer,
        channels_domain(deployment.chain_id, deployment.contracts.channels),
        contracts.token,
        contracts.channels,
        config,
        &path,
        deployment_fingerprint(&account.provider, deployment).await?,
    )
    .with_context(|| format!("opening the wallet {}", path.display()))
}

/// Where a payer's wallet is kept unless `--wallet` says otherwise.
pub fn default_wallet(payer: alloy::primitives::Address) -> PathBuf {
    PathBuf::from(format!(".infergrid/wallets/{payer}.redb"))
}

/// One line per voucher a redemption left out, naming the channel and why.
fn log_skipped(skipped: &[SkippedVoucher]) {
    for skip in skipped {
        tracing::warn!(
            channel = %skip.channel,
            "voucher for {} wei not redeemed: {}",
            skip.cumulative_amount, skip.reason
        );
    }
}

/// A positive, finite number of wei.
pub(super) fn parse_wei_per_ms(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(wei) if wei.is_finite() && wei > 0.0 => Ok(wei),
        _ => Err(format!("{text:?} is not a positive number of wei")),
    }
}

/// A fraction in [0, 1].
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a fraction between 0 and 1")),
    }
}

/// The chain's clock, kept in step with the latest block every 30 s, so that answers are
/// signed (node) and checked (gateway) for the epoch the contract will judge them in.
pub async fn chain_time(provider: &DynProvider, role: &'static str) -> anyhow::Result<ChainClock> {
    let time = ChainClock::default();
    time.sync(latest_block_time(provider).await?);
    let (provider, synced) = (provider.clone(), time.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            match latest_block_time(&provider).await {
                Ok(timestamp) => synced.sync(timestamp),
                Err(e) => tracing::warn!("{role}: reading the chain's time failed (retrying): {e}"),
            }
        }
    });
    Ok(time)
}
