//! secp256k1 through libsecp256k1 (Bitcoin Core's C library): a gateway signs a voucher and
//! recovers a node's response signature on every hop of every token, and a node does the
//! converse, so this is the hottest code off the model; libsecp256k1 does both several times
//! faster than the pure-Rust `k256`. Nonces are RFC 6979, so signatures are deterministic and
//! equal to any other RFC 6979 implementation's (the tests check them against `k256`).

use alloy::primitives::{Address, B256};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, SECP256K1, SecretKey};

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
    key: SecretKey,
    address: Address,
}

impl std::fmt::Debug for Eip712Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eip712Signer").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Drop for Eip712Signer {
    /// Overwrites the secret, so that it does not linger in freed memory.
    fn drop(&mut self) {
        self.key.non_secure_erase();
    }
}

impl Eip712Signer {
    /// A signer from a 32-byte private key.
    pub fn from_bytes(secret: &B256) -> Result<Self, SignatureError> {
        let key = SecretKey::from_byte_array(secret.0).map_err(|_| SignatureError::InvalidKey)?;
        let address = address_of(&PublicKey::from_secret_key(SECP256K1, &key));
        Ok(Self { key, address })
    }

    /// The Ethereum address of this key.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs a 32-byte digest: `r ‖ s ‖ v` with low `s` and `v ∈ {27, 28}`.
    pub fn sign_digest(&self, digest: &B256) -> [u8; 65] {
        // libsecp256k1 always produces the lower-half s, with the recovery id to match.
        let signature = SECP256K1.sign_ecdsa_recoverable(Message::from_digest(digest.0), &self.key);
        let (recovery_id, rs) = signature.serialize_compact();
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&rs);
        out[64] = match recovery_id {
            RecoveryId::Zero => 27,
            RecoveryId::One => 28,
            // Ids 2 and 3 mean r overflowed the curve order: a chance of about 2^-127 per
            // signature, which no digest can be chosen to cause.
            RecoveryId::Two | RecoveryId::Three => unreachable!("r ≥ n in an ECDSA signature"),
        };
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
    // Big-endian and fixed-length, so byte order is numeric order.
    if bytes[32..64] > HALF_ORDER[..] {
        return Err(SignatureError::HighS);
    }
    let recovery_id = if v == 28 { RecoveryId::One } else { RecoveryId::Zero };
    // Rejects r or s of zero or at least the curve order.
    let sig = RecoverableSignature::from_compact(&bytes[..64], recovery_id)
        .map_err(|_| SignatureError::Unrecoverable)?;
    let key = SECP256K1
        .recover_ecdsa(Message::from_digest(digest.0), &sig)
        .map_err(|_| SignatureError::Unrecoverable)?;
    Ok(address_of(&key))
}

/// ⌊n / 2⌋ for the secp256k1 group order n: the largest `s` OpenZeppelin accepts.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

fn address_of(key: &PublicKey) -> Address {
    // Uncompressed SEC1: 0x04 ‖ x ‖ y; the address is the last 20 bytes of keccak(x ‖ y).
    Address::from_slice(&keccak256(&key.serialize_uncompressed()[1..])[12..])
}

#[cfg(test)]
mod tests {
    use k256::ecdsa::{RecoveryId as K256RecoveryId, Signature, SigningKey, VerifyingKey};
    use rand::Rng;

    use super::*;

    /// The group order n, big-endian.
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36,
        0x41, 0x41,
    ];

    /// `n - s` for a big-endian s: the other, high, form of the same signature.
    fn negate(s: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(ORDER[i]) - i16::from(s[i]) - borrow;
            (out[i], borrow) = if d < 0 { ((d + 256) as u8, 1) } else { (d as u8, 0) };
        }
        out
    }

    fn random_b256(rng: &mut impl Rng) -> B256 {
        B256::from(rng.random::<[u8; 32]>())
    }

    /// libsecp256k1 and the independent pure-Rust `k256` agree on every signature byte
    /// (both RFC 6979) and on every recovered address.
    #[test]
    fn signatures_equal_an_independent_implementations() {
        let mut rng = rand::rng();
        for _ in 0..200 {
            let (secret, digest) = (random_b256(&mut rng), random_b256(&mut rng));
            let signer = Eip712Signer::from_bytes(&secret).unwrap();
            let signature = signer.sign_digest(&digest);

            let reference = SigningKey::from_slice(secret.as_slice()).unwrap();
            let (expected, recovery_id) = reference.sign_prehash_recoverable(digest.as_slice());
            assert_eq!(signature[..64], expected.to_bytes()[..]);
            assert_eq!(signature[64], 27 + u8::from(recovery_id.is_y_odd()));

            let reference_key = VerifyingKey::recover_from_prehash(
                digest.as_slice(),
                &Signature::from_slice(&signature[..64]).unwrap(),
                K256RecoveryId::new(signature[64] == 28, false),
            )
            .unwrap();
            let point = reference_key.to_sec1_point(false);
            let reference_address = Address::from_slice(&keccak256(&point.as_bytes()[1..])[12..]);
            assert_eq!(signer.address(), reference_address);
            assert_eq!(recover_signer(&digest, &signature), Ok(reference_address));
            assert_ne!(recover_signer(&random_b256(&mut rng), &signature), Ok(reference_address));
        }
    }

    /// The rules of OpenZeppelin's `ECDSA.recover`: the malleable high-s twin of a valid
    /// signature, another v, another length, and r or s out of range are all refused.
    #[test]
    fn refuses_what_openzeppelin_refuses() {
        let mut rng = rand::rng();
        let digest = random_b256(&mut rng);
        let signer = Eip712Signer::from_bytes(&random_b256(&mut rng)).unwrap();
        let signature = signer.sign_digest(&digest);

        let mut twin = signature;
        twin[32..64].copy_from_slice(&negate(&signature[32..64]));
        twin[64] = 55 - signature[64];
        assert_eq!(recover_signer(&digest, &twin), Err(SignatureError::HighS));

        for v in [0, 1, 26, 29] {
            let mut other = signature;
            other[64] = v;
            assert_eq!(recover_signer(&digest, &other), Err(SignatureError::RecoveryByte(v)));
        }
        assert_eq!(recover_signer(&digest, &signature[..64]), Err(SignatureError::Length(64)));

        for (range, value) in [(0..32, [0u8; 32]), (0..32, ORDER), (32..64, [0u8; 32])] {
            let mut out_of_range = signature;
            out_of_range[range].copy_from_slice(&value);
            assert_eq!(recover_signer(&digest, &out_of_range), Err(SignatureError::Unrecoverable));
        }
        assert_eq!(negate(&negate(&signature[32..64])), signature[32..64]);
        assert_eq!(Eip712Signer::from_bytes(&B256::ZERO).err(), Some(SignatureError::InvalidKey));
        assert_eq!(
            Eip712Signer::from_bytes(&B256::from(ORDER)).err(),
            Some(SignatureError::InvalidKey)
        );
    }
}
