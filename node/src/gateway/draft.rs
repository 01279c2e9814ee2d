//! Draft nodes: nodes of the swarm that serve a small copy of the model (e.g. `model import
//! --quantize int8`) whole, registered on-chain for it at their own price, and asked for a
//! generation's next guesses in one round trip (`wire.md`, "Draft steps"). A guess is only a
//! proposal: the verify step through the route keeps what the served model itself produces
//! (`generate::speculate`), so a draft node that fails, lies or vanishes costs time, never
//! correctness; its generation decodes plainly until another draft node answers.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;

use super::hops::{HopClient, HopError};
use super::remote::RemoteModelConfig;
use super::{BadAnswer, SignatureCheck, TermsBook};
use crate::generate::{Drafter, resume_at};
use crate::model::ModelManifest;
use crate::net::Network;
use crate::net::codec::{MAX_DRAFT_GUESSES, Payload, StepKind};
use crate::pay::Wallet;
use crate::route::{Candidate, CostModel, Hop, plan};

/// The draft nodes of one draft model, shared by every generation of a gateway: the paid,
/// checked client with its bans, and the live directory of the nodes registered for it.
pub struct DraftNodes {
    hops: HopClient,
    candidates: Arc<Mutex<Vec<Candidate>>>,
    num_blocks: u16,
    context_length: usize,
    cost: CostModel,
    /// How each draft node's guesses fared in the verify steps.
    tallies: Mutex<HashMap<PeerId, Tally>>,
}

/// Drafts a node must have had verified before its acceptance is judged.
const JUDGED_AFTER: u64 = 64;

/// Below this share of its drafts accepted, a draft node is left out for the rest of the run.
/// A draft model sharing the served model's tokenizer guesses far better (SmolLM2's int8 copy:
/// 93–98%); guesses that cost the draft node nothing (always the same token, another model's)
/// almost never pass, and each was paid for.
const MIN_ACCEPTANCE: f64 = 0.1;

/// Past this many drafts a tally is halved, so that a node is judged on its recent guesses.
const TALLY_WINDOW: u64 = 4096;

/// Longest a decode step waits for a draft node's guesses. A draft model guesses a handful of
/// tokens in tens of milliseconds; guesses later than this could not pay for the wait, and a
/// node that hangs (its connection still open) would otherwise stall the step for the
/// network's whole request timeout. Past it the decode step goes without drafts, as do the
/// next ones until the draft step, which goes on in the background, has ended.
pub const DRAFT_DEADLINE: Duration = Duration::from_secs(2);

/// Drafts of one node verified, and accepted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    drafted: u64,
    accepted: u64,
}

impl Tally {
    /// Counts a verify step's verdict; says whether the node's guesses are now too poor to pay
    /// for.
    fn add(&mut self, drafted: usize, accepted: usize) -> bool {
        self.drafted += drafted as u64;
        self.accepted += accepted as u64;
        if self.drafted > TALLY_WINDOW {
            *self = Tally { drafted: self.drafted / 2, accepted: self.accepted / 2 };
        }
        self.drafted >= JUDGED_AFTER
            && (self.accepted as f64) < MIN_ACCEPTANCE * self.drafted as f64
    }
}

impl DraftNodes {
    /// Draft nodes for the model of `draft`, chosen among `candidates` (the live directory
    /// of nodes registered for it). Must be created inside a tokio runtime; drafting blocks on
    /// it (from blocking threads).
    pub fn new(
        net: Network,
        draft: &ModelManifest,
        candidates: Arc<Mutex<Vec<Candidate>>>,
    ) -> Self {
        let config = RemoteModelConfig::for_model(draft, 0);
        Self {
            hops: HopClient::new(net, &config),
            candidates,
            num_blocks: config.num_blocks,
            context_length: config.context_length,
            cost: CostModel::default(),
            tallies: Mutex::default(),
        }
    }

    /// Pays every draft node from `wallet`, at the prices in `terms`.
    pub fn paying(mut self, wallet: Arc<Wallet>, terms: TermsBook) -> Self {
        self.hops = self.hops.paying(wallet, terms);
        self
    }

