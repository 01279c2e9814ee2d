//! A node serving its layer blocks to the swarm: admission or payment, the span of blocks
//! run per request, typed refusals, and a signature over every answer.

mod batcher;
mod cheat;
pub mod http;
mod load;

pub use batcher::Batcher;
pub use cheat::Cheat;
pub use load::{LoadGuard, Refusal, ServeLimits};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use alloy::primitives::B256;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::eip712::{Domain, Eip712Signer, keccak256};
use crate::engine::{BlockInput, BlockRunner, EncoderMask, EngineError, run_chain};
use crate::generate::argmax;
use crate::net::Inbound;
use crate::net::codec::{
    CodecError, ErrorCode, InferRequest, InferResponse, MAX_ANSWER_VALUE_BYTES, MAX_DRAFT_GUESSES,
    Payload, StepKind, WireError, payload_bytes,
};
use crate::net::steps::{AnswerRoom, MAX_MESSAGE_ANSWER_VALUE_BYTES, SealedAnswers, Steps};
use crate::pay::Collector;
use crate::pay::meter::{positions, step_units};
use crate::telemetry::{NodeMetrics, StepOutcome};
use crate::validate::{ChainClock, EpochClock, ResponseAttestation, seal_answers};

/// Who may send this node requests without paying.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Only these peers (a local test network, or a private deployment).
    Peers(HashSet<PeerId>),
    /// These peers, and every peer registered on-chain as an active (staked, not jailed) node.
    Registry { allowed: HashSet<PeerId>, registry: crate::chain::Registry },
}

impl Admission {
    async fn admits(&self, peer: &PeerId) -> bool {
        match self {
            Admission::Peers(allowed) => allowed.contains(peer),
            Admission::Registry { allowed, registry } => {
                if allowed.contains(peer) {
                    return true;
                }
                match registry.operator_of(peer.to_bytes().into()).await {
                    Ok(operator) if !operator.is_zero() => {
                        registry.is_active(operator).await.unwrap_or(false)
                    }
                    _ => false,
                }
            }
        }
    }
}

/// Signs answers so that a payer or validator can later prove what this node returned: the
/// EIP-712 `Response(requestHash, outputHash, epoch)` of the `Validation` contract, where
/// `requestHash` is keccak-256 of the encoded request, `outputHash` of the encoded output and
/// `epoch` the contract's epoch, by the chain's clock, when the node answers.
#[derive(Debug, Clone)]
pub struct Attester {
    pub signer: Eip712Signer,
    pub domain: Domain,
    /// The contract's epochs, read once at start: they are fixed at deployment.
    pub clock: EpochClock,
    /// The chain's time, kept in step with the latest block by the node.
    pub time: ChainClock,
}

impl Attester {
    /// Signs (keccak-256 of the encoded request, keccak-256 of the encoded output, the
    /// current epoch).
    pub fn attest(&self, request_hash: B256, output_hash: B256) -> [u8; 65] {
        let epoch = self.clock.epoch_at(self.time.now());
        ResponseAttestation { request_hash, output_hash, epoch }.sign(&self.domain, &self.signer)
    }

    /// Signs the Ok answers of one message at once, `(requestHash, outputHash)` each in the
    /// message's order, for the current epoch: all zeros when there is none.
    pub fn seal(&self, answers: &[(B256, B256)]) -> [u8; 65] {
        let epoch = self.clock.epoch_at(self.time.now());
        seal_answers(&self.domain, &self.signer, epoch, answers).unwrap_or([0; 65])
    }
}

/// Whether an answer is signed on its own or with the others of its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    Alone,
    WithMessage,
}

/// The blocks `first..=last` of one model, served to the swarm.
pub struct BlockServer {
    pub model_id: [u8; 32],
    pub first_block: u16,
    pub blocks: Vec<Arc<BlockRunner>>,
    pub attester: Attester,
    pub admission: Admission,
    /// Payment for everyone not admitted: vouchers checked, usage metered.
    pub collector: Option<Arc<Collector>>,
    /// Moving average of the compute time of one decode step through the whole span.
    pub decode_ms: DecodeTimer,
    /// Steps waiting for the engine, and each peer's sessions and cache tokens.
    pub load: LoadGuard,
    /// Decode steps of all sessions, run in batches.
    pub batcher: Batcher,
    /// Testing only: answers deliberately made wrong before they are signed.
    pub cheat: Option<Cheat>,
    /// Testing only: how long each answer is held before it is sent, emulating a wide-area
    /// hop on loopback (`bench spec`).
    pub answer_delay: std::time::Duration,
    /// Steps and vouchers, for `/metrics`.
    pub metrics: NodeMetrics,
    /// The span registered on-chain, when paid: a paid node serves only blocks it
    /// registered (and priced), re-read while it runs.
    pub registered: std::sync::RwLock<Option<(u16, u16)>>,
}

