mod cross_check;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::Instrument;

use super::TermsBook;
use super::hops::{HopClient, HopError};
use super::verify::SignatureCheck;
use crate::engine::{Activation, EngineError};
use crate::generate::TextModel;
use crate::net::Network;
use crate::net::codec::{Payload, StepKind};
use crate::pay::{Tab, Wallet};
use crate::route::{Candidate, CostModel, Hop, plan, unserved};
use crate::telemetry::GatewayMetrics;

/// How a step to a hop failed, for routing.
enum StepFailure {
    /// Fail over: the peer is unusable, or its answer failed the checks.
    Peer(String),
    /// Fail over: the peer speaks another protocol version (left out, not banned).
    Incompatible(String),
    /// Fail over: the peer answered unlike two nodes that agree (`--cross-check`); no
    /// honest node does, so it is left out for the rest of the run.
    Lied(String),
    /// The request itself is wrong: failing over would not help.
    Fatal(Box<EngineError>),
}

impl From<HopError> for StepFailure {
    fn from(e: HopError) -> Self {
        match e {
            HopError::Peer(reason) | HopError::SessionLost(reason) => StepFailure::Peer(reason),
            HopError::Incompatible(reason) => StepFailure::Incompatible(reason),
            HopError::Invalid(bad) => StepFailure::Peer(format!("invalid answer: {bad}")),
            HopError::Fatal(e) => StepFailure::Fatal(e),
        }
    }
}

/// What the gateway knows about the model it routes.
#[derive(Debug, Clone)]
pub struct RemoteModelConfig {
    pub model_id: [u8; 32],
    pub num_blocks: u16,
    pub context_length: usize,
    pub eos_ids: Vec<u32>,
    /// Failovers allowed within one step before giving up.
    pub max_failovers_per_step: usize,
    /// Width of the hidden states passed between blocks.
    pub hidden_size: usize,
    /// Width of the last block's output: the vocabulary for a decoder (logits), the hidden
    /// size for an encoder (token embeddings).
    pub output_width: usize,
}

/// A node failing a step, for reporting: the route that took over, or none.
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    pub failed_peer: PeerId,
    pub reason: String,
    /// The session's route after the failover; empty when no peer could take over and the
    /// step failed.
    pub replacement: Vec<Hop>,
    /// From the failure to the step's answer (replay included), or to giving up.
    pub stall: Duration,
}

/// Failovers the routing report keeps: enough to see a pattern, bounded for a gateway that
/// runs for months.
pub const KEPT_FAILOVERS: usize = 100;

/// A session's route and every input sent at every block boundary, so that any hop can be
/// rebuilt on another peer by replaying exactly the same steps.
#[derive(Debug, Default)]
struct SessionState {
    hops: Vec<Hop>,
    /// Each hop's witness (`--cross-check`), running every step it runs.
    witnesses: Vec<Option<Hop>>,
    /// Inputs at boundary `b` (the input of block `b`), in order: (position, payload).
    history: HashMap<u16, Vec<(u32, Payload)>>,
}

/// What the gateway reports about routing while it generates (read by `/healthz`).
#[derive(Debug, Clone, Default)]
pub struct RouteReport {
    /// The route of the step that ran last.
    pub route: Vec<Hop>,
    /// The latest failovers (at most [`KEPT_FAILOVERS`]), including failures no other peer
    /// could take over (an empty `replacement`).
    pub failovers: Vec<Failover>,
    /// Failovers since the gateway started.
    pub failovers_total: u64,
    /// What the gateway owes each node it paid, as of the last finished request.
    pub payments: Vec<Tab>,
    /// Whether hops are cross-checked against witnesses (`--cross-check`).
    pub cross_check: bool,
    /// Rounds of cross-checked steps whose two answers disagreed (each asked again).
    pub disputes_total: u64,
    /// Nodes caught answering unlike two agreeing answers, and banned.
    pub caught_total: u64,
}

/// What every session of a gateway shares: the paid, checked hop client with its bans, the
/// live directory and the routing report.
struct Router {
    hops: HopClient,
    config: RemoteModelConfig,
    candidates: Arc<Mutex<Vec<Candidate>>>,
    cost: CostModel,
    report: Arc<Mutex<RouteReport>>,
    metrics: Option<GatewayMetrics>,
    /// Whether every hop also runs on a witness (see `cross_check`).
    cross_check: bool,
}

