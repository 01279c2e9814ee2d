//! Networking: libp2p transport and discovery, and the inference wire protocol.

/// Declares a fieldless enum carried on the wire as an integer of type `$repr`, with
/// `from_wire`, the variant a received value names (`None` for a value no variant has).
macro_rules! wire_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident: $repr:ty {
        $($(#[$variant_meta:meta])* $variant:ident = $value:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr($repr)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant = $value,)+
        }

        impl $name {
            /// The variant `value` names on the wire, if any.
            pub(crate) fn from_wire(value: $repr) -> Option<Self> {
                match value {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

pub mod codec;
mod hold;
pub mod nat;
mod outbox;
pub mod pieces;
mod protocol;
mod service;
pub mod steps;

pub use protocol::{INFER_PROTOCOL, InferCodec};
pub use service::{
    Announcement, InMessage, Inbound, NatConfig, NetConfig, NetError, Network, PeerRtts, SWARM_ID,
    StepAnswer, block_key, files_key, peer_of,
};
