use std::sync::LazyLock;

use alloy::primitives::{Address, B256, U256};

use crate::eip712::{
    Domain, Eip712Signer, SignatureError, hash_static_struct, keccak256, recover_signer,
};

/// `keccak256("Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)")`.
pub static RESPONSE_TYPEHASH: LazyLock<B256> =
    LazyLock::new(|| keccak256(b"Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)"));

/// The EIP-712 domain of a `Validation` deployment.
pub fn validation_domain(chain_id: u64, validation: Address) -> Domain {
    Domain { name: "InferGrid Validation", version: "1", chain_id, verifying_contract: validation }
}

/// A node's signed statement "for the request hashing to `request_hash` I returned the output
/// hashing to `output_hash`, during `epoch`". It is the evidence a validator posts in a fault
/// report; the epoch ties it to the challenge root committed before that epoch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseAttestation {
    pub request_hash: B256,
    pub output_hash: B256,
    pub epoch: u64,
}

impl ResponseAttestation {
    /// The digest the node signs, identical to `Validation.responseDigest`.
    pub fn digest(&self, domain: &Domain) -> B256 {
        domain.digest(hash_static_struct(
            *RESPONSE_TYPEHASH,
            &[self.request_hash.0, self.output_hash.0, U256::from(self.epoch).to_be_bytes()],
        ))
    }

    /// Signs with the node operator's key.
    pub fn sign(&self, domain: &Domain, node: &Eip712Signer) -> [u8; 65] {
        node.sign_digest(&self.digest(domain))
    }

    /// The address that signed this attestation.
    pub fn signer(&self, domain: &Domain, signature: &[u8]) -> Result<Address, SignatureError> {
        recover_signer(&self.digest(domain), signature)
    }
}

/// A leaf of a validator's challenge-set Merkle tree, in OpenZeppelin's double-hash form:
/// `keccak256(keccak256(abi.encode(requestHash, expectedOutputHash)))`.
pub fn challenge_leaf(request_hash: B256, expected_output_hash: B256) -> B256 {
    let mut enc = [0u8; 64];
    enc[..32].copy_from_slice(request_hash.as_slice());
    enc[32..].copy_from_slice(expected_output_hash.as_slice());
    keccak256(keccak256(&enc).as_slice())
}