impl Router {
    /// Whether `peer` is still in the live directory.
    fn routable(&self, peer: &PeerId) -> bool {
        self.candidates.lock().expect("candidates").iter().any(|c| c.peer == *peer)
    }

    /// One step to one hop through the paid and checked client, unless the node left the
    /// directory (jailed, unstaked or fallen below the minimum reputation mid-session: its
    /// answers are no longer trusted or paid for).
    async fn call_routable(
        &self,
        hop: &Hop,
        session: u64,
        position: u32,
        kind: StepKind,
        payload: &Payload,
    ) -> Result<Payload, StepFailure> {
        if !self.routable(&hop.peer) {
            return Err(StepFailure::Peer(
                "left the directory (jailed, unstaked or below the minimum reputation)".into(),
            ));
        }
        let answer = self.hops.call_async(hop, session, position, kind, payload.clone()).await?;
        Ok(answer.output)
    }
}

/// A [`TextModel`] whose blocks run on the swarm. [`RemoteModel::open`] gives each request
/// a model of its own over the same [`Router`], so requests generate concurrently: nothing
/// is locked across a step but the bans and the report, for an instant.
pub struct RemoteModel {
    router: Arc<Router>,
    sessions: HashMap<u64, SessionState>,
}

/// Most positions per prefill step: long enough to use the engine well, short enough that
/// other sessions' decode steps are not held up long behind one prompt.
pub const PREFILL_CHUNK: usize = 512;

impl RemoteModelConfig {
    /// Positions per prefill step: [`PREFILL_CHUNK`], or fewer when a step's answer (`S × W`
    /// float32 for the widest output, logits or hidden states) would not fit in one message.
    pub fn prefill_chunk(&self) -> usize {
        // The most a node answers in one message.
        let room = crate::net::codec::MAX_ANSWER_VALUE_BYTES / 4;
        let widest = self.output_width.max(self.hidden_size).max(1);
        (room / widest).clamp(1, PREFILL_CHUNK)
    }

    /// The whole model of `manifest`, allowing `max_failovers_per_step`.
    pub fn for_model(
        manifest: &crate::model::ModelManifest,
        max_failovers_per_step: usize,
    ) -> Self {
        let config = &manifest.config;
        Self {
            model_id: manifest.id().0,
            num_blocks: manifest.blocks.len() as u16,
            context_length: config.max_positions,
            eos_ids: manifest.tokenizer.eos_token_ids.clone(),
            max_failovers_per_step,
            hidden_size: config.hidden_size,
            output_width: if manifest.architecture.is_decoder() {
                config.vocab_size
            } else {
                config.hidden_size
            },
        }
    }
}

impl RemoteModel {
    /// `candidates` is the live directory of usable peers (staked on-chain, with announced
    /// load and measured RTT), shared with whoever keeps it current.
    pub fn new(
        net: Network,
        config: RemoteModelConfig,
        candidates: Arc<Mutex<Vec<Candidate>>>,
    ) -> Self {
        let router = Router {
            hops: HopClient::new(net, &config),
            config,
            candidates,
            cost: CostModel::default(),
            report: Arc::default(),
            metrics: None,
            cross_check: false,
        };
        Self { router: Arc::new(router), sessions: HashMap::new() }
    }

    /// The router, to configure before any [`RemoteModel::open`] shares it.
    fn configure(&mut self) -> &mut Router {
        Arc::get_mut(&mut self.router).expect("a remote model is configured before it is shared")
    }

    /// Refuses answers not signed by the operator registered for the peer.
    pub fn verifying(mut self, signatures: SignatureCheck) -> Self {
        self.configure().hops.signatures = Some(signatures);
        self
    }

    /// Records hop latencies and failovers into `metrics`.
    pub fn observed(mut self, metrics: GatewayMetrics) -> Self {
        self.configure().hops.metrics = Some(metrics.clone());
        self.configure().metrics = Some(metrics);
        self
    }

