//! The validator role at runtime: challenges sent through the swarm as ordinary paid
//! traffic, their answers judged and counted, and the evidence of wrong answers kept for
//! fault reports. The protocol pieces it builds on (challenge sets, the judge, result books,
//! attestations) are in [`crate::validate`].

mod challenger;

pub use challenger::{Challenger, Failure, SessionOutcome};
