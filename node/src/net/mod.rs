//! Networking: libp2p transport and discovery, and the inference wire protocol.

pub mod codec;
pub mod pieces;
mod protocol;
mod service;

pub use protocol::{INFER_PROTOCOL, InferCodec};
pub use service::{
    Announcement, Inbound, NetConfig, NetError, Network, PeerRtts, SWARM_ID, block_key, files_key,
    peer_of,
};
