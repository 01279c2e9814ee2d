//! In-process nodes for the libp2p tests: real swarms on loopback serving real blocks.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use infergrid::eip712::Eip712Signer;
use infergrid::engine::{BlockRunner, CacheLimits, Runtime};
use infergrid::model::ModelManifest;
use infergrid::net::{Inbound, NetConfig, Network};
use infergrid::pay::Collector;
use infergrid::serve::{Admission, Attester, Batcher, BlockServer, Cheat, LoadGuard, ServeLimits};
use infergrid::validate::{ChainClock, EpochClock, validation_domain};
use libp2p::{Multiaddr, PeerId, identity};

use crate::procs::free_port;

/// The epochs the in-process nodes sign into their answers: a single epoch, 0, that never
/// ends, so a test knows the epoch of every signature without a chain.
pub const NODE_EPOCHS: EpochClock = EpochClock { genesis: 0, duration: u64::MAX };

/// A libp2p endpoint with a fresh identity, listening on `listen` if given.
pub fn network(
    listen: Option<u16>,
) -> anyhow::Result<(Network, tokio::sync::mpsc::Receiver<Inbound>)> {
    let listen =
        listen.map(|p| format!("/ip4/127.0.0.1/tcp/{p}").parse().unwrap()).into_iter().collect();
    Ok(Network::spawn(NetConfig {
        keypair: identity::Keypair::generate_ed25519(),
        listen,
        bootstrap: Vec::new(),
        request_timeout: Duration::from_secs(30),
        nat: Default::default(),
    })?)
}

/// A running node.
pub struct Served {
    pub peer: PeerId,
    pub addr: Multiaddr,
    pub operator: Eip712Signer,
    pub net: Network,
    pub server: Arc<BlockServer>,
}

/// Starts a node serving `blocks` of the model as the operator `secret`, serving `admission`
/// free and everyone else against payment to `collector` (if any).
pub fn serve_blocks(
    manifest: &ModelManifest,
    runtime: &Runtime,
    blocks: std::ops::RangeInclusive<usize>,
    admission: Admission,
    collector: Option<Arc<Collector>>,
    secret: B256,
) -> anyhow::Result<Served> {
    serve_cheating(manifest, runtime, blocks, admission, collector, secret, None)
}

/// [`serve_blocks`], with a node that makes some answers wrong on purpose (`cheat`).
pub fn serve_cheating(
    manifest: &ModelManifest,
    runtime: &Runtime,
    blocks: std::ops::RangeInclusive<usize>,
    admission: Admission,
    collector: Option<Arc<Collector>>,
    secret: B256,
    cheat: Option<Cheat>,
) -> anyhow::Result<Served> {
    let node = Node { admission, collector, secret, cheat, limits: ServeLimits::default() };
    node.serve(manifest, runtime, blocks)
}

/// [`serve_blocks`] (free for `admission`, no payments), with `limits` on what peers may use.
pub fn serve_limited(
    manifest: &ModelManifest,
    runtime: &Runtime,
    blocks: std::ops::RangeInclusive<usize>,
    admission: Admission,
    secret: B256,
    limits: ServeLimits,
) -> anyhow::Result<Served> {
    let node = Node { admission, collector: None, secret, cheat: None, limits };
    node.serve(manifest, runtime, blocks)
}

/// How a test node is set up.
struct Node {
    admission: Admission,
    collector: Option<Arc<Collector>>,
    secret: B256,
    cheat: Option<Cheat>,
    limits: ServeLimits,
}

impl Node {
    fn serve(
        self,
        manifest: &ModelManifest,
        runtime: &Runtime,
        blocks: std::ops::RangeInclusive<usize>,
    ) -> anyhow::Result<Served> {
        let Node { admission, collector, secret, cheat, limits } = self;
        let port = free_port();
        let (net, inbound) = network(Some(port))?;
        let operator = Eip712Signer::from_bytes(&secret)?;
        let blocks: Vec<Arc<BlockRunner>> = blocks
            .map(|i| BlockRunner::load(manifest, i, runtime, CacheLimits::default()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let metrics = infergrid::telemetry::NodeMetrics::new(None);
        let server = Arc::new(BlockServer {
            model_id: manifest.id().0,
            first_block: blocks[0].spec().index as u16,
            batcher: Batcher::start(blocks.clone(), 32, metrics.clone()),
            blocks,
            attester: Attester {
                signer: operator.clone(),
                domain: validation_domain(31337, alloy::primitives::Address::repeat_byte(7)),
                clock: NODE_EPOCHS,
                time: ChainClock::default(),
            },
            admission,
            collector,
            decode_ms: Default::default(),
            load: LoadGuard::new(limits),
            cheat,
            metrics,
            answer_delay: Default::default(),
            registered: Default::default(),
        });
        tokio::spawn(server.clone().run(inbound));
        let peer = net.local_peer();
        let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}").parse()?;
        Ok(Served { peer, addr, operator, net, server })
    }
}