    /// Refuses guesses not signed by the operator registered for the peer.
    pub fn verifying(mut self, signatures: SignatureCheck) -> Self {
        self.hops = self.hops.verifying(signatures);
        self
    }

    /// Weighs a draft node's price against its latency at `wei_per_ms`, as routes do.
    pub fn pricing(mut self, wei_per_ms: f64) -> Self {
        self.cost.wei_per_ms = wei_per_ms;
        self
    }

    /// The drafter of the generation `session` (its session id on the draft node too).
    pub fn drafter(self: &Arc<Self>, session: u64) -> RemoteDrafter {
        RemoteDrafter { nodes: self.clone(), session, node: None, under_way: None }
    }

    /// Pays what is agreed to draft nodes whose account may differ from this gateway's (an
    /// answer to them was lost; see [`HopClient::settle_accounts`]). Blocks on the network.
    pub fn settle_accounts(&self) {
        let candidates = self.candidates.lock().expect("candidates").clone();
        self.hops.settle_accounts_among(&candidates);
    }

    /// The best draft node for a session needing `tokens` of cache: one that runs the
    /// whole draft model, as cheap and fast as routes are planned.
    fn pick(&self, tokens: usize) -> Option<Hop> {
        let mut whole = self.candidates.lock().expect("candidates").clone();
        whole.retain(|c| c.first_block == 0 && c.last_block + 1 == self.num_blocks);
        let banned = self.hops.bans().excluded();
        let route = plan(&whole, 0, self.num_blocks, &banned, &self.cost, tokens)?;
        match route[..] {
            [hop] => Some(hop),
            _ => None,
        }
    }

    /// Asks `hop`, whose `session` holds `cached`, for `count` guesses after `context`;
    /// returns what the session holds afterwards (the context and every guess but the last)
    /// and the guesses.
    fn ask(
        &self,
        hop: &Hop,
        session: u64,
        mut cached: Vec<u32>,
        context: &[u32],
        count: u16,
    ) -> Result<(Vec<u32>, Vec<u32>), HopError> {
        let from = resume_at(&cached, context);
        let tokens = context[from..].iter().map(|&t| i64::from(t)).collect();
        let payload = Payload::Draft { tokens, guesses: count };
        let answer = self.hops.call(hop, session, from as u32, StepKind::Draft, payload)?;
        // Checked by the client: `count` ids of the vocabulary.
        let Payload::Tokens(ids) = answer.output else {
            return Err(HopError::Invalid(BadAnswer::NotTokens));
        };
        let guesses: Vec<u32> = ids.into_iter().map(|id| id as u32).collect();
        cached.truncate(from);
        cached.extend_from_slice(&context[from..]);
        cached.extend_from_slice(&guesses[..guesses.len() - 1]);
        Ok((cached, guesses))
    }

    /// Sends a draft step in a thread of its own, so that the generation need not wait for
    /// it: the step is paid and checked as any, whenever it ends (the network's request
    /// timeout bounds it), and its outcome comes through the receiver.
    fn send(
        self: &Arc<Self>,
        hop: Hop,
        session: u64,
        cached: Vec<u32>,
        context: Vec<u32>,
        count: u16,
    ) -> Receiver<StepOutcome> {
        let (outcome, receiver) = std::sync::mpsc::channel();
        let nodes = self.clone();
        std::thread::spawn(move || {
            let answer = nodes.ask(&hop, session, cached, &context, count);
            let _ = outcome.send((hop, answer));
        });
        receiver
    }

    /// What `session` on the node holds after a step's `outcome`, if anything, and the
    /// guesses. A lost session starts again at the next step, without a back-off (evicted
    /// under load); any other failure backs the node off and closes the session there.
    fn conclude(
        self: &Arc<Self>,
        session: u64,
        (hop, answer): StepOutcome,
    ) -> (Option<DraftSession>, Vec<u32>) {
        match answer {
            Ok((cached, guesses)) => (Some((hop, cached)), guesses),
            Err(HopError::SessionLost(reason)) => {
                tracing::debug!(peer = %hop.peer, "the draft session was lost: {reason}");
                (Some((hop, Vec::new())), Vec::new())
            }
            Err(e) => {
                self.failed(hop, session, &e);
                (None, Vec::new())
            }
        }
    }

