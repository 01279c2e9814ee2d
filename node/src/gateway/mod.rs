//! The gateway's side of inference: a model whose blocks run on remote nodes, chosen by the
//! route planner from the nodes staked on-chain, with failover that the caller never sees.

mod directory;
mod remote;

pub use directory::Directory;
pub use remote::{Failover, RemoteModel, RemoteModelConfig, RouteReport};