/// A moving average of decode-step compute times, announced to gateways for routing.
#[derive(Debug, Default)]
pub struct DecodeTimer(std::sync::Mutex<Option<f64>>);

impl DecodeTimer {
    fn record(&self, ms: f64) {
        let mut avg = self.0.lock().expect("timer lock");
        *avg = Some(avg.map_or(ms, |a| 0.9 * a + 0.1 * ms));
    }

    /// Milliseconds per decode step, once measured.
    pub fn get(&self) -> Option<f64> {
        *self.0.lock().expect("timer lock")
    }
}

impl BlockServer {
    /// Answers requests until the network stops.
    pub async fn run(self: Arc<Self>, mut inbound: mpsc::Receiver<Inbound>) {
        while let Some(message) = inbound.recv().await {
            match message {
                Inbound::Request { peer, request, reply } => {
                    let step = self.answer(peer, request, None, Signing::Alone);
                    tokio::spawn(async move {
                        let _ = reply.send(step.await.0);
                    });
                }
                Inbound::Steps { peer, steps, reply } => self.answer_message(peer, steps, reply),
                Inbound::Announcement { .. } | Inbound::Evidence { .. } => {}
            }
        }
    }

    /// Answers a message of steps: each step as if alone, all of them concurrently (so that
    /// they batch), then signs the Ok answers once (`wire.md`, "Several steps in one
    /// message").
    fn answer_message(
        self: &Arc<Self>,
        peer: PeerId,
        steps: Steps,
        reply: oneshot::Sender<SealedAnswers>,
    ) {
        let room = AnswerRoom::default();
        // Each step takes its share of the room here, in the message's order.
        let answering: Vec<_> = steps
            .into_iter()
            .map(|step| tokio::spawn(self.answer(peer, step, Some(&room), Signing::WithMessage)))
            .collect();
        let attester = self.attester.clone();
        tokio::spawn(async move {
            let mut answers = Vec::with_capacity(answering.len());
            let mut signed = Vec::with_capacity(answering.len());
            for step in answering {
                // A step whose task died still has its place in the message.
                let (answer, leaf) = step.await.unwrap_or_else(|e| {
                    (refuse(ErrorCode::Internal, format!("inference task failed: {e}")), None)
                });
                answers.push(answer);
                signed.extend(leaf);
            }
            let seal = attester.seal(&signed);
            let _ = reply.send(SealedAnswers { answers, seal });
        });
    }

