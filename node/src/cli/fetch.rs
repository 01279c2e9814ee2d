//! `infergrid model fetch` (and `node --fetch`): a model's blocks from the peers that seed
//! them, with a progress bar.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use infergrid::chain::{Registry, check_deployment, connect_reader};
use infergrid::net::{NetConfig, Network, peer_of};
use infergrid::share::{self, FetchProgress, FetchReport};
use libp2p::Multiaddr;

use super::ChainTarget;

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The model id registered on-chain (`0x` and 64 hex digits): every byte fetched is
    /// checked against it.
    #[arg(long)]
    model_id: B256,
    /// Blocks to fetch, inclusive: `2` or `1-2` (with the model's tokenizer and template).
    #[arg(long)]
    blocks: String,
    /// The model folder to fetch into (created; pieces already there are kept).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    source: FetchSource,
    #[command(flatten)]
    chain: ChainTarget,
}

/// Where a fetch finds the peers that seed a model.
#[derive(Debug, Args)]
pub struct FetchSource {
    /// Peers to ask (and to reach the DHT through), `/…/p2p/<peer id>` (repeatable). The
    /// registry's nodes on the blocks are asked too when the chain can be read.
    #[arg(long = "fetch-from")]
    pub peers: Vec<Multiaddr>,
    /// Fetch only from --fetch-from peers and the DHT, without reading the registry.
    #[arg(long)]
    pub no_registry: bool,
    /// A peer not to ask: the fetching node itself, registered but not yet serving.
    #[arg(skip)]
    pub not: Option<libp2p::PeerId>,
}

pub async fn run(args: FetchArgs) -> anyhow::Result<()> {
    let (first, last) = super::parse_block_range(&args.blocks)?;
    let blocks = (u16::try_from(first)?, u16::try_from(last)?);
    fetch_blocks(args.model_id, blocks, &args.out, &args.source, &args.chain).await?;
    Ok(())
}

/// Fetches `blocks` of `model` into `out`, printing progress and what came from whom.
pub async fn fetch_blocks(
    model: B256,
    blocks: (u16, u16),
    out: &Path,
    source: &FetchSource,
    chain: &ChainTarget,
) -> anyhow::Result<FetchReport> {
    let (net, inbound) = fetch_network(source)?;
    // Nothing here reads what the network delivers (gossip): closed, it is dropped at once.
    drop(inbound);
    let registry = match source.no_registry {
        true => None,
        false => Some(registry_reader(chain).await?),
    };
    let mut providers = share::providers::find(registry.as_ref(), &net, model, blocks)
        .await
        .context("reading the registry's nodes")?;
    providers.retain(|p| Some(p.peer) != source.not);
    for addr in &source.peers {
        if let Some(peer) = peer_of(addr)
            && !providers.iter().any(|p| p.peer == peer)
        {
            providers.push(share::Provider { peer, blocks: None });
        }
    }
    anyhow::ensure!(
        !providers.is_empty(),
        "no peer seeds blocks {}-{} of model {model}: none is registered on them, none \
         published a provider record, and no --fetch-from peer was given",
        blocks.0,
        blocks.1
    );
    eprintln!(
        "fetch: model {model}, blocks {}-{}, from {} peer(s) into {}",
        blocks.0,
        blocks.1,
        providers.len(),
        out.display()
    );
    let bar = Bar::new();
    let started = Instant::now();
    let report = share::fetch(&net, model, blocks, out, &providers, &bar).await;
    bar.0.finish_and_clear();
    let _ = net.shutdown().await;
    let report = report?;
    print_report(&report, started.elapsed());
    Ok(report)
}

/// A fetch's own network: a fresh identity, listening nowhere, dialling `source`'s peers.
fn fetch_network(
    source: &FetchSource,
) -> anyhow::Result<(Network, tokio::sync::mpsc::Receiver<infergrid::net::Inbound>)> {
    Ok(Network::spawn(NetConfig {
        keypair: libp2p::identity::Keypair::generate_secp256k1(),
        listen: Vec::new(),
        bootstrap: source.peers.clone(),
        request_timeout: Duration::from_secs(60),
        nat: Default::default(),
    })?)
}

/// The registry of `chain`'s deployment, read-only, checked to be that deployment.
async fn registry_reader(chain: &ChainTarget) -> anyhow::Result<Registry> {
    let (deployment, url) = (chain.load()?, chain.rpc_url());
    let provider = connect_reader(&url).await?;
    check_deployment(&provider, &url, &deployment).await?;
    Ok(Registry::new(deployment.contracts.registry, provider))
}

