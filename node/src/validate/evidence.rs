//! Fault evidence: what a reporting validator hands the other validators so that they can
//! vote on its report by re-executing the request themselves (`validation.md`, "Evidence
//! exchange").
//!
//! A report on-chain names only the request hash and the hash of the node's signed output.
//! To recompute the right answer a voter needs the request itself and, for a decode step,
//! the whole session before it: a node's output depends on its KV cache. So the evidence is
//! every step of the session the node answered on its span, up to the reported one, each with
//! the node's signed output. The signatures make the prefix binding: the node itself signed
//! that it received exactly these requests of this session, so a reporter cannot invent a
//! history under which an honest answer looks wrong.

use alloy::primitives::{Address, B256};

use crate::eip712::{Domain, keccak256};
use crate::engine::{Activation, BlockInput, EngineError, Pipeline, run_chain};
use crate::net::codec::{InferRequest, InferResponse, Payload, StepKind, payload_bytes};
use crate::validate::{AnswerSeal, MAX_ANSWER_PROOF, ResponseAttestation};

const MAGIC: &[u8; 4] = b"IGE3";
/// Most steps one piece of evidence carries (a session's steps on one span).
pub const MAX_EVIDENCE_STEPS: usize = 4096;

/// One step the node answered: the request (without payment), its output and the operator's
/// seal over it for `epoch` (its `Response` signature, or its message's `Responses`
/// signature and the answer's proof).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedStep {
    pub request: InferRequest,
    pub output: Payload,
    pub seal: AnswerSeal,
    pub epoch: u64,
}

impl SignedStep {
    fn attestation(&self) -> ResponseAttestation {
        ResponseAttestation {
            request_hash: self.request.request_hash(),
            output_hash: keccak256(&payload_bytes(&self.output)),
            epoch: self.epoch,
        }
    }
}

/// A fault report as the chain records it (`getFaultReport` and its `FaultReported` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedFault {
    pub node: Address,
    pub epoch: u64,
    pub request_hash: B256,
    pub output_hash: B256,
}

/// The steps of one session on one node's span, the last one reported.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultEvidence {
    /// The node's operator, who signed every step.
    pub node: Address,
    /// Never empty.
    pub steps: Vec<SignedStep>,
}

/// Evidence that cannot back a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("not fault evidence: {0}")]
    Malformed(String),
    #[error("the evidence does not match the report: {0}")]
    NotThisReport(&'static str),
    #[error("step {step} is not signed by the node's operator {node}")]
    Unsigned { step: usize, node: Address },
    #[error("the steps are not one session from its start: {0}")]
    NotOneSession(String),
}

impl FaultEvidence {
    /// The reported step.
    pub fn reported(&self) -> &SignedStep {
        self.steps.last().expect("evidence has steps")
    }

