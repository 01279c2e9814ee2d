use alloy::primitives::{Address, B256};
use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};

use super::keccak256;

/// Why a signature does not recover to a signer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature must be 65 bytes (r ‖ s ‖ v), got {0}")]
    Length(usize),
    #[error("signature v must be 27 or 28, got {0}")]
    RecoveryByte(u8),
    #[error("signature s is not in the lower half of the curve order (malleable)")]
    HighS,
    #[error("signature does not recover to any public key")]
    Unrecoverable,
    #[error("private key is not a valid secp256k1 scalar")]
    InvalidKey,
}

/// A secp256k1 key that signs EIP-712 digests the way OpenZeppelin's `ECDSA.recover` expects.
#[derive(Clone)]
pub struct Eip712Signer {
    key: SigningKey,
    address: Address,
}

impl std::fmt::Debug for Eip712Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eip712Signer").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Eip712Signer {
    /// A signer from a 32-byte private key.
    pub fn from_bytes(secret: &B256) -> Result<Self, SignatureError> {
        let key =
            SigningKey::from_slice(secret.as_slice()).map_err(|_| SignatureError::InvalidKey)?;
        let address = address_of(key.verifying_key());
        Ok(Self { key, address })
    }

    /// The Ethereum address of this key.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs a 32-byte digest: `r ‖ s ‖ v` with low `s` and `v ∈ {27, 28}`.
    pub fn sign_digest(&self, digest: &B256) -> [u8; 65] {
        // k256 normalizes s to the lower half and adjusts the recovery id to match.
        let (signature, recovery_id) = self.key.sign_prehash_recoverable(digest.as_slice());
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&signature.to_bytes());
        out[64] = 27 + u8::from(recovery_id.is_y_odd());
        out
    }
}

/// The address that signed `digest`, with the same acceptance rules as OpenZeppelin's
/// `ECDSA.recover`: 65 bytes, low `s`, `v` of 27 or 28.
pub fn recover_signer(digest: &B256, signature: &[u8]) -> Result<Address, SignatureError> {
    let bytes: &[u8; 65] =
        signature.try_into().map_err(|_| SignatureError::Length(signature.len()))?;
    let v = bytes[64];
    if v != 27 && v != 28 {
        return Err(SignatureError::RecoveryByte(v));
    }
    let sig = Signature::from_slice(&bytes[..64]).map_err(|_| SignatureError::Unrecoverable)?;
    if sig.normalize_s() != sig {
        return Err(SignatureError::HighS);
    }
    let recovery_id = RecoveryId::new(v == 28, false);
    let key = VerifyingKey::recover_from_prehash(digest.as_slice(), &sig, recovery_id)
        .map_err(|_| SignatureError::Unrecoverable)?;
    Ok(address_of(&key))
}

fn address_of(key: &VerifyingKey) -> Address {
    let point = key.to_sec1_point(false);
    // Uncompressed SEC1: 0x04 ‖ x ‖ y; the address is the last 20 bytes of keccak(x ‖ y).
    Address::from_slice(&keccak256(&point.as_bytes()[1..])[12..])
}
