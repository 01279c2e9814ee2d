use std::sync::LazyLock;

use alloy::primitives::{Address, B256, Bytes, U256};

use crate::eip712::{
    Domain, Eip712Signer, SignatureError, hash_static_struct, keccak256, recover_signer,
};

/// `keccak256("Voucher(uint256 channelId,uint256 cumulativeAmount)")`.
pub static VOUCHER_TYPEHASH: LazyLock<B256> =
    LazyLock::new(|| keccak256(b"Voucher(uint256 channelId,uint256 cumulativeAmount)"));

/// The EIP-712 domain of a `PaymentChannels` deployment.
pub fn channels_domain(chain_id: u64, channels: Address) -> Domain {
    Domain {
        name: "InferGrid PaymentChannels",
        version: "1",
        chain_id,
        verifying_contract: channels,
    }
}

/// A promise by a channel's payer that the node may take up to `cumulative_amount` in total
/// from the channel. Each new voucher supersedes the last, so only the latest needs keeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voucher {
    pub channel_id: U256,
    pub cumulative_amount: U256,
}

/// A voucher with the payer's 65-byte signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedVoucher {
    pub voucher: Voucher,
    pub signature: Bytes,
}

/// Why a voucher is refused before it ever reaches the chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VoucherError {
    #[error("voucher signature is malformed: {0}")]
    Signature(#[from] SignatureError),
    #[error("voucher is signed by {signer}, not by the channel's payer {payer}")]
    WrongSigner { signer: Address, payer: Address },
}

impl Voucher {
    /// `hashStruct(Voucher)`.
    pub fn struct_hash(&self) -> B256 {
        hash_static_struct(
            *VOUCHER_TYPEHASH,
            &[self.channel_id.to_be_bytes::<32>(), self.cumulative_amount.to_be_bytes::<32>()],
        )
    }

    /// The digest the payer signs, identical to `PaymentChannels.voucherDigest`.
    pub fn digest(&self, domain: &Domain) -> B256 {
        domain.digest(self.struct_hash())
    }

    /// Signs this voucher with the payer's key.
    pub fn sign(self, domain: &Domain, payer: &Eip712Signer) -> SignedVoucher {
        let signature = payer.sign_digest(&self.digest(domain));
        SignedVoucher { voucher: self, signature: Bytes::copy_from_slice(&signature) }
    }
}

impl SignedVoucher {
    /// Checks that the voucher was signed by `payer` for this domain (chain and contract).
    pub fn verify(&self, domain: &Domain, payer: Address) -> Result<(), VoucherError> {
        let signer = recover_signer(&self.voucher.digest(domain), &self.signature)?;
        if signer == payer { Ok(()) } else { Err(VoucherError::WrongSigner { signer, payer }) }
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::address;
    use alloy::sol_types::{Eip712Domain, SolStruct, eip712_domain};

    use super::*;

    /// alloy's own EIP-712 implementation, as an independent reference.
    mod reference {
        alloy::sol! {
            struct Voucher {
                uint256 channelId;
                uint256 cumulativeAmount;
            }
        }
    }

    const KEY: B256 = alloy::primitives::b256!(
        "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    );
    const CONTRACT: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");

    fn alloy_domain(chain_id: u64) -> Eip712Domain {
        eip712_domain! {
            name: "InferGrid PaymentChannels",
            version: "1",
            chain_id: chain_id,
            verifying_contract: CONTRACT,
        }
    }

    #[test]
    fn digest_matches_alloy_eip712() {
        for (id, amount) in [(1u64, 0u64), (7, 1_000_000_000_000_000_000), (u64::MAX, u64::MAX)] {
            let ours =
                Voucher { channel_id: U256::from(id), cumulative_amount: U256::from(amount) }
                    .digest(&channels_domain(31337, CONTRACT));
            let theirs = reference::Voucher {
                channelId: U256::from(id),
                cumulativeAmount: U256::from(amount),
            }
            .eip712_signing_hash(&alloy_domain(31337));
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn signature_recovers_to_payer_and_only_in_its_domain() {
        let payer = Eip712Signer::from_bytes(&KEY).unwrap();
        assert_eq!(payer.address(), address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266"));
        let domain = channels_domain(31337, CONTRACT);
        let signed = Voucher { channel_id: U256::from(3), cumulative_amount: U256::from(42) }
            .sign(&domain, &payer);
        assert_eq!(signed.verify(&domain, payer.address()), Ok(()));

        let other_chain = channels_domain(1, CONTRACT);
        assert!(matches!(
            signed.verify(&other_chain, payer.address()),
            Err(VoucherError::WrongSigner { .. })
        ));
        let other_contract = channels_domain(31337, Address::repeat_byte(1));
        assert!(matches!(
            signed.verify(&other_contract, payer.address()),
            Err(VoucherError::WrongSigner { .. })
        ));
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let domain = channels_domain(31337, CONTRACT);
        let payer = Eip712Signer::from_bytes(&KEY).unwrap();
        let mut signed = Voucher { channel_id: U256::from(3), cumulative_amount: U256::from(42) }
            .sign(&domain, &payer);
        let short = SignedVoucher { signature: signed.signature.slice(..64), ..signed.clone() };
        assert_eq!(
            short.verify(&domain, payer.address()),
            Err(VoucherError::Signature(SignatureError::Length(64)))
        );
        let mut bytes = signed.signature.to_vec();
        bytes[64] = 1;
        signed.signature = bytes.into();
        assert_eq!(
            signed.verify(&domain, payer.address()),
            Err(VoucherError::Signature(SignatureError::RecoveryByte(1)))
        );
    }
}
