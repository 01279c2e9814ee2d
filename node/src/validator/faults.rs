//! Fault reports and votes. The reporter files a report for a node's first wrong, reportable
//! answer in an epoch and publishes the evidence over the swarm until the vote ends; the
//! voter watches every report filed by others, waits for its evidence, checks it against the
//! chain, re-executes the request on its own blocks and votes by its own judgement.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::Failure;
use crate::chain::bindings::Validation;
use crate::chain::{Token, ValidationClient};
use crate::eip712::{Domain, keccak256};
use crate::engine::Pipeline;
use crate::net::Network;
use crate::net::codec::{Payload, payload_bytes};
use crate::serve::Cheat;
use crate::validate::{ChainClock, ChallengeSet, FaultEvidence, Judge, ReportedFault, Verdict};

/// A report's status in `Validation` (`FAULT_PENDING`).
const PENDING: u8 = 0;
/// How often evidence is published again while its report's vote runs.
const REPUBLISH: Duration = Duration::from_secs(4);
/// How often the voter looks for new reports.
const POLL: Duration = Duration::from_secs(2);
/// Most report keys the evidence pool holds, and candidates per key: a peer flooding the
/// topic can fill it, not grow it.
const POOL_KEYS: usize = 1024;
const POOL_CANDIDATES: usize = 4;

/// A wrong answer the challenge loop found, with the set that proves it.
pub struct FoundFault {
    pub epoch: u64,
    pub set: Arc<ChallengeSet>,
    pub failure: Failure,
}

/// A report's key: the node's operator and the reported request hash.
type ReportKey = (Address, B256);

/// Evidence heard over the swarm, not yet checked: per report key, what each publisher sent.
#[derive(Default)]
pub struct EvidencePool(Mutex<HashMap<ReportKey, Vec<(PeerId, FaultEvidence)>>>);

impl EvidencePool {
    /// Takes in a published message; malformed bytes are logged and dropped.
    pub fn offer(&self, from: PeerId, bytes: &[u8]) {
        let evidence = match FaultEvidence::decode(bytes) {
            Ok(evidence) => evidence,
            Err(e) => {
                tracing::warn!("malformed fault evidence from {from} dropped: {e}");
                return;
            }
        };
        let key = (evidence.node, evidence.reported().request.request_hash());
        let mut pool = self.0.lock().expect("evidence pool");
        if !pool.contains_key(&key) && pool.len() >= POOL_KEYS {
            // Keys nobody reported against are the flood; any one of them can go.
            let evict = *pool.keys().next().expect("the pool is full");
            pool.remove(&evict);
        }
        let candidates = pool.entry(key).or_default();
        if let Some(at) = candidates.iter().position(|(peer, _)| *peer == from) {
            candidates[at].1 = evidence;
        } else if candidates.len() < POOL_CANDIDATES {
            candidates.push((from, evidence));
        }
    }

    fn candidates(&self, key: &ReportKey) -> Vec<(PeerId, FaultEvidence)> {
        self.0.lock().expect("evidence pool").get(key).cloned().unwrap_or_default()
    }

    fn discard(&self, key: &ReportKey, from: PeerId) {
        if let Some(candidates) = self.0.lock().expect("evidence pool").get_mut(key) {
            candidates.retain(|(peer, _)| *peer != from);
        }
    }
}

/// What the reporter and the voter share.
#[derive(Clone)]
pub struct FaultDesk {
    pub validator: Address,
    pub validation: ValidationClient,
    pub token: Token,
    pub domain: Domain,
    pub time: ChainClock,
    pub net: Network,
    pub pipeline: Arc<Pipeline>,
    pub judge: Judge,
    pub report_bond: U256,
    pub vote_secs: u64,
    /// TESTING ONLY: before each genuine piece of evidence, publish a forged copy (its
    /// reported output changed), which other validators must refuse.
    pub forge_evidence: bool,
    pub metrics: crate::telemetry::ValidatorMetrics,
}

