//! The validator role at runtime: challenges sent through the swarm as ordinary paid
//! traffic, their answers judged and counted, results committed and revealed each epoch,
//! wrong answers reported with their evidence, and other validators' reports voted on by
//! re-executing them. The protocol pieces it builds on (challenge sets, the judge, result
//! books, attestations, evidence) are in [`crate::validate`].

mod challenger;
mod faults;
pub mod http;
mod rounds;
mod runner;

pub use challenger::{Challenger, Failure, SessionOutcome};
pub use faults::{EvidencePool, FaultDesk, FoundFault};
pub use rounds::{RoundEvent, RoundWindows, run_rounds};
pub use runner::{ChallengeLoop, ChallengeRate, random_route, sleep_until};
