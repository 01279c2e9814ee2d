//! One step to one hop, paid and checked: what a gateway does for every hop of a route, and
//! what a validator does for every challenge it sends — the same messages and the same
//! payments, so that a node cannot tell a challenge from a user's request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};

use super::TermsBook;
use super::remote::RemoteModelConfig;
use super::verify::{BadAnswer, ExpectedShape, SignatureCheck};
use crate::blocking::{STALLING_BYTES, without_stalling};
use crate::eip712::keccak256;
use crate::engine::EngineError;
use crate::net::codec::payload_bytes;
use crate::net::codec::{Account, ErrorCode, InferRequest, InferResponse, Payload, StepKind};
use crate::net::{InMessage, NetError, Network, StepAnswer};
use crate::pay::meter::step_units;
use crate::pay::{NodeTerms, SignedVoucher, Tab, Wallet};
use crate::route::{Bans, Candidate, Hop};
use crate::telemetry::GatewayMetrics;
use crate::validate::{AnswerSeal, SealMemo};

/// How long a node never heard from gets to answer a ping before it is paid (see
/// [`HopClient::call_async`]): the directory dials every node it lists, and a reachable one answers
/// its first ping within a round trip of the connection.
const FIRST_CONTACT: Duration = Duration::from_secs(3);

/// An answer's bytes besides its payload, with room to spare: status, signature, the node's
/// account (`wire.md`, "InferResponse").
const ANSWER_HEADER: usize = 512;

/// Why a hop failed.
#[derive(Debug)]
pub enum HopError {
    /// The peer is unusable (network failure, overload): fail over.
    Peer(String),
    /// The peer no longer holds the session (evicted, restarted): fail over, or start the
    /// session again.
    SessionLost(String),
    /// The peer speaks another protocol version: fail over, and leave it out of routes
    /// without banning it (it did nothing wrong, and may upgrade).
    Incompatible(String),
    /// The peer answered, but not with a well-formed answer its operator signed: the peer is
    /// forbidden and the answer unpaid.
    Invalid(BadAnswer),
    /// The request itself is wrong: failing over would not help.
    Fatal(Box<EngineError>),
}

/// A checked answer, with what a fault report needs.
#[derive(Debug, Clone)]
pub struct Answer {
    pub output: Payload,
    /// The operator's signature over `request_hash` and the output: alone, or with the
    /// other answers of its message and this one's proof.
    pub seal: AnswerSeal,
    pub request_hash: B256,
    /// The epoch the operator signed for, when this client checks signatures.
    pub epoch: Option<u64>,
    /// The node's account of this client's channel after the step, from a paid node.
    pub account: Option<Box<Account>>,
}

/// Sends steps to hops of one model over the swarm.
pub struct HopClient {
    net: Network,
    runtime: tokio::runtime::Handle,
    model_id: [u8; 32],
    num_blocks: u16,
    hidden_size: usize,
    output_width: usize,
    bans: Mutex<Bans>,
    pub(super) payer: Option<(Arc<Wallet>, TermsBook)>,
    pub(super) signatures: Option<SignatureCheck>,
    pub(super) metrics: Option<GatewayMetrics>,
    /// Testing only: answers to decode steps still to be thrown away as if lost on the way.
    drop_answers: AtomicU64,
}

impl HopClient {
    /// A client for the model of `config`, neither paying nor checking signatures. Must be
    /// created inside a tokio runtime: [`HopClient::call_async`] runs on it, and
    /// [`HopClient::call`] blocks on it (from blocking threads).
    pub fn new(net: Network, config: &RemoteModelConfig) -> Self {
        Self {
            net,
            runtime: tokio::runtime::Handle::current(),
            model_id: config.model_id,
            num_blocks: config.num_blocks,
            hidden_size: config.hidden_size,
            output_width: config.output_width,
            bans: Mutex::new(Bans::default()),
            payer: None,
            signatures: None,
            metrics: None,
            drop_answers: AtomicU64::new(0),
        }
    }

    /// TESTING ONLY: throws away the next `count` answers to paid decode steps as if they
    /// were lost on the way (after the node metered them), to exercise reconciliation.
    pub fn drop_answers(&self, count: u64) {
        self.drop_answers.store(count, Ordering::Relaxed);
    }

    /// Pays every node from `wallet`, at the prices in `terms`.
    pub fn paying(mut self, wallet: Arc<Wallet>, terms: TermsBook) -> Self {
        self.payer = Some((wallet, terms));
        self
    }

    /// Refuses answers not signed by the operator registered for the peer.
    pub fn verifying(mut self, signatures: SignatureCheck) -> Self {
        self.signatures = Some(signatures);
        self
    }