impl FaultDesk {
    /// Reports the first reportable wrong answer of each node in each epoch, until `found`
    /// closes.
    pub async fn run_reporter(self, mut found: mpsc::UnboundedReceiver<FoundFault>) {
        let mut reported: HashSet<(u64, Address)> = HashSet::new();
        while let Some(FoundFault { epoch, set, failure }) = found.recv().await {
            let node = failure.evidence.node;
            if !failure.reportable {
                tracing::info!(
                    "{node} answered a challenge of epoch {epoch} wrongly, signed for \
                     another epoch: counted, not reportable"
                );
                continue;
            }
            if !reported.insert((epoch, node)) {
                continue;
            }
            let reported_step = failure.evidence.reported();
            let evidence = Validation::Evidence {
                requestHash: reported_step.request.request_hash(),
                outputHash: keccak256(&payload_bytes(&reported_step.output)),
                nodeSignature: reported_step.seal.signature.to_vec().into(),
                answerProof: reported_step.seal.proof.clone(),
                expectedOutputHash: failure.challenge.expected_output_hash,
                proof: set.proof(&failure.challenge),
            };
            if !self.report_bond.is_zero()
                && let Err(e) =
                    self.token.approve(self.validation.address(), self.report_bond).await
            {
                tracing::warn!("cannot approve the report bond for {node}: {e}");
                reported.remove(&(epoch, node));
                continue;
            }
            match self.validation.report_fault(node, epoch, evidence).await {
                Ok(id) => {
                    tracing::info!(
                        "reported {node} (report {id}): epoch {epoch}, {:?}, session \
                         step {}; publishing the evidence",
                        failure.verdict,
                        failure.evidence.steps.len() - 1
                    );
                    self.metrics.report(true);
                    tokio::spawn(self.clone().publish_while_pending(id, failure.evidence));
                }
                Err(e) => {
                    tracing::warn!("reporting {node} for epoch {epoch} refused: {e}");
                    self.metrics.report(false);
                    reported.remove(&(epoch, node));
                }
            }
        }
    }

    /// Publishes `evidence` every few seconds while report `id` is pending and its vote open.
    async fn publish_while_pending(self, id: U256, evidence: FaultEvidence) {
        if self.forge_evidence {
            let mut forged = evidence.clone();
            let reported = forged.steps.last_mut().expect("evidence has steps");
            Cheat::perturbing(1.0, 1).apply(&mut reported.output);
            tracing::warn!("TESTING: publishing forged evidence for report {id}");
            let _ = self.net.publish_evidence(forged.encode()).await;
            // The genuine copy replaces it in each voter's pool: held back past a voter's next
            // poll, so that every voter that finds the report meanwhile checks the forged one.
            tokio::time::sleep(POLL + Duration::from_secs(1)).await;
        }
        let bytes = evidence.encode();
        loop {
            if let Err(e) = self.net.publish_evidence(bytes.clone()).await {
                tracing::warn!("publishing the evidence of report {id} failed: {e}");
                return;
            }
            tokio::time::sleep(REPUBLISH).await;
            match self.validation.fault_report(id).await {
                Ok(report) if report.status != PENDING => {
                    let outcome = status_name(report.status);
                    tracing::info!("report {id} against {} closed: {outcome}", report.node);
                    return;
                }
                Ok(report) if self.time.now() >= report.reportedAt + self.vote_secs => return,
                Ok(_) => {}
                Err(e) => tracing::warn!("reading report {id} failed (retrying): {e}"),
            }
        }
    }

    /// Votes on every report other validators file from now on, and closes those whose vote
    /// ran out. Runs forever; RPC failures are logged and retried.
    pub async fn run_voter(self, pool: Arc<EvidencePool>) {
        let mut seen = loop {
            match self.validation.fault_report_count().await {
                Ok(count) => break count,
                Err(e) => tracing::warn!("reading the report count failed (retrying): {e}"),
            }
            tokio::time::sleep(POLL).await;
        };
        let (mut open, mut voted): (Vec<U256>, HashSet<U256>) = (Vec::new(), HashSet::new());
        loop {
            tokio::time::sleep(POLL).await;
            match self.validation.fault_report_count().await {
                Ok(count) => {
                    open.extend((seen + 1..=count).map(U256::from));
                    seen = seen.max(count);
                }
                Err(e) => tracing::warn!("reading the report count failed (retrying): {e}"),
            }
            let mut still_open = Vec::with_capacity(open.len());
            for id in open {
                match self.consider(id, &pool, &mut voted).await {
                    Ok(true) => still_open.push(id),
                    Ok(false) => {
                        voted.remove(&id);
                    }
                    Err(e) => {
                        tracing::info!("report {id}: {e} (retrying)");
                        still_open.push(id);
                    }
                }
            }
            open = still_open;
        }
    }

