//! Sends a challenge session along a route, step by step, as a gateway would — the same
//! messages through the same paid, checked [`HopClient`] — except that every hop gets the
//! validator's own reference input, so one faulty hop cannot make the next honest node look
//! faulty. Every answer is judged and counted for the hop's operator.

use alloy::primitives::Address;
use libp2p::PeerId;

use crate::gateway::{BadAnswer, HopClient, HopError, TermsBook};
use crate::net::codec::{InferRequest, Payload, StepKind};
use crate::route::Hop;
use crate::validate::{ChallengeRef, ChallengeSet, FaultEvidence, Judge, SignedStep, Verdict};

/// A wrong answer to a challenge, with what a fault report needs.
#[derive(Debug, Clone)]
pub struct Failure {
    pub peer: PeerId,
    pub challenge: ChallengeRef,
    /// The hop's signed steps of the session up to the wrong one: what the other validators
    /// re-execute. The last step is the wrong answer; `evidence.node` is the hop's operator.
    pub evidence: FaultEvidence,
    pub verdict: Verdict,
    /// Whether the node signed it for the epoch of the challenge set (one signed across an
    /// epoch boundary is wrong all the same, but no committed root covers it).
    pub reportable: bool,
}

/// What one challenge session found.
#[derive(Debug, Default)]
pub struct SessionOutcome {
    /// Answers judged right.
    pub passed: usize,
    /// Signed answers judged wrong: each can be reported.
    pub failures: Vec<Failure>,
    /// Answers refused before judging (malformed, or not signed by the operator for this
    /// epoch): counted as failed, not reportable.
    pub unsigned: Vec<(PeerId, BadAnswer)>,
    /// Why the session stopped early (a peer unreachable, a refusal): nothing was counted
    /// for the steps not sent.
    pub stopped: Option<String>,
}

/// Sends challenges and judges the answers.
pub struct Challenger<'a> {
    pub hops: &'a HopClient,
    pub judge: Judge,
    /// The operator of every routable peer (the directory's terms).
    pub operators: TermsBook,
}

impl Challenger<'_> {
    /// Runs session `index` of `set` (the challenge set of `epoch`) along `route` (which must
    /// cover every block), passing each judged answer to `record` with the hop's operator,
    /// then closes the session on every hop. Blocks on the network: call from a blocking
    /// thread.
    pub fn run(
        &self,
        set: &ChallengeSet,
        index: usize,
        route: &[Hop],
        epoch: u64,
        mut record: impl FnMut(Address, bool),
    ) -> SessionOutcome {
        let session = &set.sessions[index];
        let mut outcome = SessionOutcome::default();
        // Each hop's signed steps so far: the prefix of any fault evidence against it.
        let mut signed: Vec<Vec<SignedStep>> = vec![Vec::new(); route.len()];
        'steps: for step in &session.steps {
            for (at, hop) in route.iter().enumerate() {
                let Some(operator) = self.operator(&hop.peer) else {
                    outcome.stopped = Some(format!("no operator known for {}", hop.peer));
                    break 'steps;
                };
                let request = InferRequest {
                    model_id: set.model_id,
                    first_block: hop.first_block,
                    last_block: hop.last_block,
                    session: session.session,
                    position: step.position,
                    kind: step.kind,
                    payment: None,
                    payload: step.inputs[hop.first_block as usize].clone(),
                };
                let payload = request.payload.clone();
                match self.hops.call(hop, session.session, step.position, step.kind, payload) {
                    Ok(answer) => {
                        let Some(challenge) = set.find(&answer.request_hash).copied() else {
                            outcome.stopped = Some("a request outside the challenge set".into());
                            break 'steps;
                        };
                        let verdict = match &answer.output {
                            Payload::Tensor(output) => {
                                self.judge.judge(set.expected(&challenge), output)
                            }
                            _ => Verdict::Malformed,
                        };
                        record(operator, verdict.passed());
                        let signed_epoch = answer.epoch.unwrap_or(epoch);
                        signed[at].push(SignedStep {
                            request,
                            output: answer.output,
                            seal: answer.seal,
                            epoch: signed_epoch,
                        });
                        if verdict.passed() {
                            outcome.passed += 1;
                        } else {
                            let steps = signed[at].clone();
                            outcome.failures.push(Failure {
                                peer: hop.peer,
                                challenge,
                                evidence: FaultEvidence { node: operator, steps },
                                verdict,
                                reportable: answer.epoch == Some(epoch),
                            });
                        }
                    }
                    Err(HopError::Invalid(bad)) => {
                        record(operator, false);
                        outcome.unsigned.push((hop.peer, bad));
                        // The hop's cache now misses this step: the session cannot go on.
                        outcome.stopped =
                            Some(format!("{} answered without a valid signature", hop.peer));
                        break 'steps;
                    }
                    Err(
                        HopError::Peer(reason)
                        | HopError::SessionLost(reason)
                        | HopError::Incompatible(reason),
                    ) => {
                        outcome.stopped = Some(format!("{}: {reason}", hop.peer));
                        break 'steps;
                    }
                    Err(HopError::Fatal(e)) => {
                        outcome.stopped = Some(e.to_string());
                        break 'steps;
                    }
                }
            }
        }
        for hop in route {
            let _ = self.hops.call(hop, session.session, 0, StepKind::Close, Payload::Empty);
        }
        outcome
    }

    fn operator(&self, peer: &PeerId) -> Option<Address> {
        self.operators.lock().expect("terms").get(peer).map(|terms| terms.operator)
    }
}
