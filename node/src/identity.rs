//! A node's libp2p identity.
//!
//! It is a secp256k1 key derived from the operator's key, so an operator manages one secret.
//! The registry accepts only secp256k1 peer ids, each with a signature by the peer id's own key
//! over the registering operator's address (`PeerIdOwnership`): a peer id cannot be registered
//! by anyone but the holder of its key, so no operator can claim another node's identity and
//! be admitted, routed to or paid in its place.

use std::sync::LazyLock;

use alloy::primitives::{Address, B256};
use libp2p::identity::{Keypair, PeerId, secp256k1};

use crate::eip712::{Domain, Eip712Signer, hash_static_struct, keccak256};

/// `keccak256("PeerIdOwnership(address operator)")`.
pub static PEER_ID_OWNERSHIP_TYPEHASH: LazyLock<B256> =
    LazyLock::new(|| keccak256(b"PeerIdOwnership(address operator)"));

/// The EIP-712 domain of a `NodeRegistry` deployment.
pub fn registry_domain(chain_id: u64, registry: Address) -> Domain {
    Domain { name: "InferGrid NodeRegistry", version: "1", chain_id, verifying_contract: registry }
}

/// The digest a peer id's key signs to let `operator` register it with the registry at
/// `registry` on chain `chain_id`; identical to `NodeRegistry.peerIdOwnershipDigest`.
pub fn peer_id_ownership_digest(chain_id: u64, registry: Address, operator: Address) -> B256 {
    registry_domain(chain_id, registry)
        .digest(hash_static_struct(*PEER_ID_OWNERSHIP_TYPEHASH, &[operator.into_word().0]))
}

/// A node's secp256k1 identity: its libp2p keypair, and the same secret as an EIP-712 signer
/// for the registry's ownership proof.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    keypair: Keypair,
    signer: Eip712Signer,
}

impl NodeIdentity {
    /// The identity derived from an operator key:
    /// `secret = keccak256("infergrid/node-identity/v2" ‖ operator_secret)`. A hash that is not
    /// a valid secp256k1 scalar (zero, or at least the curve order: probability about 2^-128)
    /// is hashed again, `secret = keccak256(secret)`, until it is one, so every operator key
    /// has exactly one identity.
    pub fn derive(operator_secret: &B256) -> Self {
        let mut preimage = b"infergrid/node-identity/v2".to_vec();
        preimage.extend_from_slice(operator_secret.as_slice());
        let mut secret = keccak256(&preimage);
        let signer = loop {
            match Eip712Signer::from_bytes(&secret) {
                Ok(signer) => break signer,
                Err(_) => secret = keccak256(secret.as_slice()),
            }
        };
        // libp2p applies the same scalar check libsecp256k1 just passed.
        let key = secp256k1::SecretKey::try_from_bytes(secret.0).expect("a valid scalar");
        Self { keypair: secp256k1::Keypair::from(key).into(), signer }
    }

    /// The libp2p keypair, for the node's swarm.
    pub fn keypair(&self) -> Keypair {
        self.keypair.clone()
    }

    /// The peer id: 39 bytes, the identity multihash of the compressed public key.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The 65-byte signature (`r ‖ s ‖ v`) by this identity's key over
    /// [`peer_id_ownership_digest`]: the `peerIdSignature` of `NodeRegistry.register` when
    /// `operator` registers this node.
    pub fn peer_id_ownership_signature(
        &self,
        chain_id: u64,
        registry: Address,
        operator: Address,
    ) -> [u8; 65] {
        self.signer.sign_digest(&peer_id_ownership_digest(chain_id, registry, operator))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eip712::recover_signer;

    #[test]
    fn derivation_is_stable_and_key_specific() {
        let a = NodeIdentity::derive(&B256::repeat_byte(1)).peer_id();
        assert_eq!(a, NodeIdentity::derive(&B256::repeat_byte(1)).peer_id());
        assert_ne!(a, NodeIdentity::derive(&B256::repeat_byte(2)).peer_id());
        // The form the registry accepts: identity multihash (0x00, 37 bytes) of the protobuf
        // PublicKey {Secp256k1, 33-byte compressed key}.
        let bytes = a.to_bytes();
        assert_eq!(bytes.len(), 39);
        assert_eq!(bytes[..6], [0x00, 0x25, 0x08, 0x02, 0x12, 0x21]);
        assert!(matches!(bytes[6], 0x02 | 0x03));
    }

    #[test]
    fn the_ownership_signature_recovers_to_the_peer_ids_key() {
        let identity = NodeIdentity::derive(&B256::repeat_byte(3));
        let (registry, operator) = (Address::repeat_byte(7), Address::repeat_byte(9));
        let signature = identity.peer_id_ownership_signature(31337, registry, operator);
        let digest = peer_id_ownership_digest(31337, registry, operator);
        // The address the contract derives from the peer id's compressed key.
        let key =
            libp2p::identity::PublicKey::try_decode_protobuf(&identity.peer_id().to_bytes()[2..])
                .unwrap()
                .try_into_secp256k1()
                .unwrap();
        let point = k256::ecdsa::VerifyingKey::from_sec1_bytes(&key.to_bytes()).unwrap();
        let uncompressed = point.to_sec1_point(false);
        let address = Address::from_slice(&keccak256(&uncompressed.as_bytes()[1..])[12..]);
        assert_eq!(recover_signer(&digest, &signature).unwrap(), address);
        // Bound to the operator and the deployment.
        assert_ne!(digest, peer_id_ownership_digest(31337, registry, Address::repeat_byte(8)));
        assert_ne!(digest, peer_id_ownership_digest(1, registry, operator));
    }
}