    /// Votes on report `id` once its evidence is here, and closes it when its vote ran out
    /// without a quorum; returns whether it needs another look.
    async fn consider(
        &self,
        id: U256,
        pool: &EvidencePool,
        voted: &mut HashSet<U256>,
    ) -> Result<bool, crate::chain::ChainError> {
        let report = self.validation.fault_report(id).await?;
        if report.status != PENDING {
            return Ok(false);
        }
        if self.time.now() >= report.reportedAt + self.vote_secs {
            tracing::warn!("report {id}: its vote ran out without a quorum; closing it");
            if let Err(e) = self.validation.finalize_fault(id).await {
                tracing::warn!("closing report {id} refused: {e}");
            }
            return Ok(false);
        }
        if report.reporter == self.validator || voted.contains(&id) {
            return Ok(true);
        }
        let key = (report.node, report.requestHash);
        let candidates = pool.candidates(&key);
        if candidates.is_empty() {
            return Ok(true);
        }
        let Some(event) = self.validation.fault_reported(id).await? else {
            return Ok(true);
        };
        let reported = ReportedFault {
            node: report.node,
            epoch: report.epoch,
            request_hash: report.requestHash,
            output_hash: event.outputHash,
        };
        for (from, evidence) in candidates {
            if let Err(e) = evidence.check(&self.domain, &reported) {
                tracing::warn!("report {id}: evidence from {from} refused: {e}");
                pool.discard(&key, from);
                continue;
            }
            let verdict = self.reexecute(evidence).await;
            let guilty = match verdict {
                Some(Verdict::Pass { error }) => {
                    tracing::info!(
                        "report {id} against {}: re-executed, relative error {error:.2e} \
                         within tolerance {:.0e}: voting innocent",
                        report.node,
                        self.judge.tolerance
                    );
                    false
                }
                Some(wrong) => {
                    tracing::info!(
                        "report {id} against {}: re-executed, {wrong:?} (tolerance \
                         {:.0e}): voting guilty",
                        report.node,
                        self.judge.tolerance
                    );
                    true
                }
                None => {
                    pool.discard(&key, from);
                    continue;
                }
            };
            match self.validation.vote_on_fault(id, guilty).await {
                Ok(_) => {
                    tracing::info!("voted on report {id}");
                    self.metrics.vote(guilty);
                }
                Err(e) => tracing::warn!("vote on report {id} refused: {e}"),
            }
            voted.insert(id);
            return Ok(true);
        }
        Ok(true)
    }

    /// This validator's verdict on checked evidence, or `None` when its own engine cannot run
    /// it (logged).
    async fn reexecute(&self, evidence: FaultEvidence) -> Option<Verdict> {
        let (pipeline, judge) = (self.pipeline.clone(), self.judge);
        let result = tokio::task::spawn_blocking(move || {
            let own = evidence.reexecute(&pipeline, rand::random())?;
            Ok::<_, crate::engine::EngineError>(match &evidence.reported().output {
                Payload::Tensor(answer) => judge.judge(&own, answer),
                _ => Verdict::Malformed,
            })
        })
        .await;
        match result {
            Ok(Ok(verdict)) => Some(verdict),
            Ok(Err(e)) => {
                tracing::warn!("cannot re-execute evidence: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("re-execution failed: {e}");
                None
            }
        }
    }
}

fn status_name(status: u8) -> &'static str {
    match status {
        1 => "guilty: the node is slashed and jailed",
        2 => "rejected",
        3 => "superseded by an earlier conviction",
        _ => "pending",
    }
}
