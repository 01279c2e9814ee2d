//! EIP-712 typed-data hashing and secp256k1 signatures, done with `sha3` and libsecp256k1
//! directly so that the bytes a node checks are exactly the bytes the contracts hash
//! (`protocol-spec/payments.md`, `protocol-spec/validation.md`).

mod signer;

pub use signer::{Eip712Signer, SignatureError, recover_signer};

use alloy::primitives::{Address, B256, U256};
use sha3::{Digest, Keccak256};

/// Keccak-256 of `data`.
pub fn keccak256(data: &[u8]) -> B256 {
    B256::from_slice(&Keccak256::digest(data))
}

/// The `EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)`
/// of one deployed contract: binding a signature to a chain and a contract is what stops a
/// voucher from one deployment being replayed on another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: &'static str,
    pub version: &'static str,
    pub chain_id: u64,
    pub verifying_contract: Address,
}

impl Domain {
    const TYPE: &'static [u8] =
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";

    /// `hashStruct(domain)`, the domain separator.
    pub fn separator(&self) -> B256 {
        let mut enc = Vec::with_capacity(5 * 32);
        enc.extend_from_slice(keccak256(Self::TYPE).as_slice());
        enc.extend_from_slice(keccak256(self.name.as_bytes()).as_slice());
        enc.extend_from_slice(keccak256(self.version.as_bytes()).as_slice());
        enc.extend_from_slice(&U256::from(self.chain_id).to_be_bytes::<32>());
        enc.extend_from_slice(self.verifying_contract.into_word().as_slice());
        keccak256(&enc)
    }

    /// The digest a signer signs: `keccak256(0x1901 ‖ domainSeparator ‖ structHash)`.
    pub fn digest(&self, struct_hash: B256) -> B256 {
        let mut enc = [0u8; 66];
        enc[..2].copy_from_slice(&[0x19, 0x01]);
        enc[2..34].copy_from_slice(self.separator().as_slice());
        enc[34..].copy_from_slice(struct_hash.as_slice());
        keccak256(&enc)
    }
}

/// `hashStruct` of a struct whose members are all 32-byte static words.
pub fn hash_static_struct(type_hash: B256, words: &[[u8; 32]]) -> B256 {
    let mut enc = Vec::with_capacity(32 * (1 + words.len()));
    enc.extend_from_slice(type_hash.as_slice());
    for word in words {
        enc.extend_from_slice(word);
    }
    keccak256(&enc)
}