    /// Counts what the verify step kept of `peer`'s latest guesses; a node whose guesses are
    /// almost never right is left out for the rest of the run.
    fn judged(&self, peer: PeerId, drafted: usize, accepted: usize) {
        let mut tallies = self.tallies.lock().expect("tallies");
        let tally = tallies.entry(peer).or_default();
        if tally.add(drafted, accepted) {
            let Tally { drafted, accepted } = *tally;
            tracing::warn!(%peer, drafted, accepted, "draft node left out: its guesses are almost never right");
            self.hops.bans().forbid(peer);
            tallies.remove(&peer);
        }
    }

    /// A draft step to `hop` failed: the node is backed off like any failed peer (set aside
    /// when it speaks another version; an invalid answer was dealt with when judged), and its
    /// session there, if it still has one, is closed without waiting.
    fn failed(self: &Arc<Self>, hop: Hop, session: u64, error: &HopError) {
        tracing::warn!(peer = %hop.peer, "the draft node failed, decoding without drafts: {error:?}");
        match error {
            HopError::Incompatible(_) => self.hops.bans().incompatible(hop.peer),
            HopError::Invalid(_) => {}
            _ => self.hops.bans().fail(hop.peer),
        }
        self.close_detached(hop, session);
    }

    /// Closes `session` on `hop`: the Close frees its cache there and carries the voucher
    /// that settles it (`payments.md`). Blocks on the network.
    fn close(&self, hop: Hop, session: u64) {
        if let Err(e) = self.hops.call(&hop, session, 0, StepKind::Close, Payload::Empty) {
            tracing::debug!(peer = %hop.peer, "closing the draft session failed: {e:?}");
        }
    }

    /// [`DraftNodes::close`] in the background, so that the generation need not wait.
    fn close_detached(self: &Arc<Self>, hop: Hop, session: u64) {
        let nodes = self.clone();
        std::thread::spawn(move || nodes.close(hop, session));
    }
}

/// What a draft node's session holds: the node, and the tokens whose keys and values it
/// holds, in order.
type DraftSession = (Hop, Vec<u32>);

/// A draft step's outcome, from the thread that sent it: the node, and what it answered
/// (what its session holds afterwards, and the guesses).
type StepOutcome = (Hop, Result<(Vec<u32>, Vec<u32>), HopError>);

/// One generation's guesses from a draft node: its own session there, which follows the
/// generation's context (a step at an earlier position rolls it back, so rejected guesses
/// cost nothing to undo). Closed, and the draft node paid, when the generation ends.
pub struct RemoteDrafter {
    nodes: Arc<DraftNodes>,
    session: u64,
    node: Option<DraftSession>,
    /// A draft step still under way: the prompt's ([`Drafter::prepare`]), a session's catch-up
    /// on a whole context, or one that missed [`DRAFT_DEADLINE`]. Decode steps go without
    /// drafts until it ends.
    under_way: Option<Receiver<StepOutcome>>,
}

/// Where a generation's draft session stands before a decode step.
enum Settled {
    /// A draft step is still under way: this decode step goes without drafts.
    Pending,
    /// The session, if a draft node holds one.
    Ready(Option<DraftSession>),
}

impl RemoteDrafter {
    /// Opens the session on `hop` with `context` (one guess, not used), in the background.
    fn catch_up(&mut self, hop: Hop, context: &[u32]) {
        self.under_way = Some(self.nodes.send(hop, self.session, Vec::new(), context.to_vec(), 1));
    }

    /// The draft session, unless a step of it is still under way.
    fn settled(&mut self) -> Settled {
        let Some(step) = self.under_way.take() else {
            return Settled::Ready(self.node.take());
        };
        match step.try_recv() {
            // Its guesses are for an earlier context: only the session is kept.
            Ok(outcome) => Settled::Ready(self.nodes.conclude(self.session, outcome).0),
            Err(TryRecvError::Empty) => {
                self.under_way = Some(step);
                Settled::Pending
            }
            Err(TryRecvError::Disconnected) => Settled::Ready(None),
        }
    }
}

