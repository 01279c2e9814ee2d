//! Validation: what a node attests about its answers, so a validator can prove a fault.

mod epoch;
mod merkle;
mod response;

pub use epoch::{ChainClock, EpochClock};
pub use merkle::{ChallengeTree, fold_proof};
pub use response::{ResponseAttestation, challenge_leaf, validation_domain};