    /// How each connected peer is reached: directly or through a relay.
    pub fn paths(&self) -> Vec<(libp2p::PeerId, crate::net::nat::Path)> {
        self.net.paths().all()
    }

    /// This gateway's libp2p peer id.
    pub fn local_peer(&self) -> libp2p::PeerId {
        self.net.local_peer()
    }

    /// Relayed connections open now, all peers together.
    pub fn relayed_connections(&self) -> usize {
        self.net.paths().relayed_connections()
    }

    /// libp2p peers with an open connection now.
    pub fn connected_peers(&self) -> usize {
        self.net.connected_peers()
    }

    /// Peers that failed, and those forbidden.
    pub fn bans(&self) -> MutexGuard<'_, Bans> {
        self.bans.lock().expect("bans")
    }

    /// The runtime this client's network runs on.
    pub(super) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// [`HopClient::call_async`], from a thread that may block (not a runtime worker).
    pub fn call(
        &self,
        hop: &Hop,
        session: u64,
        position: u32,
        kind: StepKind,
        payload: Payload,
    ) -> Result<Answer, HopError> {
        self.runtime.block_on(self.call_async(hop, session, position, kind, payload))
    }

    /// Sends one step to one hop, paying for it when this client pays, and checks the answer
    /// (shape and values, and the operator's signature when this client verifies). An answer
    /// failing its checks is `HopError::Invalid` and unpaid; a malformed one forbids the peer
    /// for good, a signature that does not check backs it off. A node never heard from is
    /// not paid (nor a channel opened to it) until it answers a ping.
    pub async fn call_async(
        &self,
        hop: &Hop,
        session: u64,
        position: u32,
        kind: StepKind,
        payload: Payload,
    ) -> Result<Answer, HopError> {
        // Encoder steps are whole requests; decoder requests settle on their Close step.
        let settle = kind == StepKind::Close || matches!(payload, Payload::Masked { .. });
        let mut request = InferRequest {
            model_id: self.model_id,
            first_block: hop.first_block,
            last_block: hop.last_block,
            session,
            position,
            kind,
            payment: None,
            payload,
        };
        let units = step_units(&request);
        let terms = self.terms(hop)?;
        if let Some(terms) = terms {
            self.reachable_before_paying(hop, terms).await?;
            // An encoder request is whole (no Close step follows to settle it), so it is paid
            // with its own voucher, ahead of the answer.
            let ahead = matches!(request.payload, Payload::Masked { .. });
            request.payment = self.voucher(terms, units, settle, ahead).await?;
            if let (Some(metrics), Some(_)) = (&self.metrics, &request.payment) {
                metrics.voucher_signed();
            }
        }
        let expected = (kind != StepKind::Close)
            .then(|| ExpectedShape::of(&request.payload, self.output_width(hop.last_block)));
        let sent = Instant::now();
        let (result, lost) = self.exchange(hop, terms, request, expected).await;
        if result.is_ok() {
            let took = sent.elapsed();
            tracing::debug!(
                peer = %hop.peer, first_block = hop.first_block, last_block = hop.last_block,
                position, kind = kind.name(), ms = took.as_secs_f64() * 1e3, "hop answered"
            );
            if let Some(metrics) = &self.metrics {
                metrics.hop(hop.first_block, hop.last_block, took);
            }
        }
        // The step is in flight from its voucher until here: answered and checked, it is
        // owed; refused, the node refunds it; unanswered, the node may have metered it, and
        // its account will tell.
        if let (Some(terms), Some((wallet, _))) = (terms, &self.payer) {
            let operator = terms.operator;
            match &result {
                Ok(answer) => wallet.record(terms, units, answer.account.as_deref()).await,
                Err(_) if lost => wallet.lose(operator, units).await,
                Err(_) => wallet.release(operator, units).await,
            }
        }
        result
    }

    /// Sends a step (paid by `terms` when set) and checks its answer; a `PaymentRequired`
    /// refusal of a paid step is answered with a voucher for everything in flight and the
    /// step sent once more. Also says whether the answer was lost: no answer came (a
    /// timeout, a dropped stream), so the node may have run the step.
    async fn exchange(
        &self,
        hop: &Hop,
        terms: Option<NodeTerms>,
        request: InferRequest,
        expected: Option<ExpectedShape>,
    ) -> (Result<Answer, HopError>, bool) {
        // Only a paid step can be refused for payment and retried; only it keeps a copy.
        let retry = terms.is_some().then(|| request.clone());
        let (request_hash, units, kind) =
            (request.request_hash(), step_units(&request), request.kind);
        // Steps of other sessions to the same node may share its message.
        let answer_bytes = ANSWER_HEADER + expected.map_or(0, |shape| shape.payload_bytes());
        let mut response = self.net.step(hop.peer, request, request_hash, answer_bytes).await;
        if let (
            Some(terms),
            Some(mut request),
            Ok(StepAnswer { response: InferResponse::Err(e), .. }),
        ) = (terms, retry, &response)
            && e.code == ErrorCode::PaymentRequired
        {
            // The node may have restarted, keeps a smaller credit, or got this run's vouchers
            // out of order: pay for everything in flight now and retry once.
            match self.repay(terms, units, e.account.as_deref()).await {
                Ok(voucher) => request.payment = Some(voucher),
                Err(e) => return (Err(e), false),
            }
            if let Some(metrics) = &self.metrics {
                metrics.voucher_signed();
            }
            response = self.net.step(hop.peer, request, request_hash, answer_bytes).await;
        }
        if kind == StepKind::Decode
            && terms.is_some()
            && matches!(response, Ok(StepAnswer { response: InferResponse::Ok { .. }, .. }))
            && self
                .drop_answers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            tracing::warn!(peer = %hop.peer, "TESTING: dropped the answer as if lost on the way");
            return (Err(HopError::Peer("TESTING: answer dropped on the way".into())), true);
        }
        let lost = matches!(response, Err(ref e) if e.may_have_run());
        (self.judge(hop, expected, request_hash, response), lost)
    }

    /// What a response means for the step: a checked answer, or why it failed.
    fn judge(
        &self,
        hop: &Hop,
        expected: Option<ExpectedShape>,
        request_hash: B256,
        response: Result<StepAnswer, NetError>,
    ) -> Result<Answer, HopError> {
        let (response, in_message) = match response {
            Ok(StepAnswer { response, in_message }) => (Ok(response), in_message),
            Err(e) => (Err(e), None),
        };
        match response {
            Ok(InferResponse::Ok { output, signature, account }) => {
                let (seal, hashed) = match in_message {
                    Some(InMessage { proof, output_hash, memo }) => {
                        (AnswerSeal { signature, proof }, Some((output_hash, memo)))
                    }
                    None => (AnswerSeal::alone(signature), None),
                };
                let checked =
                    self.check_answer(hop, expected, request_hash, &output, &seal, hashed);
                let epoch = match checked {
                    Ok(epoch) => epoch,
                    Err(bad) => {
                        // Not used and not paid for. A malformed answer is nothing an honest
                        // node sends: it is not asked again. A signature that does not check
                        // may be clock skew around an epoch boundary, or a directory refresh
                        // racing the answer: the peer backs off like a failed one.
                        if bad.is_malformed() {
                            tracing::warn!(peer = %hop.peer, "banned for good: {bad}");
                            self.bans().forbid(hop.peer);
                        } else {
                            tracing::warn!(peer = %hop.peer, "refused its answer: {bad}");
                            self.bans().fail(hop.peer);
                        }
                        return Err(HopError::Invalid(bad));
                    }
                };
                self.bans().succeed(&hop.peer);
                Ok(Answer { output, seal, request_hash, epoch, account })
            }
            Ok(InferResponse::Err(e)) if e.code == ErrorCode::BadInput => {
                Err(HopError::Fatal(Box::new(EngineError::BadInput {
                    block: hop.first_block as usize,
                    reason: e.message,
                })))
            }
            Ok(InferResponse::Err(e)) if e.is_retired_version() => {
                Err(HopError::Incompatible(e.to_string()))
            }
            Ok(InferResponse::Err(e)) if e.code == ErrorCode::SessionLost => {
                Err(HopError::SessionLost(e.to_string()))
            }
            Ok(InferResponse::Err(e)) => Err(HopError::Peer(e.to_string())),
            Err(e @ NetError::Unsupported { .. }) => Err(HopError::Incompatible(e.to_string())),
            Err(e) => Err(HopError::Peer(e.to_string())),
        }
    }

    /// A node this run has no channel to yet is paid only once it has answered a ping
    /// (waiting up to [`FIRST_CONTACT`] for one): opening its channel deposits funds, which a
    /// node nobody can reach must not lock up until the channel's close window ends.
    async fn reachable_before_paying(&self, hop: &Hop, terms: NodeTerms) -> Result<(), HopError> {
        let (wallet, _) = self.payer.as_ref().expect("only called when paying");
        if wallet.has_channel(terms.operator).await {
            return Ok(());
        }
        let deadline = Instant::now() + FIRST_CONTACT;
        while self.net.rtts().get(&hop.peer).is_none() {
            if Instant::now() >= deadline {
                return Err(HopError::Peer(format!(
                    "unreachable: no answer to a ping in {} s, so no channel was opened to it",
                    FIRST_CONTACT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The width of the output of a span ending at `last_block`.
    fn output_width(&self, last_block: u16) -> usize {
        if last_block + 1 == self.num_blocks { self.output_width } else { self.hidden_size }
    }

    /// An answer's shape and values (`expected`, none for a Close) and signature (an answer
    /// of a message of several with its output's hash and its message's memo).
    fn check_answer(
        &self,
        hop: &Hop,
        expected: Option<ExpectedShape>,
        request_hash: alloy::primitives::B256,
        output: &Payload,
        seal: &AnswerSeal,
        in_message: Option<(B256, Arc<SealMemo>)>,
    ) -> Result<Option<u64>, BadAnswer> {
        let checks = || {
            if let Some(expected) = expected {
                expected.check(output)?;
            }
            let Some(check) = &self.signatures else { return Ok(None) };
            // An answer of a message was hashed for its proof already.
            let (output_hash, memo) = match in_message {
                Some((output_hash, memo)) => (output_hash, Some(memo)),
                None => (keccak256(&payload_bytes(output)), None),
            };
            check.check(&hop.peer, request_hash, output_hash, seal, memo.as_deref()).map(Some)
        };
        // A decode step's answer is checked in microseconds; a prefill chunk's logits (up to
        // the message limit) take far longer to scan and hash, off the runtime's worker.
        if expected.is_some_and(|shape| shape.payload_bytes() > STALLING_BYTES) {
            without_stalling(checks)
        } else {
            checks()
        }
    }

    /// What this client owes each node it paid, when it pays.
    pub fn tabs(&self) -> Option<Vec<Tab>> {
        let (wallet, _) = self.payer.as_ref()?;
        Some(self.runtime.block_on(wallet.tabs()))
    }

    /// The on-chain terms of a hop's node, when this gateway pays.
    fn terms(&self, hop: &Hop) -> Result<Option<NodeTerms>, HopError> {
        let Some((_, book)) = &self.payer else { return Ok(None) };
        match book.lock().expect("terms").get(&hop.peer) {
            Some(terms) => Ok(Some(*terms)),
            None => Err(HopError::Peer(format!("no on-chain price known for {}", hop.peer))),
        }
    }

    async fn voucher(
        &self,
        terms: NodeTerms,
        units: u64,
        settle: bool,
        force: bool,
    ) -> Result<Option<SignedVoucher>, HopError> {
        let (wallet, _) = self.payer.as_ref().expect("only called when paying");
        wallet.voucher(terms, units, settle, force).await.map_err(|e| cannot_pay(&terms, e))
    }

    async fn repay(
        &self,
        terms: NodeTerms,
        units: u64,
        account: Option<&Account>,
    ) -> Result<SignedVoucher, HopError> {
        let (wallet, _) = self.payer.as_ref().expect("only called when paying");
        wallet.repay(terms, units, account).await.map_err(|e| cannot_pay(&terms, e))
    }

    /// Asks the node of `hop` for its account of this client's channel and pays what is
    /// agreed, for nodes an answer to was lost (or whose account was taken and not paid
    /// yet) and that have nothing in flight: a free Close step of an unused session carries
    /// the voucher due, and its answer the node's account (`payments.md`, "Reconciliation").
    pub fn settle_accounts(&self, hop_of: impl Fn(Address) -> Option<Hop>) {
        let Some((wallet, _)) = &self.payer else { return };
        for operator in self.runtime.block_on(wallet.unsettled()) {
            let Some(hop) = hop_of(operator) else { continue };
            let session = rand::random::<u64>();
            match self.call(&hop, session, 0, StepKind::Close, Payload::Empty) {
                Ok(_) => tracing::debug!(peer = %hop.peer, "asked for its account"),
                Err(e) => tracing::debug!(peer = %hop.peer, "asking for its account failed: {e:?}"),
            }
        }
    }

    /// [`HopClient::settle_accounts`] for the nodes among `candidates`.
    pub fn settle_accounts_among(&self, candidates: &[Candidate]) {
        self.settle_accounts(|operator| {
            candidates.iter().find_map(|c| {
                (self.operator_of(&c.peer) == Some(operator)).then_some(Hop {
                    peer: c.peer,
                    first_block: c.first_block,
                    last_block: c.last_block,
                })
            })
        });
    }

    /// The operator of a routable peer, as last read from the registry.
    pub fn operator_of(&self, peer: &libp2p::PeerId) -> Option<Address> {
        let (_, book) = self.payer.as_ref()?;
        book.lock().expect("terms").get(peer).map(|t| t.operator)
    }
}

/// A wallet that cannot pay fails the step without failover: another node would not help.
fn cannot_pay(terms: &NodeTerms, e: crate::pay::WalletError) -> HopError {
    HopError::Fatal(Box::new(EngineError::Run {
        block: 0,
        reason: format!("cannot pay node {}: {e}", terms.operator),
    }))
}