    /// The answer to one step, in its span, counted in the metrics: its size checked against
    /// the message's `room` now (in the message's order), the rest when awaited; an Ok answer
    /// signed alone, or returned unsigned with its `(requestHash, outputHash)` for its
    /// message's seal (hashed here, in the step's own task).
    fn answer(
        self: &Arc<Self>,
        peer: PeerId,
        request: Result<InferRequest, CodecError>,
        room: Option<&AnswerRoom>,
        signing: Signing,
    ) -> impl Future<Output = (InferResponse, Option<(B256, B256)>)> + Send + 'static {
        let answer_size = match &request {
            Ok(request) => self.check_answer_size(request, room),
            Err(_) => Ok(()),
        };
        let server = self.clone();
        // The gateway's session id is on the wire: its logs and this node's name the same
        // session.
        let (kind, session, position) = match &request {
            Ok(r) => (r.kind.name(), r.session, r.position),
            Err(_) => ("malformed", 0, 0),
        };
        let span = tracing::info_span!("step", %peer, session, kind, position);
        let step = async move {
            let started = Instant::now();
            let mut request_hash = None;
            let mut response = server.handle(peer, request, answer_size, &mut request_hash).await;
            let leaf = match (&mut response, request_hash) {
                (InferResponse::Ok { output, signature, .. }, Some(request_hash)) => {
                    let output_hash = keccak256(&payload_bytes(output));
                    match signing {
                        Signing::Alone => {
                            *signature = server.attester.attest(request_hash, output_hash);
                            None
                        }
                        Signing::WithMessage => Some((request_hash, output_hash)),
                    }
                }
                _ => None,
            };
            let took = started.elapsed();
            let outcome = match &response {
                InferResponse::Ok { .. } => {
                    tracing::debug!(ms = took.as_secs_f64() * 1e3, "answered");
                    StepOutcome::Answered
                }
                InferResponse::Err(e) => {
                    // Any peer can send refusable steps: at `debug`, so that it cannot fill
                    // the log (the metrics count them by code).
                    tracing::debug!(code = e.code.name(), "refused: {}", e.message);
                    StepOutcome::Refused(e.code.name())
                }
            };
            server.metrics.step(kind, outcome, took);
            if !server.answer_delay.is_zero() {
                tokio::time::sleep(server.answer_delay).await;
            }
            (response, leaf)
        };
        step.instrument(span)
    }

    /// The answer to one request, unsigned; `request_hash` is set once the request is
    /// admitted and paid for (the caller signs an Ok answer with it).
    pub async fn handle(
        self: &Arc<Self>,
        peer: PeerId,
        request: Result<InferRequest, CodecError>,
        answer_size: Result<(), WireError>,
        request_hash: &mut Option<B256>,
    ) -> InferResponse {
        let request = match request {
            Ok(request) => request,
            Err(e) => return refuse(ErrorCode::Malformed, format!("malformed request: {e}")),
        };
        let free = self.admission.admits(&peer).await;
        if !free && self.collector.is_none() {
            return refuse(
                ErrorCode::NotAdmitted,
                format!("peer {peer} is not admitted by this node"),
            );
        }
        if request.model_id != self.model_id {
            return refuse(
                ErrorCode::UnknownModel,
                format!("this node serves model 0x{}", hex::encode(self.model_id)),
            );
        }
        let last_served = self.first_block as usize + self.blocks.len() - 1;
        if request.first_block < self.first_block
            || request.last_block as usize > last_served
            || request.last_block < request.first_block
        {
            return refuse(
                ErrorCode::BlocksNotServed,
                format!(
                    "blocks {}-{} requested, this node serves {}-{last_served}",
                    request.first_block, request.last_block, self.first_block
                ),
            );
        }
        if let Some((first, last)) = *self.registered.read().expect("registered span")
            && !free
            && (request.first_block < first || request.last_block > last)
        {
            return refuse(
                ErrorCode::BlocksNotServed,
                format!(
                    "blocks {}-{} requested, this node is registered (and paid) for {first}-{last}",
                    request.first_block, request.last_block
                ),
            );
        }
        if let Err(refusal) = self.check_draft_step(&request) {
            return InferResponse::Err(refusal);
        }
        if let Err(refusal) = answer_size {
            return InferResponse::Err(refusal);
        }
        // Refused before payment and compute: a busy node or a peer over its quota costs
        // nobody anything.
        let _slot = match self.load.step_slot() {
            Ok(slot) => slot,
            Err(e) => return refuse(ErrorCode::Overloaded, e.to_string()),
        };
        let session = session_key(&peer, request.session);
        if let Err(e) = self.book(peer, session, &request) {
            return refuse(ErrorCode::Overloaded, e.to_string());
        }
        let charge = match &self.collector {
            Some(collector) if !free => {
                match collector.admit(peer, request.payment.as_ref(), step_units(&request)).await {
                    Ok(charge) => {
                        if let Some(paid) = &request.payment {
                            let (channel, amount) =
                                (paid.voucher.channel_id, paid.voucher.cumulative_amount);
                            tracing::info!(%channel, wei = %amount, "voucher received");
                            self.metrics.voucher_received();
                        }
                        Some(charge)
                    }
                    Err(e) => {
                        let Some(reason) = e.reason() else {
                            return refuse(ErrorCode::Internal, e.to_string());
                        };
                        let named = request.payment.as_ref().map(|p| p.voucher.channel_id);
                        let account = collector.account(peer, named).await;
                        return InferResponse::Err(WireError::payment(
                            reason,
                            e.to_string(),
                            account,
                        ));
                    }
                }
            }
            _ => None,
        };
        // Hashed only once admitted: a refused step is not signed.
        *request_hash = Some(request.request_hash());
        let (kind, wire_session, position) = (request.kind, request.session, request.position);
        let span_blocks = (request.last_block - request.first_block + 1) as f64;
        // What is announced is one position's cost: verify steps of several are not timed.
        let one_position = is_one_position(&request.payload);
        let server = self.clone();
        let started = std::time::Instant::now();
        let result = match self.batchable(&request) {
            Some(span) => {
                let (position, payload) = (request.position as usize, request.payload);
                let batched = match block_input(payload) {
                    Ok(input) => self.batcher.step(session, position, span, input).await,
                    Err(refusal) => return InferResponse::Err(refusal),
                };
                Ok(batched.map(Payload::Tensor).map_err(engine_refusal))
            }
            None => tokio::task::spawn_blocking(move || server.compute(session, request)).await,
        };
        if kind == StepKind::Decode && one_position && matches!(result, Ok(Ok(_))) {
            // Scaled to the whole span, which is what a route through this node uses.
            let full_span = self.blocks.len() as f64;
            self.decode_ms.record(started.elapsed().as_secs_f64() * 1e3 * full_span / span_blocks);
        }
        // A step that did not produce an answer is not paid for.
        if let (Some(collector), Some(charge)) = (&self.collector, charge)
            && !matches!(result, Ok(Ok(_)))
        {
            collector.refund(charge).await;
        }
        match result {
            Ok(Ok(mut output)) => {
                if let Some(cheat) = &self.cheat
                    && cheat.apply(&mut output)
                {
                    tracing::warn!(
                        "TESTING: perturbed the answer to session {wire_session} position \
                         {position} from {peer}"
                    );
                }
                match kind {
                    StepKind::Prefill => tracing::info!("session opened"),
                    StepKind::Close => tracing::info!("session closed"),
                    _ => {}
                }
                // The payer's account as it stands after this step, so that it sees (and can
                // settle) any difference from its own count.
                let account = match (&self.collector, charge) {
                    (Some(collector), Some(charge)) => {
                        collector.account(peer, Some(charge.channel)).await.map(Box::new)
                    }
                    _ => None,
                };
                // Signed by the caller, alone or with the others of its message.
                InferResponse::Ok { output, signature: [0; 65], account }
            }
            Ok(Err(e)) => InferResponse::Err(e),
            Err(e) => refuse(ErrorCode::Internal, format!("inference task failed: {e}")),
        }
    }

    /// The span (indices into `blocks`) of a step that goes to the batcher: a decode step
    /// (one new position) through batch-capable blocks, from an honest node (the lazy cheat
    /// runs its own shortened span).
    fn batchable(&self, request: &InferRequest) -> Option<(usize, usize)> {
        let one_position = is_one_position(&request.payload);
        let span = (
            (request.first_block - self.first_block) as usize,
            (request.last_block - self.first_block) as usize,
        );
        let batched = self.blocks[span.0..=span.1].iter().all(|b| b.is_batched());
        let lazy = self.cheat.as_ref().is_some_and(Cheat::is_lazy);
        (request.kind != StepKind::Close && one_position && batched && !lazy).then_some(span)
    }

    /// A draft step (and only it) carries a draft payload, asks for 1..=[`MAX_DRAFT_GUESSES`]
    /// guesses after at least one token, spans a whole model (token ids in, logits out), and
    /// stays within the context: checked before payment, so that a step failing halfway
    /// through its guesses (and refunded) cannot be provoked.
    fn check_draft_step(&self, request: &InferRequest) -> Result<(), WireError> {
        let bad = |why: &str| Err(WireError::new(ErrorCode::BadInput, why));
        match (&request.payload, request.kind) {
            (Payload::Draft { tokens, guesses }, StepKind::Draft) => {
                let first = &self.blocks[usize::from(request.first_block - self.first_block)];
                let last = &self.blocks[usize::from(request.last_block - self.first_block)];
                if !(first.is_first() && last.is_last()) {
                    return bad("a draft step runs the whole model: its first to its last block");
                }
                if tokens.is_empty() || !(1..=MAX_DRAFT_GUESSES).contains(guesses) {
                    return bad(&format!(
                        "a draft step feeds at least one token and asks for 1 to {MAX_DRAFT_GUESSES} guesses"
                    ));
                }
                let needed = request.position as usize + positions(&request.payload);
                if needed > first.max_positions() {
                    return bad(&format!(
                        "a draft step to {needed} positions exceeds the context length {}",
                        first.max_positions()
                    ));
                }
                Ok(())
            }
            (Payload::Draft { .. }, _) => bad("a draft payload is only for a draft step"),
            (_, StepKind::Draft) => bad("a draft step carries a draft payload"),
            _ => Ok(()),
        }
    }

    /// The bytes of values in the answer to `request` (`wire.md`, "Answers' size"): `[1, S, W]`
    /// float32 for a Tokens, Tensor or Masked payload of any kind but Close (`W` the output
    /// width of its span's last block), whatever the step's answer turns out to be; none for a
    /// Close, a draft payload (a few ids), or a span this node does not serve.
    fn answer_values(&self, request: &InferRequest) -> usize {
        let served = usize::from(request.last_block)
            .checked_sub(usize::from(self.first_block))
            .and_then(|index| self.blocks.get(index));
        match (&request.payload, served) {
            (Payload::Tokens(_) | Payload::Tensor(_) | Payload::Masked { .. }, Some(last))
                if request.kind != StepKind::Close =>
            {
                request.payload.positions().saturating_mul(last.output_width()).saturating_mul(4)
            }
            _ => 0,
        }
    }

    /// A step whose answer could not be sent is refused before payment and compute: alone,
    /// over what one answer may carry (a long prompt's logits; the client chunks it), or, in
    /// a message of steps, over what is left of the message's `room` after the steps before
    /// it (a step refused alone takes none of it).
    fn check_answer_size(
        &self,
        request: &InferRequest,
        room: Option<&AnswerRoom>,
    ) -> Result<(), WireError> {
        let values = self.answer_values(request);
        if values > MAX_ANSWER_VALUE_BYTES {
            return Err(WireError::new(
                ErrorCode::BadInput,
                format!(
                    "the answer to {} positions would carry {values} bytes of values, over the \
                     {MAX_ANSWER_VALUE_BYTES} one answer may: send fewer positions per step",
                    request.payload.positions()
                ),
            ));
        }
        if room.is_some_and(|room| !room.take(values)) {
            return Err(WireError::new(
                ErrorCode::BadInput,
                format!(
                    "with the answers to the steps before it in its message, this step's would \
                     carry more than the {MAX_MESSAGE_ANSWER_VALUE_BYTES} bytes of values one \
                     message's answers may: send it in another message, or alone"
                ),
            ));
        }
        Ok(())
    }

    /// Books the step against the peer's quota (a Close releases the session), and frees
    /// the caches of every session left idle past the TTL.
    fn book(&self, peer: PeerId, session: u64, request: &InferRequest) -> Result<(), Refusal> {
        let now = std::time::Instant::now();
        for idle in self.load.expire(now) {
            self.blocks.iter().for_each(|b| {
                b.close(idle);
            });
        }
        let steps = match &request.payload {
            payload @ (Payload::Tokens(_) | Payload::Tensor(_) | Payload::Draft { .. }) => {
                positions(payload)
            }
            // Encoder requests hold no cache; Close and malformed steps hold nothing.
            Payload::Masked { .. } | Payload::Empty => 0,
        };
        match request.kind {
            StepKind::Close => {
                self.load.release(&peer, session);
                Ok(())
            }
            _ if steps == 0 => Ok(()),
            _ => self.load.reserve(peer, session, request.position as usize + steps, now),
        }
    }

    fn compute(&self, session: u64, request: InferRequest) -> Result<Payload, WireError> {
        let span = request.first_block as usize - self.first_block as usize
            ..=request.last_block as usize - self.first_block as usize;
        let blocks = self.blocks[span].iter().map(|b| &**b);
        if request.kind == StepKind::Close {
            blocks.for_each(|b| {
                b.close(session);
            });
            return Ok(Payload::Empty);
        }
        if let Payload::Draft { tokens, guesses } = request.payload {
            let span: Vec<&BlockRunner> = blocks.collect();
            let position = request.position as usize;
            return guess(&span, session, position, tokens, guesses)
                .map(Payload::Tokens)
                .map_err(engine_refusal);
        }
        let output = match request.payload {
            Payload::Masked { input, attention_mask, token_type_ids } => {
                let mask = EncoderMask { attention_mask, token_type_ids };
                run_chain(blocks, block_input(*input)?, |block, input| block.encode(input, &mask))
            }
            payload => {
                let position = request.position as usize;
                let mut span: Vec<&BlockRunner> = blocks.collect();
                if self.cheat.as_ref().is_some_and(Cheat::is_lazy)
                    && span.last().is_some_and(|last| !last.is_last())
                {
                    if span.len() > 1 {
                        span.pop();
                    } else if matches!(payload, Payload::Tensor(_)) {
                        // Nothing left to run: the input goes back as the output.
                        return Ok(payload);
                    }
                }
                run_chain(span, block_input(payload)?, |block, input| {
                    block.forward(session, position, input)
                })
            }
        };
        output.map(Payload::Tensor).map_err(engine_refusal)
    }
}

