//! A node's libp2p identity.
//!
//! By default it is derived from the operator's secp256k1 key, so an operator manages one
//! secret: the registry binds the derived peer id to the operator address at registration.

use alloy::primitives::B256;
use libp2p::identity::{Keypair, PeerId};

use crate::eip712::keccak256;

/// The ed25519 libp2p keypair derived from an operator key:
/// `seed = keccak256("infergrid/node-identity/v1" ‖ operator_secret)`.
pub fn node_keypair(operator_secret: &B256) -> Keypair {
    let mut preimage = b"infergrid/node-identity/v1".to_vec();
    preimage.extend_from_slice(operator_secret.as_slice());
    let seed = keccak256(&preimage);
    Keypair::ed25519_from_bytes(seed.0).expect("any 32 bytes are an ed25519 secret")
}

/// The peer id of the identity derived from `operator_secret`.
pub fn node_peer_id(operator_secret: &B256) -> PeerId {
    node_keypair(operator_secret).public().to_peer_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_stable_and_key_specific() {
        let a = node_peer_id(&B256::repeat_byte(1));
        assert_eq!(a, node_peer_id(&B256::repeat_byte(1)));
        assert_ne!(a, node_peer_id(&B256::repeat_byte(2)));
        // An ed25519 peer id is an identity multihash of the 36-byte protobuf public key.
        assert_eq!(a.to_bytes().len(), 38);
    }
}