    /// Weighs a hop's price against its latency at `wei_per_ms` (see [`CostModel::wei_per_ms`]).
    pub fn pricing(mut self, wei_per_ms: f64) -> Self {
        self.configure().cost.wei_per_ms = wei_per_ms;
        self
    }

    /// Runs every hop also on a witness of another operator serving the same blocks, and uses
    /// an answer only once the two agree (see `cross_check`).
    pub fn cross_checking(mut self) -> Self {
        self.configure().cross_check = true;
        self.router.report.lock().expect("report").cross_check = true;
        self
    }

    /// Pays every node on the route from `wallet`, at the prices in `terms`.
    pub fn paying(mut self, wallet: Arc<Wallet>, terms: TermsBook) -> Self {
        self.configure().hops.payer = Some((wallet, terms));
        self
    }

    /// TESTING ONLY: see [`HopClient::drop_answers`].
    pub fn drop_answers(&self, count: u64) {
        self.router.hops.drop_answers(count);
    }

    /// Asks the nodes whose account may differ from this gateway's count (an answer to them
    /// was lost) for it, and pays what is agreed (see [`HopClient::settle_accounts`]).
    /// Blocks on the network: call it from a blocking thread.
    pub fn settle_accounts(&self) {
        let candidates = self.router.candidates.lock().expect("candidates").clone();
        self.router.hops.settle_accounts_among(&candidates);
        self.report_payments();
    }

    /// A model of its own for one request, sharing this one's router: its bans, directory,
    /// payments and report.
    pub fn open(&self) -> Self {
        Self { router: self.router.clone(), sessions: HashMap::new() }
    }

    /// Failovers so far.
    pub fn failovers(&self) -> Vec<Failover> {
        self.router.report.lock().expect("report").failovers.clone()
    }

    /// The live routing report, readable while a generation holds the model.
    pub fn report(&self) -> Arc<Mutex<RouteReport>> {
        self.router.report.clone()
    }

    /// The current route of a session.
    pub fn route(&self, session: u64) -> Option<&[Hop]> {
        self.sessions.get(&session).map(|s| s.hops.as_slice())
    }

    /// Leaves a peer whose step failed out of routes — banned with backoff, or, speaking
    /// another protocol version, set aside without a ban — and says why it failed.
    fn set_aside(&self, peer: PeerId, failure: StepFailure) -> String {
        let mut bans = self.router.hops.bans();
        match failure {
            StepFailure::Incompatible(reason) => {
                bans.incompatible(peer);
                reason
            }
            StepFailure::Peer(reason) => {
                bans.fail(peer);
                reason
            }
            StepFailure::Lied(reason) => {
                bans.forbid(peer);
                reason
            }
            StepFailure::Fatal(e) => e.to_string(),
        }
    }

    fn plan_from(&self, from: u16, needed_tokens: usize) -> Result<Vec<Hop>, EngineError> {
        let candidates = self.router.candidates.lock().expect("candidates").clone();
        let banned = self.router.hops.bans().excluded();
        let to = self.router.config.num_blocks;
        plan(&candidates, from, to, &banned, &self.router.cost, needed_tokens).ok_or_else(|| {
            // Name the block nobody serves, not where the route was to start.
            let block = unserved(&candidates, from, to, &banned).first().copied().unwrap_or(from);
            EngineError::Run {
                block: block as usize,
                reason: "no staked, reachable peer serves this block".into(),
            }
        })
    }

    /// Blocks no staked peer the gateway has heard from (a ping answered, or an announcement)
    /// serves now; peers whose last contact failed count out until they answer again. While
    /// any is left, requests fail.
    pub fn unserved_blocks(&self) -> Vec<u16> {
        let mut candidates = self.router.candidates.lock().expect("candidates").clone();
        candidates.retain(|c| c.rtt_ms.is_some() || c.compute_ms.is_some());
        let banned = self.router.hops.bans().excluded();
        unserved(&candidates, 0, self.router.config.num_blocks, &banned)
    }

    /// Peers not routed to now: failed recently, or forbidden.
    pub fn banned_peers(&self) -> usize {
        self.router.hops.bans().banned().len()
    }