/// A draft step through a whole model: `tokens` run at `position`, then the most likely
/// next token, fed back for the one after, `count` times. The session's cache ends holding
/// the tokens and every guess but the last, as a step of all of them would leave it.
fn guess(
    span: &[&BlockRunner],
    session: u64,
    mut position: usize,
    tokens: Vec<i64>,
    count: u16,
) -> Result<Vec<i64>, EngineError> {
    // A long context is fed in parts of at most as many positions as one answer's logits may
    // hold: only the last part's last row is used, and the whole context's logits at once
    // would take gigabytes for a few thousand tokens.
    let last = span.last().expect("a draft span has blocks");
    let part = (MAX_ANSWER_VALUE_BYTES / 4 / last.output_width().max(1)).max(1);
    let mut guesses = Vec::with_capacity(usize::from(count));
    let mut input = tokens;
    while guesses.len() < usize::from(count) {
        let mut logits = None;
        for fed in input.chunks(part) {
            let fed = fed.to_vec();
            let positions = fed.len();
            logits =
                Some(run_chain(span.iter().copied(), BlockInput::Tokens(fed), |block, input| {
                    block.forward(session, position, input)
                })?);
            position += positions;
        }
        let logits = logits.expect("a draft step feeds at least one token");
        let next = i64::from(argmax(logits.last_row()));
        guesses.push(next);
        input = vec![next];
    }
    Ok(guesses)
}