fn print_report(report: &FetchReport, took: Duration) {
    let seconds = took.as_secs_f64();
    println!(
        "fetched {} of {} pieces ({:.1} MB) in {seconds:.2} s ({:.1} MB/s); {} already on disk \
         and checked; {} bad piece(s) refused",
        report.fetched,
        report.pieces,
        report.bytes_fetched as f64 / 1e6,
        report.bytes_fetched as f64 / 1e6 / seconds.max(1e-9),
        report.resumed,
        report.refused,
    );
    for (peer, pieces) in &report.by_peer {
        let share = 100.0 * *pieces as f64 / report.fetched.max(1) as f64;
        println!("  from {peer}: {pieces} pieces ({share:.0}%)");
    }
    for peer in &report.banned {
        println!("  banned {peer}: it sent a bad piece or manifest");
    }
}

/// Notes to the log, for fetching a manifest alone.
struct Logged;

impl FetchProgress for Logged {
    fn begin(&self, _: u64, _: u64) {}

    fn advanced(&self, _: u64) {}

    fn note(&self, line: &str) {
        tracing::warn!("{line}");
    }
}

/// The progress bar: bytes, rate and time left. When stderr is not a terminal (a log), a
/// line at every tenth of the way instead; notes are printed either way.
struct Bar(ProgressBar, std::sync::atomic::AtomicU64);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template"),
        );
        Self(bar, std::sync::atomic::AtomicU64::new(0))
    }
}

impl FetchProgress for Bar {
    fn begin(&self, total: u64, held: u64) {
        self.0.set_length(total);
        self.0.set_position(held);
        self.1.store(held * 10 / total.max(1), std::sync::atomic::Ordering::Relaxed);
        if held > 0 {
            self.note(&format!(
                "{:.1} of {:.1} MB already on disk",
                held as f64 / 1e6,
                total as f64 / 1e6
            ));
        }
    }

    fn advanced(&self, bytes: u64) {
        self.0.inc(bytes);
        let (done, total) = (self.0.position(), self.0.length().unwrap_or(0).max(1));
        let tenths = done * 10 / total;
        let logged = self.1.fetch_max(tenths, std::sync::atomic::Ordering::Relaxed);
        if self.0.is_hidden() && tenths > logged {
            eprintln!(
                "fetch: {}% ({:.1} of {:.1} MB)",
                tenths * 10,
                done as f64 / 1e6,
                total as f64 / 1e6
            );
        }
    }

    fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("fetch: {line}"));
    }
}

/// What the swarm looks like to a node choosing its blocks: the model's block count, and
/// the throughput on each block from the other active nodes.
pub struct Survey {
    pub blocks: usize,
    pub coverage: share::placement::Coverage,
    /// Tokens/s of a typical node: what this one is taken to add.
    pub typical: f64,
}

/// How long a survey listens for the nodes' load announcements: two of their 2 s periods
/// after the connections are up, so a node not heard is offline.
const ANNOUNCEMENTS_HEARD_FOR: Duration = Duration::from_millis(4500);

/// Surveys the swarm serving `model` for operator `me`: the manifest from `dir` if it holds
/// this model's, else from a peer; coverage from the registry, weighted by the throughput
/// the nodes announce.
pub async fn survey(
    model: B256,
    dir: &Path,
    source: &FetchSource,
    chain: &ChainTarget,
    me: alloy::primitives::Address,
) -> anyhow::Result<Survey> {
    let (net, mut inbound) = fetch_network(source)?;
    let registry = registry_reader(chain).await?;
    let registered = share::providers::registered(&registry, &net, model).await?;
    let mut providers: Vec<share::Provider> =
        registered.into_iter().map(|(peer, _)| share::Provider { peer, blocks: None }).collect();
    providers.extend(
        source.peers.iter().filter_map(peer_of).map(|peer| share::Provider { peer, blocks: None }),
    );
    // Announcements arrive over gossip once the connections are up.
    let mut heard = std::collections::HashMap::new();
    let wanted = model.to_string();
    let listening = tokio::time::sleep(ANNOUNCEMENTS_HEARD_FOR);
    tokio::pin!(listening);
    loop {
        tokio::select! {
            _ = &mut listening => break,
            Some(message) = inbound.recv() => {
                if let infergrid::net::Inbound::Announcement { from, announcement } = message
                    && announcement.model_id == wanted
                {
                    let ms = announcement.compute_ms_per_token;
                    heard.insert(from, if ms > 0.0 { 1000.0 / ms } else { 0.0 });
                }
            }
        }
    }
    drop(inbound);
    let mut banned = Default::default();
    let manifest = share::fetch_manifest(&net, model, dir, &providers, &mut banned, &Logged).await;
    let _ = net.shutdown().await;
    let blocks = manifest?.blocks.len();
    let (coverage, typical) =
        share::placement::coverage(&registry, model, blocks, me, &heard).await?;
    Ok(Survey { blocks, coverage, typical })
}
