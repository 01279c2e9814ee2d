//! The swarm: one [`NetworkBehaviour`] of small behaviours, driven by one event loop that
//! talks to the rest of the node through channels.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use futures::StreamExt;
use libp2p::metrics::{Metrics, Recorder, Registry};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, gossipsub,
    identify, identity, kad, memory_connection_limits, noise, ping, relay, tcp, yamux,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::codec::{CodecError, InferRequest, InferResponse};
use super::hold::{Holds, MOST_HELD};
use super::nat::{self, Paths, Reachability, Reservations};
use super::outbox::{Outbox, StepSize};
use super::pieces::{
    PIECES_PROTOCOL, PieceRequest, PieceResponse, PieceSource, PiecesCodec, Refusal,
};
use super::protocol::{INFER_PROTOCOL, InferCodec, RETIRED_INFER_PROTOCOLS};
use super::steps::{STEPS_PROTOCOL, SealedAnswers, Steps, StepsCodec, StepsSent};
use crate::validate::SealMemo;

mod steps;

use steps::StepReply;

const ANNOUNCE_TOPIC: &str = "infergrid/announce/1";
/// Fault evidence (`validation.md`, "Evidence exchange"). Every peer relays it, so validators
/// that are connected only through nodes still reach each other.
const EVIDENCE_TOPIC: &str = "infergrid/evidence/3";
/// Largest gossip message: fault evidence carries a session's hidden states.
pub const MAX_GOSSIP_BYTES: usize = 16 << 20;

/// What a node tells the swarm about itself every few seconds (gossipsub).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub peer_id: String,
    pub model_id: String,
    pub first_block: u16,
    pub last_block: u16,
    /// Sessions in its KV cache.
    pub active_sessions: usize,
    /// KV-cache tokens it can still take.
    pub free_cache_tokens: usize,
    /// Measured milliseconds for one decode step through its span.
    pub compute_ms_per_token: f64,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Refuses connections past [`CONNECTION_LIMITS`]: a stranger cannot exhaust sockets.
    limits: connection_limits::Behaviour,
    /// Refuses new connections while the process uses most of the machine's memory.
    memory: memory_connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    infer: request_response::Behaviour<InferCodec>,
    /// Several steps in one message (`/infergrid/steps/2`).
    steps: request_response::Behaviour<StepsCodec>,
    pieces: request_response::Behaviour<PiecesCodec>,
    /// Reservations on relays and connections through them, for a peer behind NAT.
    relay_client: relay::client::Behaviour,
    /// The relay service, for active registered nodes only (`NatConfig::relay_service`).
    relay: Toggle<relay::Behaviour>,
    /// Hole punching: a relayed connection upgraded to a direct one.
    dcutr: dcutr::Behaviour,
    /// Whether others can dial this peer; and dialing others back, for them.
    autonat: autonat::v1::Behaviour,
}

/// Incoming connections still handshaking; more are refused.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Incoming connections established; more are refused.
pub const MAX_ESTABLISHED_INCOMING: u32 = 1024;
/// Connections with one peer (either direction); more are refused.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// New connections are refused while the process's memory exceeds this share of the
/// machine's.
pub const MAX_MEMORY_FRACTION: f64 = 0.9;
/// Inbound request streams one connection may have open at once (libp2p's default, stated):
/// more are reset before anything is read from them.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Messages of steps (`/infergrid/steps/2`) answered at once per connection: an honest client
/// keeps one in flight per node, and each may be 64 MiB.
pub const MAX_STEP_MESSAGES_PER_CONNECTION: usize = 4;
/// Pieces a seeder reads from disk or is still writing out, at once; more requests are
/// answered `Busy`. With [`MAX_PIECE_BYTES`](crate::model::pieces::MAX_PIECE_BYTES) this
/// bounds what pieces in flight hold in memory (64 MiB).
pub const MAX_PIECE_READS: usize = 16;
/// Piece requests one connection may have open at once: a fetcher asks 4 of a peer.
const MAX_PIECE_STREAMS_PER_CONNECTION: usize = 8;
/// How long a piece or manifest request may take before it fails.
const PIECE_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed network operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    #[error("cannot start the network: {0}")]
    Start(String),
    #[error("request to {peer} failed: {reason}")]
    Request {
        peer: PeerId,
        reason: String,
        /// Whether the peer may have run the request and its answer was lost on the way (a
        /// timeout, a connection or stream closed), as opposed to never sent (a failed dial)
        /// or answered with bytes that do not decode (the peer's fault).
        answer_lost: bool,
    },
    /// The peer does not speak this protocol version: not a failure of the peer.
    #[error("{peer} does not speak {protocol} (another protocol version)")]
    Unsupported { peer: PeerId, protocol: String },
    #[error("the network task has stopped")]
    Stopped,
}