fn block_input(payload: Payload) -> Result<BlockInput, WireError> {
    match payload {
        Payload::Tokens(ids) => Ok(BlockInput::Tokens(ids)),
        Payload::Tensor(a) => Ok(BlockInput::Hidden(a)),
        Payload::Empty | Payload::Masked { .. } | Payload::Draft { .. } => {
            Err(WireError::new(ErrorCode::BadInput, "a step needs tokens or hidden states"))
        }
    }
}

/// Sessions are the requester's own: the cache key binds the session id to the peer, so no
/// peer can continue, overwrite or close another peer's session by guessing its id.
fn session_key(peer: &PeerId, session: u64) -> u64 {
    let mut preimage = peer.to_bytes();
    preimage.extend_from_slice(&session.to_le_bytes());
    let hash = keccak256(&preimage);
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// Whether a decoder step carries one new position (a plain decode step).
fn is_one_position(payload: &Payload) -> bool {
    match payload {
        Payload::Tokens(ids) => ids.len() == 1,
        Payload::Tensor(t) => t.shape().get(1) == Some(&1),
        Payload::Masked { .. } | Payload::Empty | Payload::Draft { .. } => false,
    }
}

fn refuse(code: ErrorCode, message: String) -> InferResponse {
    InferResponse::Err(WireError::new(code, message))
}

fn engine_refusal(e: EngineError) -> WireError {
    let code = match &e {
        EngineError::BadInput { .. }
        | EngineError::ContextOverflow { .. }
        | EngineError::WrongKind { .. } => ErrorCode::BadInput,
        EngineError::UnknownSession(_)
        | EngineError::SessionEvicted(_)
        | EngineError::PositionMismatch { .. } => ErrorCode::SessionLost,
        EngineError::CacheFull { .. } => ErrorCode::Overloaded,
        _ => ErrorCode::Internal,
    };
    WireError::new(code, e.to_string())
}