    /// One step to one hop, through the paid and checked client. An answer that failed its
    /// checks is, for routing, a failed peer.
    fn call(
        &self,
        hop: &Hop,
        session: u64,
        position: u32,
        kind: StepKind,
        payload: Payload,
    ) -> Result<Payload, StepFailure> {
        Ok(self.router.hops.call(hop, session, position, kind, payload)?.output)
    }

    /// Reports the first failure of a step, if it had one, with the route that took over
    /// (empty when none could, and the step failed). Only the latest [`KEPT_FAILOVERS`] are
    /// kept; `failovers_total` counts them all.
    fn report_failover(&self, stalled: Option<(Instant, PeerId, String)>, replacement: Vec<Hop>) {
        let Some((started, failed_peer, reason)) = stalled else { return };
        match replacement.is_empty() {
            true => tracing::warn!(%failed_peer, "no peer could take over: {reason}"),
            false => tracing::info!(
                %failed_peer,
                route = %describe(&replacement),
                stall_ms = started.elapsed().as_millis() as u64,
                "failed over"
            ),
        }
        if let Some(metrics) = &self.router.metrics {
            metrics.failover(!replacement.is_empty());
        }
        let mut report = self.router.report.lock().expect("report");
        if report.failovers.len() == KEPT_FAILOVERS {
            report.failovers.remove(0);
        }
        report.failovers.push(Failover {
            failed_peer,
            reason,
            replacement,
            stall: started.elapsed(),
        });
        report.failovers_total += 1;
    }

    /// Publishes what the gateway owes each node, after a request.
    fn report_payments(&self) {
        if let Some(tabs) = self.router.hops.tabs() {
            self.router.report.lock().expect("report").payments = tabs;
        }
    }

    /// Rebuilds the caches of `hops` by replaying, step by step, the session's inputs from
    /// their first boundary (positions before `before`); the same chunks as originally sent, so
    /// the rebuilt caches are bit-identical. Refreshes the history of the later boundaries.
    fn replay(
        &self,
        state: &mut SessionState,
        hops: &[Hop],
        session: u64,
        before: u32,
    ) -> Result<(), (Hop, StepFailure)> {
        for hop in hops {
            let outputs = self.replay_hop(state, hop, session, before).map_err(|e| (*hop, e))?;
            if hop.last_block + 1 < self.router.config.num_blocks {
                state.history.insert(hop.last_block + 1, outputs);
            }
        }
        Ok(())
    }

    /// Ends `session` on `hop` without waiting: the hop may be the one that just failed, and the
    /// user's step should not wait out its timeout.
    fn close_detached(&self, hop: &Hop, session: u64) {
        let (router, hop) = (self.router.clone(), *hop);
        std::thread::spawn(move || {
            let _ = router.hops.call(&hop, session, 0, StepKind::Close, Payload::Empty);
        });
    }

    /// Rebuilds the cache of one hop from the session's inputs at its first boundary
    /// (positions before `before`); its outputs, by position.
    fn replay_hop(
        &self,
        state: &SessionState,
        hop: &Hop,
        session: u64,
        before: u32,
    ) -> Result<Vec<(u32, Payload)>, StepFailure> {
        let inputs: Vec<(u32, Payload)> = state
            .history
            .get(&hop.first_block)
            .map(|h| h.iter().filter(|(p, _)| *p < before).cloned().collect())
            .unwrap_or_default();
        let mut outputs = Vec::with_capacity(inputs.len());
        for (position, input) in inputs {
            outputs.push((position, self.call(hop, session, position, StepKind::Replay, input)?));
        }
        Ok(outputs)
    }

    /// Runs one step of `session` through its route, failing over as needed; a new session's
    /// route is planned for `planned` tokens (its whole prompt, when that comes in chunks).
    /// The session's state is kept whatever happens, so that closing it reaches every hop it
    /// used.
    fn step(
        &mut self,
        session: u64,
        position: u32,
        tokens: &[i64],
        planned: usize,
    ) -> Result<Activation, EngineError> {
        let mut state = match self.sessions.remove(&session) {
            Some(state) if position > 0 => state,
            restarted => {
                // A session started again at position 0 leaves its old route.
                for old in
                    restarted.iter().flat_map(|s| s.hops.iter().chain(s.witnesses.iter().flatten()))
                {
                    self.close_detached(old, session);
                }
                let hops = self.plan_from(0, planned)?;
                tracing::info!(route = %describe(&hops), "routed");
                let mut state = SessionState { hops, ..Default::default() };
                // Nothing to replay at position 0, so no witness can disagree yet.
                let _ = self.add_witnesses(&mut state, 0, session, 0, planned);
                state
            }
        };
        let result = self.step_through(&mut state, session, position, tokens);
        self.sessions.insert(session, state);
        result
    }

