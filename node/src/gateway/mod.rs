//! The gateway's side of inference: a model whose blocks run on remote nodes, chosen by the
//! route planner, with failover that the caller never sees.

mod remote;

pub use remote::{Failover, RemoteModel, RemoteModelConfig};
