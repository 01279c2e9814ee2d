//! Validation: what a node attests about its answers, so a validator can prove a fault, and
//! how a validator judges them.

mod challenge;
mod epoch;
mod evidence;
mod judge;
mod merkle;
mod response;
mod results;

pub use challenge::{ChallengeRef, ChallengeSession, ChallengeSet, ChallengeStep};
pub use epoch::{ChainClock, EpochClock};
pub use evidence::{EvidenceError, FaultEvidence, MAX_EVIDENCE_STEPS, ReportedFault, SignedStep};
pub use judge::{DEFAULT_TOLERANCE, Judge, Verdict, relative_error};
pub use merkle::{MerkleTree, fold_proof};
pub use response::{
    AnswerSeal, MAX_ANSWER_PROOF, ResponseAttestation, SealMemo, answer_leaf, answer_proofs,
    challenge_leaf, responses_digest, seal_answers, validation_domain,
};
pub use results::{NodeResult, ResultBook, ResultBookError, Sent, Stage};