    /// Runs a step through `hops` one after another, as one task on the runtime, stopping at
    /// the first failure; the result of every hop asked, in order. The session's thread waits
    /// once for the whole route rather than once per hop, and each hop's answer wakes a task
    /// on the runtime instead of a thread (on a busy gateway, these wake-ups were most of its
    /// context switches). The task runs in the session's span, so its logs name the session.
    fn run_through(
        &self,
        hops: &[Hop],
        session: u64,
        position: u32,
        kind: StepKind,
        payload: &Payload,
    ) -> VecDeque<Result<Payload, StepFailure>> {
        let first_block = hops.first().map_or(0, |hop| hop.first_block as usize);
        let (router, hops, first_input) = (self.router.clone(), hops.to_vec(), payload.clone());
        let route = async move {
            let mut results = VecDeque::with_capacity(hops.len());
            for hop in &hops {
                let input = match results.back() {
                    Some(Ok(output)) => output,
                    _ => &first_input,
                };
                let result = router.call_routable(hop, session, position, kind, input).await;
                let failed = result.is_err();
                results.push_back(result);
                if failed {
                    break;
                }
            }
            results
        };
        let runtime = self.router.hops.runtime();
        match runtime.block_on(runtime.spawn(route.instrument(tracing::Span::current()))) {
            Ok(results) => results,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => VecDeque::from([Err(StepFailure::Fatal(Box::new(EngineError::Run {
                block: first_block,
                reason: format!("the gateway is stopping: {e}"),
            })))]),
        }
    }

