//! Weights travel the swarm (`model-format.md`, "Pieces"; `wire.md`, "Pieces"): every node
//! seeds the manifest and the pieces of the files it holds, and a node with an empty disk
//! fetches its blocks from those peers, checking every piece against the model id.

pub mod fetch;
pub mod placement;
pub mod providers;
mod seed;

pub use fetch::{FetchError, FetchProgress, FetchReport, Provider, fetch, fetch_manifest};
pub use seed::{NoPieces, Seed};