/// Identify's `protocolVersion`: the swarm a peer belongs to. Peers announcing another are
/// disconnected and kept out of the DHT.
pub const SWARM_ID: &str = "/infergrid/id/1";

/// A node's answer to one step; one that came in a message of several Ok answers carries
/// what checking it against the message's seal takes (`wire.md`, "Several answers, one
/// signature"). Its signature field holds its own signature, or the message's seal.
#[derive(Debug, Clone)]
pub struct StepAnswer {
    pub response: InferResponse,
    pub in_message: Option<InMessage>,
}

/// An Ok answer signed together with the others of its message.
#[derive(Debug, Clone)]
pub struct InMessage {
    /// The proof of the answer's leaf under the root the seal signs.
    pub proof: Vec<B256>,
    /// keccak-256 of the output's payload bytes, hashed once for the proof.
    pub output_hash: B256,
    /// Shared by the message's answers: the seal's signer, once one of them is checked.
    pub memo: Arc<SealMemo>,
}

impl StepAnswer {
    /// An answer signed on its own.
    pub fn alone(response: InferResponse) -> Self {
        Self { response, in_message: None }
    }
}

/// Something the network delivers to the node.
#[derive(Debug)]
pub enum Inbound {
    /// A peer's request; answer through `reply` (dropping it answers nothing).
    Request {
        peer: PeerId,
        request: Result<InferRequest, CodecError>,
        reply: oneshot::Sender<InferResponse>,
    },
    /// A peer's message of several steps (`/infergrid/steps/2`); answer all of them, in
    /// order and signed once, through `reply` (dropping it answers every step `Internal`).
    Steps { peer: PeerId, steps: Steps, reply: oneshot::Sender<SealedAnswers> },
    /// A peer's load announcement.
    Announcement { from: PeerId, announcement: Announcement },
    /// Fault evidence published by `from` (unchecked bytes: check them against the chain).
    Evidence { from: PeerId, evidence: Vec<u8> },
}