impl Drafter for RemoteDrafter {
    fn draft(&mut self, context: &[u32], max: usize) -> Vec<u32> {
        let Settled::Ready(session) = self.settled() else { return Vec::new() };
        let room = self.nodes.context_length.saturating_sub(context.len());
        let count = max.min(room).min(usize::from(MAX_DRAFT_GUESSES));
        if count == 0 || context.is_empty() {
            self.node = session;
            return Vec::new();
        }
        let (hop, cached) = match session {
            Some(session) => session,
            None => match self.nodes.pick(context.len() + count) {
                Some(hop) => (hop, Vec::new()),
                None => return Vec::new(),
            },
        };
        if cached.is_empty() {
            // A new session (a node picked, or the last one's lost) takes in the whole
            // context first, which may take a while: in the background, as the prompt does.
            self.catch_up(hop, context);
            return Vec::new();
        }
        let (nodes, session) = (&self.nodes, self.session);
        let step = nodes.send(hop, session, cached, context.to_vec(), count as u16);
        match step.recv_timeout(DRAFT_DEADLINE) {
            Ok(outcome) => {
                let (node, guesses) = nodes.conclude(session, outcome);
                self.node = node;
                guesses
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    peer = %hop.peer,
                    "the draft node gave no guesses within {} ms: decoding without drafts until it answers",
                    DRAFT_DEADLINE.as_millis()
                );
                self.under_way = Some(step);
                Vec::new()
            }
            Err(RecvTimeoutError::Disconnected) => Vec::new(),
        }
    }

    fn judged(&mut self, drafted: usize, accepted: usize) {
        if let Some((hop, _)) = &self.node {
            self.nodes.judged(hop.peer, drafted, accepted);
        }
    }

    /// Sends the prompt to a draft node (one guess, not used) in the background, so that the
    /// first decode step's draft costs a decode step's time.
    fn prepare(&mut self, prompt: &[u32]) {
        if prompt.is_empty() || prompt.len() >= self.nodes.context_length {
            return;
        }
        let Some(hop) = self.nodes.pick(prompt.len() + usize::from(MAX_DRAFT_GUESSES)) else {
            return;
        };
        self.catch_up(hop, prompt);
    }
}

impl Drop for RemoteDrafter {
    /// Closes the session on the draft node, in the background (see
    /// [`DraftNodes::close_detached`]); one whose step is still under way, once it ends (a
    /// Close sent meanwhile could come before the step, which would open the session again).
    fn drop(&mut self) {
        let (nodes, session, node, under_way) =
            (self.nodes.clone(), self.session, self.node.take(), self.under_way.take());
        match (node, under_way) {
            (Some((hop, _)), _) => nodes.close_detached(hop, session),
            (None, Some(step)) => {
                std::thread::spawn(move || {
                    if let Ok(outcome) = step.recv()
                        && let (Some((hop, _)), _) = nodes.conclude(session, outcome)
                    {
                        nodes.close(hop, session);
                    }
                });
            }
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draft_node_is_judged_on_enough_recent_guesses() {
        // Not judged before 64 drafts, however bad.
        let mut tally = Tally::default();
        assert!(!tally.add(63, 0));
        // Then below 10% accepted is too poor.
        assert!(tally.add(1, 0));
        let mut tally = Tally::default();
        assert!(!tally.add(64, 7), "11% passes");
        assert!(tally.add(16, 0), "7 of 80 does not");
        // A good node stays good; past the window the counts are halved, keeping the ratio.
        let mut tally = Tally::default();
        for _ in 0..2000 {
            assert!(!tally.add(4, 3));
        }
        let share = tally.accepted as f64 / tally.drafted as f64;
        assert!(tally.drafted <= TALLY_WINDOW && (share - 0.75).abs() < 0.01, "{tally:?}");
        // So a node that turns bad is caught on its recent guesses (judged on its whole
        // history, it would take thousands more steps).
        let turned = (0..).take_while(|_| !tally.add(4, 0)).count();
        assert!(turned < 2500, "caught after {turned} bad steps");
    }
}