    /// `IGE3 | node (20) | steps (u32 LE) | per step: epoch (u64 LE), request length (u32 LE),
    /// request (wire encoding, no payment), response length (u32 LE), response (wire
    /// encoding of the output with the seal's signature), proof length (u8, at most
    /// [`MAX_ANSWER_PROOF`]), proof (32 bytes each)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(self.node.as_slice());
        out.extend_from_slice(&(self.steps.len() as u32).to_le_bytes());
        for step in &self.steps {
            out.extend_from_slice(&step.epoch.to_le_bytes());
            let request = InferRequest { payment: None, ..step.request.clone() }.encode();
            let response = InferResponse::Ok {
                output: step.output.clone(),
                signature: step.seal.signature,
                account: None,
            }
            .encode();
            for part in [request, response] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(&part);
            }
            out.push(u8::try_from(step.seal.proof.len()).expect("a proof of at most 6 siblings"));
            for sibling in &step.seal.proof {
                out.extend_from_slice(sibling.as_slice());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let malformed = |what: &str| EvidenceError::Malformed(what.to_owned());
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], EvidenceError> {
            if rest.len() < n {
                return Err(malformed("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(4)? != MAGIC {
            return Err(malformed("bad magic bytes"));
        }
        let node = Address::from_slice(take(20)?);
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        if count == 0 || count > MAX_EVIDENCE_STEPS {
            return Err(malformed("step count out of range"));
        }
        let mut steps = Vec::with_capacity(count);
        for _ in 0..count {
            let epoch = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let request = InferRequest::decode(take(len)?)
                .map_err(|e| EvidenceError::Malformed(format!("a request: {e}")))?;
            let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let (output, signature) = match InferResponse::decode(take(len)?) {
                Ok(InferResponse::Ok { output, signature, .. }) => (output, signature),
                Ok(InferResponse::Err(_)) => return Err(malformed("a step holds a refusal")),
                Err(e) => return Err(EvidenceError::Malformed(format!("a response: {e}"))),
            };
            let siblings = usize::from(take(1)?[0]);
            if siblings > MAX_ANSWER_PROOF {
                return Err(malformed("an answer's proof is too long"));
            }
            let proof =
                (0..siblings).map(|_| take(32).map(B256::from_slice)).collect::<Result<_, _>>()?;
            steps.push(SignedStep {
                request,
                output,
                seal: AnswerSeal { signature, proof },
                epoch,
            });
        }
        if !rest.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(Self { node, steps })
    }

    /// Checks that this evidence backs `report`: its last step is the reported request and
    /// output, signed for the reported epoch; every step is signed by the node; and the steps
    /// are one session on one span from its prefill on, positions following each other, so
    /// that re-executing them rebuilds exactly the cache the node answered from.
    pub fn check(&self, domain: &Domain, report: &ReportedFault) -> Result<(), EvidenceError> {
        let reported = self.reported();
        if self.node != report.node {
            return Err(EvidenceError::NotThisReport("another node"));
        }
        if reported.request.request_hash() != report.request_hash {
            return Err(EvidenceError::NotThisReport("another request"));
        }
        if keccak256(&payload_bytes(&reported.output)) != report.output_hash {
            return Err(EvidenceError::NotThisReport("another output"));
        }
        if reported.epoch != report.epoch {
            return Err(EvidenceError::NotThisReport("another epoch"));
        }
        let first = &self.steps[0].request;
        let mut position = 0u64;
        for (index, step) in self.steps.iter().enumerate() {
            let request = &step.request;
            let expected_kind = if index == 0 { StepKind::Prefill } else { StepKind::Decode };
            let not_one = |why: String| Err(EvidenceError::NotOneSession(why));
            if request.kind != expected_kind {
                return not_one(format!("step {index} is a {:?} step", request.kind));
            }
            if (request.model_id, request.first_block, request.last_block, request.session)
                != (first.model_id, first.first_block, first.last_block, first.session)
            {
                return not_one(format!("step {index} belongs to another session or span"));
            }
            if u64::from(request.position) != position {
                return not_one(format!("step {index} is at position {}", request.position));
            }
            if !matches!(request.payload, Payload::Tokens(_) | Payload::Tensor(_)) {
                return not_one(format!("step {index} carries no tokens or hidden states"));
            }
            position += request.payload.positions() as u64;
            let signer = step.attestation().sealed_by(domain, &step.seal);
            if signer.ok() != Some(self.node) {
                return Err(EvidenceError::Unsigned { step: index, node: self.node });
            }
        }
        Ok(())
    }

    /// The right answer to the reported step, recomputed: every step of the session through
    /// the voter's own blocks of the span, in a fresh cache `session` that is closed after.
    pub fn reexecute(&self, pipeline: &Pipeline, session: u64) -> Result<Activation, EngineError> {
        let first = &self.steps[0].request;
        let count = pipeline.blocks().len();
        let (from, to) = (first.first_block as usize, first.last_block as usize);
        if from > to || to >= count {
            return Err(EngineError::NoSuchBlock { index: to, count });
        }
        let blocks = &pipeline.blocks()[from..=to];
        let result = (|| {
            let mut output = None;
            for step in &self.steps {
                let input = match &step.request.payload {
                    Payload::Tokens(ids) => BlockInput::Tokens(ids.clone()),
                    Payload::Tensor(hidden) => BlockInput::Hidden(hidden.clone()),
                    _ => unreachable!("checked: every step carries tokens or hidden states"),
                };
                let position = step.request.position as usize;
                output = Some(run_chain(blocks, input, |block, input| {
                    block.forward(session, position, input)
                })?);
            }
            Ok(output.expect("evidence has steps"))
        })();
        for block in blocks {
            block.close(session);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eip712::Eip712Signer;

    fn domain() -> Domain {
        crate::validate::validation_domain(31337, Address::repeat_byte(1))
    }

    fn step(node: &Eip712Signer, position: u32, kind: StepKind, payload: Payload) -> SignedStep {
        let request = InferRequest {
            model_id: [7; 32],
            first_block: 1,
            last_block: 2,
            session: 42,
            position,
            kind,
            payment: None,
            payload,
        };
        let output = Payload::Tensor(Activation::new(vec![1, 1, 2], vec![0.5, -1.0]).unwrap());
        let mut step = SignedStep { request, output, seal: AnswerSeal::alone([0; 65]), epoch: 3 };
        step.seal = AnswerSeal::alone(step.attestation().sign(&domain(), node));
        step
    }

    fn hidden(rows: usize) -> Payload {
        Payload::Tensor(Activation::new(vec![1, rows, 2], vec![0.25; rows * 2]).unwrap())
    }

    fn session(node: &Eip712Signer) -> FaultEvidence {
        FaultEvidence {
            node: node.address(),
            steps: vec![
                step(node, 0, StepKind::Prefill, hidden(3)),
                step(node, 3, StepKind::Decode, hidden(1)),
                step(node, 4, StepKind::Decode, hidden(1)),
            ],
        }
    }

    fn report(evidence: &FaultEvidence) -> ReportedFault {
        let reported = evidence.reported().attestation();
        ReportedFault {
            node: evidence.node,
            epoch: reported.epoch,
            request_hash: reported.request_hash,
            output_hash: reported.output_hash,
        }
    }

    #[test]
    fn evidence_round_trips_and_checks_against_its_report() {
        let node = Eip712Signer::from_bytes(&B256::repeat_byte(5)).unwrap();
        let evidence = session(&node);
        let bytes = evidence.encode();
        assert_eq!(FaultEvidence::decode(&bytes).unwrap(), evidence);
        assert_eq!(evidence.check(&domain(), &report(&evidence)), Ok(()));
        // Every cut of the bytes, and trailing garbage, is refused without a panic.
        for cut in 0..bytes.len() {
            assert!(FaultEvidence::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(FaultEvidence::decode(&long).is_err());
        let mut empty = bytes[..24].to_vec();
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(FaultEvidence::decode(&empty), Err(EvidenceError::Malformed(_))));
    }

    #[test]
    fn forged_or_mismatched_evidence_is_refused() {
        let node = Eip712Signer::from_bytes(&B256::repeat_byte(5)).unwrap();
        let forger = Eip712Signer::from_bytes(&B256::repeat_byte(6)).unwrap();
        let evidence = session(&node);
        let report = report(&evidence);
        let refused = |evidence: &FaultEvidence| evidence.check(&domain(), &report).unwrap_err();

        // Another answer than the reported one.
        let mut other = evidence.clone();
        other.steps[2].output = hidden(1);
        assert_eq!(refused(&other), EvidenceError::NotThisReport("another output"));
        // A prefix step the node never signed (the forger's signature on a different input).
        let mut invented = evidence.clone();
        invented.steps[1] = step(&forger, 3, StepKind::Decode, hidden(1));
        invented.steps[1].request.payload = hidden(1);
        assert_eq!(refused(&invented), EvidenceError::Unsigned { step: 1, node: node.address() });
        // A history with a gap, or starting mid-session, cannot rebuild the node's cache.
        let mut gap = evidence.clone();
        gap.steps.remove(1);
        gap.steps[1] = step(&node, 4, StepKind::Decode, hidden(1));
        assert!(matches!(
            gap.check(&domain(), &super::tests::report(&gap)),
            Err(EvidenceError::NotOneSession(_))
        ));
        let tail = FaultEvidence { node: node.address(), steps: evidence.steps[1..].to_vec() };
        assert!(matches!(
            tail.check(&domain(), &super::tests::report(&tail)),
            Err(EvidenceError::NotOneSession(_))
        ));
        // Evidence about another node.
        let stranger = FaultEvidence { node: forger.address(), ..evidence.clone() };
        assert_eq!(refused(&stranger), EvidenceError::NotThisReport("another node"));
    }

    #[test]
    fn a_step_sealed_with_its_message_checks_by_its_proof() {
        use crate::validate::{answer_proofs, seal_answers};
        let node = Eip712Signer::from_bytes(&B256::repeat_byte(5)).unwrap();
        let mut evidence = session(&node);
        // The reported step was answered in one message with two other sessions' steps.
        let reported = evidence.reported().attestation();
        let answers = [
            (B256::repeat_byte(1), B256::repeat_byte(2)),
            (reported.request_hash, reported.output_hash),
            (B256::repeat_byte(3), B256::repeat_byte(4)),
        ];
        let signature = seal_answers(&domain(), &node, reported.epoch, &answers).unwrap();
        let proofs = answer_proofs(&answers);
        assert!(!proofs[1].is_empty());
        evidence.steps[2].seal = AnswerSeal { signature, proof: proofs[1].clone() };
        assert_eq!(FaultEvidence::decode(&evidence.encode()).unwrap(), evidence);
        assert_eq!(evidence.check(&domain(), &report(&evidence)), Ok(()));

        // Another answer's proof, or none, does not lead to what the node signed.
        let unsigned = EvidenceError::Unsigned { step: 2, node: node.address() };
        let mut wrong = evidence.clone();
        wrong.steps[2].seal.proof = proofs[0].clone();
        assert_eq!(wrong.check(&domain(), &report(&wrong)), Err(unsigned.clone()));
        wrong.steps[2].seal.proof.clear();
        assert_eq!(wrong.check(&domain(), &report(&wrong)), Err(unsigned));
        // A proof longer than any message's tree is not evidence.
        let mut long = evidence.clone();
        long.steps[2].seal.proof = vec![B256::ZERO; MAX_ANSWER_PROOF + 1];
        assert!(matches!(FaultEvidence::decode(&long.encode()), Err(EvidenceError::Malformed(_))));
    }
}
