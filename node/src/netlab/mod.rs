//! A laboratory of real networks on one Linux machine, for the NAT benchmark
//! (`infergrid bench swarm --nat`) and the NAT tests (root only):
//!
//! - [`namespaces`]: network namespaces on a public bridge, and home networks behind
//!   masquerading routers that drop what nobody inside asked for;
//! - [`process`]: `infergrid` processes started inside them, followed line by line and
//!   stopped whatever happens;
//! - [`topology`]: the swarm across NATs: chain, relay and a node on the public network, nodes
//!   at home, the gateway behind a NAT of its own.

pub mod namespaces;
pub mod process;
pub mod topology;

pub use namespaces::{Host, Lab, Mapping};
pub use process::Proc;
pub use topology::{Layout, RelayKind, Topology};

/// What can go wrong building or running a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what} exited before it was ready: {detail}")]
    Exited { what: String, detail: String },
    #[error("{what}: nothing in {seconds} s: {detail}")]
    Timeout { what: String, seconds: u64, detail: String },
    #[error("{what}: {detail}")]
    Unexpected { what: String, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
