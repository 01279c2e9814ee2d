//! Draft nodes: nodes of the swarm that serve a small copy of the model (e.g. `model import
//! --quantize int8`) whole, registered on-chain for it at their own price, and asked for a
//! generation's next guesses in one round trip (`wire.md`, "Draft steps"). A guess is only a
//! proposal: the verify step through the route keeps what the served model itself produces
//! (`generate::speculate`), so a draft node that fails, lies or vanishes costs time, never
//! correctness; its generation decodes plainly until another draft node answers.

use std::sync::{Arc, Mutex};

use super::hops::{HopClient, HopError};
use super::remote::RemoteModelConfig;
use super::{SignatureCheck, TermsBook};
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
        RemoteDrafter { nodes: self.clone(), session, node: None }
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
}

/// One generation's guesses from a draft node: its own session there, which follows the
/// generation's context (a step at an earlier position rolls it back, so rejected guesses
/// cost nothing to undo). Closed, and the draft node paid, when the generation ends.
pub struct RemoteDrafter {
    nodes: Arc<DraftNodes>,
    session: u64,
    /// The draft node asked, and the tokens whose keys and values its session holds.
    node: Option<(Hop, Vec<u32>)>,
}

impl RemoteDrafter {
    /// Asks `hop`, whose session holds `cached`, for `count` guesses after `context`; says
    /// from which position of the context it fed.
    fn ask(
        &self,
        hop: &Hop,
        cached: &[u32],
        context: &[u32],
        count: u16,
    ) -> Result<(usize, Vec<u32>), HopError> {
        let from = resume_at(cached, context);
        let tokens = context[from..].iter().map(|&t| i64::from(t)).collect();
        let payload = Payload::Draft { tokens, guesses: count };
        let answer = self.nodes.hops.call(hop, self.session, from as u32, StepKind::Draft, payload);
        match answer?.output {
            // Checked: `count` ids of the vocabulary.
            Payload::Tokens(ids) => Ok((from, ids.into_iter().map(|id| id as u32).collect())),
            _ => unreachable!("a draft step's answer is checked to be token ids"),
        }
    }
}

impl Drafter for RemoteDrafter {
    fn draft(&mut self, context: &[u32], max: usize) -> Vec<u32> {
        let room = self.nodes.context_length.saturating_sub(context.len());
        let count = max.min(room).min(usize::from(MAX_DRAFT_GUESSES));
        if count == 0 || context.is_empty() {
            return Vec::new();
        }
        let (hop, mut cached) = match self.node.take() {
            Some(node) => node,
            None => match self.nodes.pick(context.len() + count) {
                Some(hop) => (hop, Vec::new()),
                None => return Vec::new(),
            },
        };
        match self.ask(&hop, &cached, context, count as u16) {
            Ok((from, guesses)) => {
                // The session now holds the context and every guess but the last.
                cached.truncate(from);
                cached.extend_from_slice(&context[from..]);
                cached.extend_from_slice(&guesses[..guesses.len() - 1]);
                self.node = Some((hop, cached));
                guesses
            }
            Err(e) => {
                // This step decodes without drafts; the next asks another draft node, if any.
                tracing::warn!(peer = %hop.peer, "the draft node failed, decoding without drafts: {e:?}");
                self.nodes.hops.set_aside(hop.peer, &e);
                Vec::new()
            }
        }
    }
}

impl Drop for RemoteDrafter {
    /// Frees the session on the draft node, and settles what it is owed: a decoder session
    /// is paid up on its Close step (`payments.md`).
    fn drop(&mut self) {
        if let Some((hop, _)) = self.node.take()
            && let Err(e) =
                self.nodes.hops.call(&hop, self.session, 0, StepKind::Close, Payload::Empty)
        {
            tracing::debug!(peer = %hop.peer, "closing the draft session failed: {e:?}");
        }
    }
}
