//! The gateway's side of inference: a model whose blocks run on remote nodes, chosen by the
//! route planner from the nodes staked on-chain, with failover that the caller never sees,
//! and every node on the route paid per token from the gateway's wallet.

mod directory;
mod draft;
mod hops;
mod remote;
mod verify;

pub use directory::{Directory, TermsBook};
pub use draft::{DRAFT_DEADLINE, DraftNodes, RemoteDrafter};
pub use hops::{Answer, HopClient, HopError};
pub use remote::{Failover, RemoteModel, RemoteModelConfig, RouteReport, RoutingStatus};
pub use verify::{BadAnswer, ExpectedShape, SignatureCheck};