    fn step_through(
        &self,
        state: &mut SessionState,
        session: u64,
        position: u32,
        tokens: &[i64],
    ) -> Result<Activation, EngineError> {
        let kind = if position == 0 { StepKind::Prefill } else { StepKind::Decode };
        let mut payload = Payload::Tokens(tokens.to_vec());
        let mut index = 0;
        let mut failovers = 0;
        let mut stalled: Option<(Instant, PeerId, String)> = None;
        // Results of the hops from `index` on, already asked for; a failure is always the last.
        let mut asked: VecDeque<Result<Payload, StepFailure>> = VecDeque::new();
        while index < state.hops.len() {
            let hop = state.hops[index];
            let kept = state.history.entry(hop.first_block).or_default();
            kept.retain(|(p, _)| *p < position);
            kept.push((position, payload.clone()));
            let needed_tokens = (position as usize) + tokens.len();
            if asked.is_empty() {
                if state.witnesses.iter().skip(index).all(Option::is_none) {
                    asked =
                        self.run_through(&state.hops[index..], session, position, kind, &payload);
                } else {
                    let step =
                        cross_check::Step { position, kind, payload: &payload, needed_tokens };
                    asked.push_back(self.ask(state, index, session, step));
                }
            }
            match asked.pop_front().expect("asked for above") {
                Ok(output) => {
                    payload = output;
                    index += 1;
                }
                Err(StepFailure::Fatal(e)) => {
                    self.report_failover(stalled.take(), Vec::new());
                    return Err(*e);
                }
                Err(
                    failure @ (StepFailure::Peer(_)
                    | StepFailure::Incompatible(_)
                    | StepFailure::Lied(_)),
                ) => {
                    let reason = self.set_aside(hop.peer, failure);
                    tracing::warn!(
                        "session {session} position {position}: {} (blocks {}-{}) failed, failing over: {reason}",
                        hop.peer,
                        hop.first_block,
                        hop.last_block
                    );
                    stalled.get_or_insert((Instant::now(), hop.peer, reason.clone()));
                    // Plan the failed hop and everything after it again, and rebuild the
                    // replacement's caches; a replacement failing during replay is banned too.
                    loop {
                        failovers += 1;
                        if failovers > self.router.config.max_failovers_per_step {
                            self.report_failover(stalled.take(), Vec::new());
                            return Err(EngineError::Run {
                                block: hop.first_block as usize,
                                reason,
                            });
                        }
                        // No replacement: the error says why the failed peer failed.
                        let needed = (position as usize) + tokens.len();
                        let Ok(replacement) = self.plan_from(hop.first_block, needed) else {
                            self.report_failover(stalled.take(), Vec::new());
                            return Err(EngineError::Run {
                                block: hop.first_block as usize,
                                reason: format!(
                                    "no other staked, reachable peer serves this block; {} failed: {reason}",
                                    hop.peer
                                ),
                            });
                        };
                        // The failed hop, the hops after it and their witnesses (or a replacement
                        // that failed its replay, on a later round) leave the session. A peer left
                        // out is closed without waiting (it may not answer); any other before the
                        // new route is planned, since it may be part of it and a late close would
                        // end the session its replay rebuilds.
                        let excluded = self.router.hops.bans().excluded();
                        let witnesses = state.witnesses.iter().skip(index).flatten();
                        for old in state.hops[index..].iter().chain(witnesses) {
                            match excluded.contains(&old.peer) {
                                true => self.close_detached(old, session),
                                false => {
                                    let _ =
                                        self.call(old, session, 0, StepKind::Close, Payload::Empty);
                                }
                            }
                        }
                        state.hops.truncate(index);
                        state.witnesses.truncate(index);
                        state.hops.extend(replacement.iter().copied());
                        let rebuilt =
                            self.replay(state, &replacement, session, position).and_then(|()| {
                                self.add_witnesses(state, index, session, position, needed)
                            });
                        match rebuilt {
                            Ok(()) => break,
                            Err((_, StepFailure::Fatal(e))) => {
                                self.report_failover(stalled.take(), Vec::new());
                                return Err(*e);
                            }
                            Err((bad, failure)) => {
                                self.set_aside(bad.peer, failure);
                            }
                        }
                    }
                    // The current step resumes at the same boundary with the same input.
                }
            }
        }
        self.report_failover(stalled, state.hops.clone());
        self.router.report.lock().expect("report").route = state.hops.clone();
        match payload {
            Payload::Tensor(logits) => Ok(logits),
            _ => Err(EngineError::Run {
                block: self.router.config.num_blocks as usize - 1,
                reason: "last hop returned no logits".into(),
            }),
        }
    }
}

/// A route for the log: `peer[first-last] → …`.
fn describe(hops: &[Hop]) -> String {
    let hop = |h: &Hop| format!("{}[{}-{}]", h.peer, h.first_block, h.last_block);
    hops.iter().map(hop).collect::<Vec<_>>().join(" -> ")
}

/// What the API reads about routing, for `/healthz` and `/metrics`.
pub trait RoutingStatus: Send + Sync {
    /// The live routing report.
    fn route_report(&self) -> Arc<Mutex<RouteReport>>;
    /// Blocks no usable peer serves now.
    fn unserved_blocks(&self) -> Vec<u16>;
    /// Peers not routed to now.
    fn banned_peers(&self) -> usize;
    /// libp2p peers with an open connection now.
    fn connected_peers(&self) -> usize;
    /// How each connected peer is reached: directly or only through a relay.
    fn peer_paths(&self) -> Vec<(PeerId, crate::net::nat::Path)>;
    /// Relayed connections open now (0 once every hole-punched peer's relay is let go).
    fn relayed_connections(&self) -> usize;
    /// The gateway's own libp2p peer id, as nodes see it.
    fn local_peer(&self) -> PeerId;
}

impl RoutingStatus for RemoteModel {
    fn route_report(&self) -> Arc<Mutex<RouteReport>> {
        self.report()
    }
    fn unserved_blocks(&self) -> Vec<u16> {
        RemoteModel::unserved_blocks(self)
    }
    fn banned_peers(&self) -> usize {
        RemoteModel::banned_peers(self)
    }
    fn connected_peers(&self) -> usize {
        self.router.hops.connected_peers()
    }
    fn peer_paths(&self) -> Vec<(PeerId, crate::net::nat::Path)> {
        self.router.hops.paths()
    }
    fn relayed_connections(&self) -> usize {
        self.router.hops.relayed_connections()
    }
    fn local_peer(&self) -> PeerId {
        self.router.hops.local_peer()
    }
}