enum Command {
    Shutdown,
    Dial {
        peer: PeerId,
        addr: Multiaddr,
    },
    Request {
        peer: PeerId,
        request: InferRequest,
        reply: StepReply,
    },
    /// A step that may travel with others (see [`Network::step`]).
    Step {
        peer: PeerId,
        request: InferRequest,
        /// The gateway's own hash of `request`, for the proofs of a message's answers.
        request_hash: B256,
        size: StepSize,
        reply: StepReply,
    },
    Respond {
        channel: request_response::ResponseChannel<InferResponse>,
        response: InferResponse,
    },
    /// The answers to a message of steps, in its order.
    RespondSteps {
        channel: request_response::ResponseChannel<SealedAnswers>,
        answers: SealedAnswers,
    },
    Provide {
        key: Vec<u8>,
    },
    FindProviders {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Publish {
        announcement: Announcement,
    },
    PublishEvidence {
        evidence: Vec<u8>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Seed {
        source: Arc<dyn PieceSource>,
    },
    AskPieces {
        peer: PeerId,
        request: PieceRequest,
        reply: oneshot::Sender<Result<PieceResponse, NetError>>,
    },
    RespondPieces {
        request_id: request_response::InboundRequestId,
        channel: request_response::ResponseChannel<PieceResponse>,
        response: PieceResponse,
        /// Held until the answer is written out, so pieces read but not yet sent count
        /// against [`MAX_PIECE_READS`]: a peer that never reads cannot pile them up.
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
}

/// Smoothed ping round-trip times, per peer.
#[derive(Debug, Default)]
pub struct PeerRtts(Mutex<HashMap<PeerId, f64>>);

impl PeerRtts {
    /// Exponential moving average of the RTT in milliseconds.
    pub fn get(&self, peer: &PeerId) -> Option<f64> {
        self.0.lock().expect("rtt lock").get(peer).copied()
    }

    fn record(&self, peer: PeerId, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1e3;
        let mut map = self.0.lock().expect("rtt lock");
        let avg = map.entry(peer).or_insert(ms);
        *avg = 0.8 * *avg + 0.2 * ms;
    }
}

/// Handle to the network task.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    local_peer: PeerId,
    rtts: Arc<PeerRtts>,
    paths: Arc<Paths>,
    reachability: tokio::sync::watch::Receiver<Reachability>,
    connected: Arc<AtomicUsize>,
    metrics: Arc<Registry>,
    steps_sent: StepsSent,
}

/// How to start the network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub keypair: identity::Keypair,
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, each `/…/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    pub request_timeout: Duration,
    /// Relays and the relay service (`wire.md`, "Addresses and relays").
    pub nat: NatConfig,
}

impl NatConfig {
    /// Whether this peer asks others whether it is reachable (AutoNAT as a client): only if
    /// it acts on the answer.
    fn probes(&self) -> bool {
        !self.relays.is_empty() || (self.relay_service.is_some() && self.external.is_empty())
    }
}

/// How a peer deals with NAT: the relays it may be reached through, and the relay service it
/// offers.
#[derive(Debug, Clone, Default)]
pub struct NatConfig {
    /// Relays (`/…/p2p/<relay>`) to reserve a slot on when AutoNAT finds this peer not
    /// reachable at its own addresses.
    pub relays: Vec<Multiaddr>,
    /// Reserve on `relays` at once, without waiting for AutoNAT.
    pub force_private: bool,
    /// Run the relay service.
    pub relay_service: Option<nat::RelayService>,
    /// Addresses others reach this peer at, known without AutoNAT (a relay's public address):
    /// a relay serves only once it has one.
    pub external: Vec<Multiaddr>,
}

impl Network {
    /// Starts the swarm task; inbound requests and announcements arrive on the receiver.
    pub fn spawn(config: NetConfig) -> Result<(Network, mpsc::Receiver<Inbound>), NetError> {
        let mut registry = Registry::default();
        let swarm = build_swarm(&config, &mut registry).map_err(NetError::Start)?;
        let metrics = Metrics::new(&mut registry);
        let steps_sent = StepsSent::registered(&mut registry);
        let local_peer = *swarm.local_peer_id();
        let (commands, command_rx) = mpsc::channel(256);
        let (inbound_tx, inbound) = mpsc::channel(256);
        let rtts = Arc::new(PeerRtts::default());
        let paths = Arc::new(Paths::default());
        let connected = Arc::new(AtomicUsize::new(0));
        let reservations =
            Reservations::new(config.nat.relays.clone(), config.nat.force_private, local_peer);
        let reachability = reservations.state.subscribe();
        let mut event_loop = EventLoop {
            swarm,
            commands: command_rx,
            respond: commands.clone(),
            inbound: inbound_tx,
            rtts: rtts.clone(),
            paths: paths.clone(),
            reservations,
            unanswered: UnansweredProbes::default(),
            connected: connected.clone(),
            metrics,
            pending: HashMap::new(),
            pending_steps: HashMap::new(),
            outbox: Outbox::default(),
            steps_peers: HashSet::new(),
            steps_sent: steps_sent.clone(),
            answering: HashMap::new(),
            held: Holds::default(),
            pending_pieces: HashMap::new(),
            providers: HashMap::new(),
            seed: None,
            piece_reads: Arc::new(tokio::sync::Semaphore::new(MAX_PIECE_READS)),
            pieces_sending: HashMap::new(),
        };
        event_loop.start(&config).map_err(NetError::Start)?;
        tokio::spawn(event_loop.run());
        let metrics = Arc::new(registry);
        let network = Network {
            commands,
            local_peer,
            rtts,
            paths,
            reachability,
            connected,
            metrics,
            steps_sent,
        };
        Ok((network, inbound))
    }

    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    /// RTTs measured by ping.
    pub fn rtts(&self) -> &PeerRtts {
        &self.rtts
    }

    /// How each connected peer is reached: directly or only through a relay.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Whether others can dial this peer, and its addresses through relays; changes as
    /// AutoNAT probes and reservations come and go.
    pub fn reachability(&self) -> tokio::sync::watch::Receiver<Reachability> {
        self.reachability.clone()
    }

    /// libp2p's own metrics (`libp2p_*`: bytes in and out by protocol stack, connections,
    /// ping RTTs, identify, Kademlia and gossipsub events), recorded by the event loop.
    pub fn metrics(&self) -> Arc<Registry> {
        self.metrics.clone()
    }

    /// Messages of steps sent so far, and the steps they carried (see [`Network::step`]).
    pub fn steps_sent(&self) -> (u64, u64) {
        self.steps_sent.read()
    }

    /// Peers with at least one open connection now.
    pub fn connected_peers(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands.send(command).await.map_err(|_| NetError::Stopped)
    }

    /// Remembers `addr` for `peer` and connects.
    pub async fn dial(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::Dial { peer, addr }).await
    }

    /// Sends one inference request and waits for the answer.
    pub async fn request(
        &self,
        peer: PeerId,
        request: InferRequest,
    ) -> Result<InferResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, request, reply }).await?;
        Ok(rx.await.map_err(|_| NetError::Stopped)??.response)
    }

    /// Sends one step of a session and waits for its answer, as [`Network::request`] does,
    /// but lets it travel with the steps of other sessions to the same peer in one message
    /// (`/infergrid/steps/2`, `wire.md`), when the peer speaks that protocol: while a message
    /// of steps to the peer is being answered, the next waits for the steps queued meanwhile.
    /// `answer_bytes` is the size the answer is expected to have; a step too long (a prefill
    /// of more than 17 positions) or too large to share a message goes on its own. An answer
    /// that came in a message of several carries its proof under the message's signature.
    pub async fn step(
        &self,
        peer: PeerId,
        request: InferRequest,
        request_hash: B256,
        answer_bytes: usize,
    ) -> Result<StepAnswer, NetError> {
        let size = StepSize {
            positions: request.payload.positions(),
            request: request.encoded_len(),
            answer: answer_bytes,
        };
        if !size.shares() {
            return self.request(peer, request).await.map(StepAnswer::alone);
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Step { peer, request, request_hash, size, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers other peers' manifest and piece requests from `source` from now on (until
    /// then, and on a gateway or validator, they are refused `Unavailable`).
    pub async fn seed(&self, source: Arc<dyn PieceSource>) -> Result<(), NetError> {
        self.send(Command::Seed { source }).await
    }

    /// Asks `peer` for a manifest or a piece (`/infergrid/pieces/1`).
    pub async fn ask_pieces(
        &self,
        peer: PeerId,
        request: PieceRequest,
    ) -> Result<PieceResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::AskPieces { peer, request, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Announces on the DHT that this node provides `key`.
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Provide { key }).await
    }

    /// Peers the DHT knows to provide `key`.
    pub async fn find_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FindProviders { key, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Publishes a load announcement.
    pub async fn publish(&self, announcement: Announcement) -> Result<(), NetError> {
        self.send(Command::Publish { announcement }).await
    }

    /// Publishes fault evidence to every validator (relayed by every peer).
    pub async fn publish_evidence(&self, evidence: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::PublishEvidence { evidence }).await
    }

    /// Stops the swarm: connections close and peers see this node go away.
    pub async fn shutdown(&self) -> Result<(), NetError> {
        self.send(Command::Shutdown).await
    }

    /// Addresses the swarm listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ListenAddrs { reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }
}

/// The DHT key of one block of one model.
pub fn block_key(model_id: &[u8; 32], block: u16) -> Vec<u8> {
    let mut key = b"infergrid/block/".to_vec();
    key.extend_from_slice(model_id);
    key.extend_from_slice(&block.to_be_bytes());
    key
}

/// The DHT key of the files of one block of one model: published by every peer that holds
/// them and seeds them (`block_key` says it serves the block's inference).
pub fn files_key(model_id: &[u8; 32], block: u16) -> Vec<u8> {
    let mut key = b"infergrid/files/".to_vec();
    key.extend_from_slice(model_id);
    key.extend_from_slice(&block.to_be_bytes());
    key
}

fn build_swarm(config: &NetConfig, registry: &mut Registry) -> Result<Swarm<Behaviour>, String> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| e.to_string())?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| e.to_string())?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, relay_client| {
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer,
                kad::store::MemoryStore::new(peer),
                kad::Config::new(StreamProtocol::new("/infergrid/kad/1")),
            );
            // Loopback and private addresses would keep auto mode in client mode.
            kad.set_mode(Some(kad::Mode::Server));
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(gossipsub::ValidationMode::Strict)
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
                ),
                memory: memory_connection_limits::Behaviour::with_max_percentage(
                    MAX_MEMORY_FRACTION,
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    SWARM_ID.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(1)),
                ),
                kad,
                gossipsub,
                pieces: request_response::Behaviour::with_codec(
                    PiecesCodec,
                    [(PIECES_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(PIECE_TIMEOUT)
                        .with_max_concurrent_streams(MAX_PIECE_STREAMS_PER_CONNECTION),
                ),
                infer: request_response::Behaviour::with_codec(
                    InferCodec,
                    std::iter::once((INFER_PROTOCOL, ProtocolSupport::Full)).chain(
                        RETIRED_INFER_PROTOCOLS.map(|retired| (retired, ProtocolSupport::Inbound)),
                    ),
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout)
                        .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION),
                ),
                steps: request_response::Behaviour::with_codec(
                    StepsCodec,
                    [(STEPS_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout)
                        .with_max_concurrent_streams(MAX_STEP_MESSAGES_PER_CONNECTION),
                ),
                relay_client,
                relay: config
                    .nat
                    .relay_service
                    .as_ref()
                    .map(|service| relay::Behaviour::new(peer, nat::relay_config(service)))
                    .into(),
                dcutr: dcutr::Behaviour::new(peer),
                autonat: autonat::v1::Behaviour::new(
                    peer,
                    nat::autonat_config(config.nat.probes()),
                ),
            })
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .with_connection_timeout(nat::DIAL_TIMEOUT)
        .build();
    Ok(swarm)
}

/// How long a peer with relays waits on AutoNAT before it says, at INFO, that it still has no
/// verdict (and again each time as long).
const VERDICT_PATIENCE: Duration = Duration::from_secs(30);

/// AutoNAT probes of this peer that got no answer since its last verdict, and the last one's
/// error: what a peer stuck without a verdict tells its operator.
#[derive(Debug, Default)]
struct UnansweredProbes {
    count: u32,
    last: Option<String>,
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    respond: mpsc::Sender<Command>,
    inbound: mpsc::Sender<Inbound>,
    rtts: Arc<PeerRtts>,
    paths: Arc<Paths>,
    reservations: Reservations,
    unanswered: UnansweredProbes,
    connected: Arc<AtomicUsize>,
    metrics: Metrics,
    /// Requests in flight: the peer asked, and where its answer goes.
    pending: HashMap<OutboundRequestId, (PeerId, StepReply)>,
    /// Messages of steps in flight: the peer asked, and each step's request hash and where
    /// its answer goes.
    pending_steps: HashMap<OutboundRequestId, (PeerId, Vec<(B256, StepReply)>)>,
    /// Steps waiting to go together, per peer.
    outbox: Outbox<(InferRequest, B256, StepReply)>,
    /// Connected peers whose identify lists [`STEPS_PROTOCOL`].
    steps_peers: HashSet<PeerId>,
    steps_sent: StepsSent,
    /// Inference requests of each peer being answered.
    answering: HashMap<PeerId, usize>,
    /// New requests to a peer whose relayed connections are being let go for a direct one,
    /// held until those close (see `drop_superseded`).
    held: Holds<HeldRequest>,
    pending_pieces: HashMap<OutboundRequestId, oneshot::Sender<Result<PieceResponse, NetError>>>,
    /// What this node seeds, once it says so.
    seed: Option<Arc<dyn PieceSource>>,
    piece_reads: Arc<tokio::sync::Semaphore>,
    /// The read permits of answers being written out.
    pieces_sending: HashMap<request_response::InboundRequestId, tokio::sync::OwnedSemaphorePermit>,
    providers: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, Vec<PeerId>)>,
}

/// An inference request not sent yet, and where its answer goes.
type HeldRequest = (InferRequest, StepReply);

impl EventLoop {
    fn start(&mut self, config: &NetConfig) -> Result<(), String> {
        for addr in &config.listen {
            self.swarm.listen_on(addr.clone()).map_err(|e| format!("listen on {addr}: {e}"))?;
        }
        for topic in [ANNOUNCE_TOPIC, EVIDENCE_TOPIC] {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .map_err(|e| e.to_string())?;
        }
        for addr in config.bootstrap.iter().chain(&config.nat.relays) {
            if let Some(peer) = peer_of(addr) {
                self.dial(peer, addr.clone());
                if config.nat.probes() {
                    self.swarm.behaviour_mut().autonat.add_server(peer, Some(addr.clone()));
                }
            }
        }
        for address in &config.nat.external {
            self.swarm.add_external_address(address.clone());
        }
        self.reserve();
        Ok(())
    }

    /// Asks relays for the reservations still wanted (none while this peer is reachable).
    fn reserve(&mut self) {
        while let Some((relay, circuit)) = self.reservations.next_target(Instant::now()) {
            tracing::info!(%relay, "not reachable directly: reserving a slot on the relay");
            match self.swarm.listen_on(circuit) {
                Ok(listener) => self.reservations.asked(listener, relay),
                Err(e) => {
                    tracing::warn!(%relay, "cannot reserve on the relay: {e}");
                    return;
                }
            }
        }
    }

    /// Says (every [`VERDICT_PATIENCE`]) when a peer with relays has no AutoNAT verdict yet, so
    /// reserves nothing and registers no relayed address, and why its probes went unanswered.
    fn tell_awaiting(&self) {
        if !self.reservations.awaiting_verdict() {
            return;
        }
        tracing::info!(
            unanswered = self.unanswered.count,
            last = self.unanswered.last.as_deref().unwrap_or("-"),
            "AutoNAT: no verdict yet, so no relay reservation (probes unanswered)"
        );
    }

    /// Lets the relayed connections to `peer` that this peer dialed go once a direct one
    /// exists and no inference request is in flight either way (requests pick a connection
    /// in turn, and should all take the direct path); new requests wait meanwhile (`hold`),
    /// until every relayed connection is gone. Only the dialing side closes one, so that a
    /// request on its way in is never cut off by the side that cannot see it coming.
    fn drop_superseded(&mut self, peer: PeerId) {
        // Called on every answer: the common case, no relayed connection beside a direct
        // one, ends here before the scan of the requests in flight.
        if !self.paths.draining(&peer) {
            self.release_held(peer);
            return;
        }
        if self.held.is_closing(&peer) {
            return;
        }
        let superseded = self.paths.superseded(&peer);
        let answering = self.answering.get(&peer).is_some_and(|n| *n > 0);
        let asking = self.outbox.is_busy(&peer) || self.pending.values().any(|(p, _)| *p == peer);
        if superseded.is_empty() || answering || asking {
            return;
        }
        for connection in &superseded {
            tracing::debug!(%peer, "direct connection up: closing the relayed one");
            self.swarm.close_connection(*connection);
        }
        self.held.closing(peer, superseded, Instant::now());
    }

    /// Sends an inference request, or holds it while `peer`'s relayed connections drain.
    fn send_request(&mut self, peer: PeerId, request: InferRequest, reply: StepReply) {
        // Requests held too long go first, in order.
        self.release_overdue();
        let item = (request, reply);
        let item = if self.paths.draining(&peer) {
            self.held.hold(peer, item, Instant::now())
        } else {
            Some(item)
        };
        match item {
            Some((request, reply)) => {
                let id = self.swarm.behaviour_mut().infer.send_request(&peer, Ok(request));
                self.pending.insert(id, (peer, reply));
            }
            None => self.drop_superseded(peer),
        }
    }

    /// Sends the requests held for `peer`.
    fn release_held(&mut self, peer: PeerId) {
        for (request, reply) in self.held.release(&peer) {
            let id = self.swarm.behaviour_mut().infer.send_request(&peer, Ok(request));
            self.pending.insert(id, (peer, reply));
        }
    }

    /// Sends the requests held too long, on whatever connections their peers have.
    fn release_overdue(&mut self) {
        if self.held.is_empty() {
            return;
        }
        for (peer, held) in self.held.overdue(Instant::now()) {
            tracing::debug!(%peer, "relayed connection still busy: sending on any connection");
            for (request, reply) in held {
                let id = self.swarm.behaviour_mut().infer.send_request(&peer, Ok(request));
                self.pending.insert(id, (peer, reply));
            }
        }
    }

    fn dial(&mut self, peer: PeerId, addr: Multiaddr) {
        self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        self.swarm.add_peer_address(peer, addr);
        let _ = self.swarm.dial(peer);
    }

    async fn run(mut self) {
        // Reservations lost or refused are asked again, on the next relay, at this pace.
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        let mut overdue = tokio::time::interval(MOST_HELD / 4);
        overdue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let patience = tokio::time::Instant::now() + VERDICT_PATIENCE;
        let mut awaiting = tokio::time::interval_at(patience, VERDICT_PATIENCE);
        loop {
            let lingering = self.outbox.next_deadline();
            tokio::select! {
                _ = retry.tick() => self.reserve(),
                _ = tokio::time::sleep_until(lingering.unwrap_or_else(Instant::now).into()),
                    if lingering.is_some() => self.send_lingering(),
                _ = awaiting.tick() => self.tell_awaiting(),
                _ = overdue.tick(), if !self.held.is_empty() => self.release_overdue(),
                event = self.swarm.select_next_some() => self.on_event(event).await,
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => return,
                    Some(command) => self.on_command(command),
                },
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::Dial { peer, addr } => self.dial(peer, addr),
            Command::Request { peer, request, reply } => self.send_request(peer, request, reply),
            Command::Step { peer, request, request_hash, size, reply } => {
                self.send_step(peer, request, request_hash, size, reply)
            }
            Command::Respond { channel, response } => {
                let _ = behaviour.infer.send_response(channel, response);
            }
            Command::RespondSteps { channel, answers } => {
                let _ = behaviour.steps.send_response(channel, answers);
            }
            Command::Provide { key } => {
                let _ = behaviour.kad.start_providing(kad::RecordKey::new(&key));
            }
            Command::FindProviders { key, reply } => {
                let id = behaviour.kad.get_providers(kad::RecordKey::new(&key));
                self.providers.insert(id, (reply, Vec::new()));
            }
            Command::Publish { announcement } => {
                let data = serde_json::to_vec(&announcement).expect("serializable");
                // No subscribed peer yet is not an error: the next announcement will reach them.
                let _ =
                    behaviour.gossipsub.publish(gossipsub::IdentTopic::new(ANNOUNCE_TOPIC), data);
            }
            Command::PublishEvidence { evidence } => {
                // Published again while its vote runs, so a peer missing now is not lost.
                let _ = behaviour
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(EVIDENCE_TOPIC), evidence);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Seed { source } => self.seed = Some(source),
            Command::AskPieces { peer, request, reply } => {
                let id = behaviour.pieces.send_request(&peer, Ok(request));
                self.pending_pieces.insert(id, reply);
            }
            Command::RespondPieces { request_id, channel, response, permit } => {
                if behaviour.pieces.send_response(channel, response).is_ok()
                    && let Some(permit) = permit
                {
                    self.pieces_sending.insert(request_id, permit);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn record(&self, event: &SwarmEvent<BehaviourEvent>) {
        self.metrics.record(event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.metrics.record(e),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                tracing::debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                tracing::debug!(peer = %peer_id, ?cause, "disconnected");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                tracing::debug!(address = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
            }
            _ => {}
        }
    }

    async fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.record(&event);
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                // Peers, not connections: the first connection to a peer adds it, its last
                // removes it.
                if num_established.get() == 1 {
                    self.connected.fetch_add(1, Ordering::Relaxed);
                }
                let relayed = endpoint.is_relayed();
                self.paths.opened(peer_id, connection_id, relayed, endpoint.is_dialer());
                if relayed {
                    tracing::info!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected through a relay");
                } else {
                    self.held.direct_again(&peer_id);
                    self.drop_superseded(peer_id);
                }
                self.reserve();
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                if num_established == 0 {
                    self.connected.fetch_sub(1, Ordering::Relaxed);
                    // It may come back another version.
                    self.steps_peers.remove(&peer_id);
                    self.held.direct_again(&peer_id);
                }
                self.paths.closed(peer_id, connection_id);
                self.held.closed(&peer_id, connection_id);
                // Held requests go once the relayed connections being closed are gone, and
                // on the direct path if one is left; if new relayed ones opened meanwhile,
                // those are let go in turn.
                if !self.held.is_closing(&peer_id) {
                    self.drop_superseded(peer_id);
                }
            }
            SwarmEvent::NewListenAddr { listener_id, address } if nat::is_relayed(&address) => {
                tracing::info!(%address, "reachable through the relay");
                self.reservations.on_listening(listener_id, Instant::now());
            }
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                if addresses.iter().any(nat::is_relayed) || reason.is_err() {
                    tracing::warn!(?addresses, ?reason, "a listener closed");
                }
                self.reservations.on_closed(listener_id, Instant::now());
                self.reserve();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::v1::Event::StatusChanged {
                new,
                ..
            })) => {
                let (status, public) = match new {
                    autonat::v1::NatStatus::Public(address) => {
                        tracing::info!(%address, "AutoNAT: reachable at this address");
                        (nat::Status::Public, Some(address))
                    }
                    autonat::v1::NatStatus::Private => {
                        tracing::info!("AutoNAT: not reachable at this peer's own addresses");
                        (nat::Status::Private, None)
                    }
                    autonat::v1::NatStatus::Unknown => (nat::Status::Unknown, None),
                };
                self.unanswered = UnansweredProbes::default();
                self.reservations.on_status(status, public);
                self.reserve();
            }
            // Only requests that got no answer: no server or no address to ask is not
            // unanswered, and an answer counts towards the verdict.
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::v1::Event::OutboundProbe(
                autonat::v1::OutboundProbeEvent::Error {
                    peer,
                    error: autonat::v1::OutboundProbeError::OutboundRequest(failure),
                    ..
                },
            ))) => {
                tracing::debug!(?peer, ?failure, "AutoNAT: probe unanswered");
                self.unanswered.count += 1;
                self.unanswered.last = Some(failure.to_string());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punched: connected directly"),
                Err(e) => tracing::info!(
                    peer = %remote_peer_id,
                    "hole punching failed, staying on the relay: {e}"
                ),
            },
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. },
            )) => {
                tracing::debug!(relay = %relay_peer_id, renewal, "relay reservation accepted");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Infer(request_response::Event::Message {
                peer,
                message,
                ..
            })) => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        *self.answering.entry(peer).or_default() += 1;
                        let (reply, answer) = oneshot::channel();
                        let respond = self.respond.clone();
                        // The node answers asynchronously; the answer comes back as a command.
                        tokio::spawn(async move {
                            if let Ok(response) = answer.await {
                                let _ = respond.send(Command::Respond { channel, response }).await;
                            }
                        });
                        let _ = self.inbound.send(Inbound::Request { peer, request, reply }).await;
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some((_, reply)) = self.pending.remove(&request_id) {
                            let _ = reply.send(Ok(StepAnswer::alone(response)));
                        }
                        self.drop_superseded(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Infer(
                request_response::Event::OutboundFailure { peer, request_id, error, .. },
            )) => {
                if let Some((_, reply)) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(outbound_error(peer, error, &INFER_PROTOCOL)));
                }
                self.drop_superseded(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Infer(
                request_response::Event::ResponseSent { peer, .. }
                | request_response::Event::InboundFailure { peer, .. },
            )) => self.answered(peer),
            SwarmEvent::Behaviour(BehaviourEvent::Steps(event)) => self.on_steps(event).await,
            SwarmEvent::Behaviour(BehaviourEvent::Pieces(event)) => self.on_pieces(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.rtts.record(peer, rtt);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // A peer of another network (another libp2p application, or a swarm this
                // version cannot work with) is not added to the DHT, and is let go; no ban,
                // as it did nothing wrong (`wire.md`, "Versions").
                if info.protocol_version != SWARM_ID {
                    tracing::debug!(
                        peer = %peer_id, theirs = info.protocol_version,
                        "not of this swarm ({SWARM_ID}): disconnecting"
                    );
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if info.protocols.contains(&STEPS_PROTOCOL) {
                    self.steps_peers.insert(peer_id);
                } else {
                    self.steps_peers.remove(&peer_id);
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                let Some(from) = message.source else { return };
                if message.topic == gossipsub::IdentTopic::new(EVIDENCE_TOPIC).hash() {
                    let evidence = message.data;
                    self.deliver_gossip(Inbound::Evidence { from, evidence });
                } else if let Ok(announcement) =
                    serde_json::from_slice::<Announcement>(&message.data)
                {
                    self.deliver_gossip(Inbound::Announcement { from, announcement });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                if let Some((_, found)) = self.providers.get_mut(&id)
                    && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
                {
                    found.extend(providers);
                }
                if step.last
                    && let Some((reply, found)) = self.providers.remove(&id)
                {
                    let _ = reply.send(found);
                }
            }
            _ => {}
        }
    }
}

impl EventLoop {
    /// A request from `peer` was answered (or its stream failed).
    fn answered(&mut self, peer: PeerId) {
        if let Some(count) = self.answering.get_mut(&peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.answering.remove(&peer);
            }
        }
        self.drop_superseded(peer);
    }

    /// Hands a gossip message to the node if it keeps up, else drops it: announcements come
    /// again every few seconds and evidence while its vote runs, and a reader that is slow
    /// (or, on a fetch's own network, absent) must not stall the swarm, whose timeouts and
    /// answers would then never arrive.
    fn deliver_gossip(&self, message: Inbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.inbound.try_send(message) {
            tracing::debug!("gossip dropped: the node is not keeping up");
        }
    }

    fn on_pieces(
        &mut self,
        event: request_response::Event<
            Result<PieceRequest, super::pieces::PiecesCodecError>,
            PieceResponse,
        >,
    ) {
        match event {
            request_response::Event::Message {
                message: request_response::Message::Request { request_id, request, channel },
                ..
            } => {
                let (seed, reads, respond) =
                    (self.seed.clone(), self.piece_reads.clone(), self.respond.clone());
                // Read off the event loop: a disk read must not hold up every other stream.
                tokio::spawn(async move {
                    let (response, permit) = match (request, seed, reads.try_acquire_owned()) {
                        (Err(e), _, _) => {
                            (PieceResponse::refused(Refusal::Malformed, e.to_string()), None)
                        }
                        (Ok(_), None, _) => (
                            PieceResponse::refused(
                                Refusal::Unavailable,
                                "this peer seeds no model",
                            ),
                            None,
                        ),
                        (Ok(_), _, Err(_)) => (
                            PieceResponse::refused(
                                Refusal::Busy,
                                format!("{MAX_PIECE_READS} pieces already being read or sent"),
                            ),
                            None,
                        ),
                        (Ok(request), Some(seed), Ok(permit)) => {
                            let answer = tokio::task::spawn_blocking(move || seed.answer(request));
                            let answer = answer.await.unwrap_or_else(|_| {
                                PieceResponse::refused(Refusal::Unavailable, "the read failed")
                            });
                            (answer, Some(permit))
                        }
                    };
                    let sending = Command::RespondPieces { request_id, channel, response, permit };
                    let _ = respond.send(sending).await;
                });
            }
            request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            } => {
                if let Some(reply) = self.pending_pieces.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(reply) = self.pending_pieces.remove(&request_id) {
                    let _ = reply.send(Err(outbound_error(peer, error, &PIECES_PROTOCOL)));
                }
            }
            request_response::Event::ResponseSent { request_id, .. }
            | request_response::Event::InboundFailure { request_id, .. } => {
                self.pieces_sending.remove(&request_id);
            }
        }
    }
}

/// A request that got no answer: a peer that does not speak `protocol` is told apart from
/// one that failed.
fn outbound_error(
    peer: PeerId,
    error: request_response::OutboundFailure,
    protocol: &StreamProtocol,
) -> NetError {
    match error {
        request_response::OutboundFailure::UnsupportedProtocols => {
            NetError::Unsupported { peer, protocol: protocol.to_string() }
        }
        other => NetError::Request {
            peer,
            answer_lost: match &other {
                request_response::OutboundFailure::Timeout
                | request_response::OutboundFailure::ConnectionClosed => true,
                request_response::OutboundFailure::Io(e) => {
                    e.kind() != std::io::ErrorKind::InvalidData
                }
                _ => false,
            },
            reason: other.to_string(),
        },
    }
}

impl NetError {
    /// Whether a request that failed this way may still have been run by the peer: its
    /// answer was lost (a timeout, a connection closed), not its delivery refused or its
    /// answer garbled.
    pub fn may_have_run(&self) -> bool {
        matches!(self, NetError::Request { answer_lost: true, .. })
    }
}

/// The peer id a multiaddr ends with (`…/p2p/<peer id>`).
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}