impl crate::generate::TokenEncoder for RemoteModel {
    /// Runs an encoder input through the route; encoders are stateless, so a failing hop is
    /// simply re-planned around and the whole input sent again.
    fn encode_tokens(
        &self,
        ids: &[i64],
        mask: &crate::engine::EncoderMask,
    ) -> Result<Activation, EngineError> {
        let mut failovers = 0;
        'attempt: loop {
            let mut payload = Payload::Tokens(ids.to_vec());
            for hop in self.plan_from(0, ids.len())? {
                let masked = Payload::Masked {
                    input: Box::new(payload),
                    attention_mask: mask.attention_mask.clone(),
                    token_type_ids: if hop.first_block == 0 {
                        mask.token_type_ids.clone()
                    } else {
                        Vec::new()
                    },
                };
                match self.call(&hop, 0, 0, StepKind::Prefill, masked) {
                    Ok(output) => payload = output,
                    Err(StepFailure::Fatal(e)) => return Err(*e),
                    Err(failure) => {
                        let reason = self.set_aside(hop.peer, failure);
                        failovers += 1;
                        if failovers > self.router.config.max_failovers_per_step {
                            return Err(EngineError::Run {
                                block: hop.first_block as usize,
                                reason,
                            });
                        }
                        continue 'attempt;
                    }
                }
            }
            self.report_payments();
            return match payload {
                Payload::Tensor(embeddings) => Ok(embeddings),
                _ => Err(EngineError::Run {
                    block: 0,
                    reason: "the route returned no token embeddings".into(),
                }),
            };
        }
    }
}

impl TextModel for RemoteModel {
    fn logits(
        &mut self,
        session: u64,
        position: usize,
        tokens: &[i64],
    ) -> Result<Activation, EngineError> {
        // A long prompt goes in chunks, each a step of its own (and replayed as such after a
        // failover): every answer stays within the wire's size limit, and decode steps of
        // other sessions interleave with the chunks at each node.
        let chunk = self.router.config.prefill_chunk();
        let mut logits = None;
        for (index, part) in tokens.chunks(chunk).enumerate() {
            let at = position + index * chunk;
            logits = Some(self.step(session, at as u32, part, position + tokens.len())?);
        }
        logits.ok_or(EngineError::Run { block: 0, reason: "an empty step".into() })
    }

    fn close(&mut self, session: u64) {
        if let Some(state) = self.sessions.remove(&session) {
            for hop in state.hops.iter().chain(state.witnesses.iter().flatten()) {
                let _ = self.call(hop, session, 0, StepKind::Close, Payload::Empty);
            }
        }
        self.report_payments();
    }

    fn context_length(&self) -> usize {
        self.router.config.context_length
    }

    fn eos_ids(&self) -> &[u32] {
        &self.router.config.eos_ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vocab: usize, hidden: usize) -> RemoteModelConfig {
        RemoteModelConfig {
            model_id: [0; 32],
            num_blocks: 3,
            context_length: 8192,
            eos_ids: Vec::new(),
            max_failovers_per_step: 4,
            hidden_size: hidden,
            output_width: vocab,
        }
    }

    #[test]
    fn prefill_chunks_keep_every_answer_within_the_wire_limit() {
        assert_eq!(config(512, 64).prefill_chunk(), PREFILL_CHUNK);
        // A 152k vocabulary: 110 positions of logits fit in 64 MiB, 111 would not.
        let big = config(152_064, 896).prefill_chunk();
        assert_eq!(big, 110);
        // An Ok answer with an Account (`wire.md`, "Size note"); a node takes its values.
        let bytes = |s: usize| 255 + 4 * s * 152_064;
        assert!(bytes(big) <= crate::net::codec::MAX_MESSAGE_BYTES);
        assert!(4 * big * 152_064 <= crate::net::codec::MAX_ANSWER_VALUE_BYTES);
        assert!(bytes(big + 1) > crate::net::codec::MAX_MESSAGE_BYTES);
    }
}
