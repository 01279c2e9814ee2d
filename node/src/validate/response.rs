use std::sync::LazyLock;

use alloy::primitives::{Address, B256, U256};

use super::{MerkleTree, fold_proof};
use crate::eip712::{
    Domain, Eip712Signer, SignatureError, hash_static_struct, keccak256, recover_signer,
};

/// `keccak256("Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)")`.
pub static RESPONSE_TYPEHASH: LazyLock<B256> =
    LazyLock::new(|| keccak256(b"Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)"));

/// `keccak256("Responses(bytes32 root,uint64 epoch)")`: what a node signs once for all the
/// answers of one message of steps (`wire.md`, "Response signature").
pub static RESPONSES_TYPEHASH: LazyLock<B256> =
    LazyLock::new(|| keccak256(b"Responses(bytes32 root,uint64 epoch)"));

/// The most siblings an answer's proof may have: a message holds at most 64 answers, whose
/// tree is 6 levels deep; more is not a proof any node made.
pub const MAX_ANSWER_PROOF: usize = 6;
const _: () = assert!(1 << MAX_ANSWER_PROOF >= crate::net::steps::MAX_STEPS_PER_MESSAGE);

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

    /// This answer's leaf in the tree a node signs over a message's answers.
    pub fn leaf(&self) -> B256 {
        answer_leaf(self.request_hash, self.output_hash)
    }

    /// The root this answer's `proof` leads to: the answer's leaf itself for an answer
    /// signed alone (no proof).
    pub fn root(&self, proof: &[B256]) -> B256 {
        fold_proof(self.leaf(), proof)
    }

    /// The address that sealed this answer: the signer of `Response(…)` when the seal has
    /// no proof, else of `Responses(root, epoch)` for the root the proof leads to — what
    /// `Validation.reportFault` recovers.
    pub fn sealed_by(&self, domain: &Domain, seal: &AnswerSeal) -> Result<Address, SignatureError> {
        if seal.proof.is_empty() {
            self.signer(domain, &seal.signature)
        } else {
            recover_signer(
                &responses_digest(domain, self.root(&seal.proof), self.epoch),
                &seal.signature,
            )
        }
    }
}

/// How a node signed one answer: alone, as `Response(requestHash, outputHash, epoch)` (no
/// proof), or together with the other answers of its message, as `Responses(root, epoch)`
/// over the tree of their leaves, `proof` leading from this answer's leaf to that root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerSeal {
    pub signature: [u8; 65],
    pub proof: Vec<B256>,
}

impl AnswerSeal {
    /// A signature over this answer alone.
    pub fn alone(signature: [u8; 65]) -> Self {
        Self { signature, proof: Vec::new() }
    }
}

/// Whom a message's seal was found signed by, and for which root and epoch, the first time one
/// of its answers was checked: the message's other answers lead to the same root, so their
/// checks reuse it instead of recovering the signature again. One per message, shared by its
/// answers; a check that finds another root, operator or a far epoch recovers for itself.
#[derive(Debug, Default)]
pub struct SealMemo(pub std::sync::OnceLock<Option<(B256, Address, u64)>>);

/// The digest of `Responses(root, epoch)`, identical to `Validation.responsesDigest`.
pub fn responses_digest(domain: &Domain, root: B256, epoch: u64) -> B256 {
    domain
        .digest(hash_static_struct(*RESPONSES_TYPEHASH, &[root.0, U256::from(epoch).to_be_bytes()]))
}

/// An answer's leaf, `keccak256(keccak256(abi.encode(requestHash, outputHash)))` (the
/// double hash of OpenZeppelin's trees), identical to `Validation.answerLeaf`.
pub fn answer_leaf(request_hash: B256, output_hash: B256) -> B256 {
    challenge_leaf(request_hash, output_hash)
}

/// Signs the answers of one message, `(requestHash, outputHash)` each in the message's
/// order, for `epoch`: one answer alone as its `Response`, several as `Responses` over the
/// tree of their leaves. `None` when there is no answer to sign.
pub fn seal_answers(
    domain: &Domain,
    node: &Eip712Signer,
    epoch: u64,
    answers: &[(B256, B256)],
) -> Option<[u8; 65]> {
    match answers {
        [] => None,
        &[(request_hash, output_hash)] => {
            Some(ResponseAttestation { request_hash, output_hash, epoch }.sign(domain, node))
        }
        many => {
            let tree = answer_tree(many)?;
            Some(node.sign_digest(&responses_digest(domain, tree.root(), epoch)))
        }
    }
}

/// Each answer's proof under the root [`seal_answers`] signs for the same answers (empty
/// ones for a lone answer, whose signature covers it alone).
pub fn answer_proofs(answers: &[(B256, B256)]) -> Vec<Vec<B256>> {
    match answers {
        [] | [_] => vec![Vec::new(); answers.len()],
        many => {
            let tree = answer_tree(many).expect("answers");
            (0..many.len()).map(|i| tree.proof(i).expect("a leaf of the tree")).collect()
        }
    }
}

fn answer_tree(answers: &[(B256, B256)]) -> Option<MerkleTree> {
    MerkleTree::new(answers.iter().map(|&(request, output)| answer_leaf(request, output)).collect())
}

/// A leaf of a validator's challenge-set Merkle tree, in OpenZeppelin's double-hash form:
/// `keccak256(keccak256(abi.encode(requestHash, expectedOutputHash)))`.
pub fn challenge_leaf(request_hash: B256, expected_output_hash: B256) -> B256 {
    let mut enc = [0u8; 64];
    enc[..32].copy_from_slice(request_hash.as_slice());
    enc[32..].copy_from_slice(expected_output_hash.as_slice());
    keccak256(keccak256(&enc).as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        validation_domain(31337, Address::repeat_byte(1))
    }

    #[test]
    fn one_answer_is_sealed_as_its_response_and_several_as_their_root() {
        let node = Eip712Signer::from_bytes(&B256::repeat_byte(5)).unwrap();
        let answers: Vec<(B256, B256)> =
            (1..=5u8).map(|i| (B256::repeat_byte(i), B256::repeat_byte(i + 100))).collect();
        let attestation = |i: usize| ResponseAttestation {
            request_hash: answers[i].0,
            output_hash: answers[i].1,
            epoch: 9,
        };

        // Alone: exactly the `Response` signature, with no proof.
        let alone = seal_answers(&domain(), &node, 9, &answers[..1]).unwrap();
        assert_eq!(alone, attestation(0).sign(&domain(), &node));
        assert_eq!(answer_proofs(&answers[..1]), vec![Vec::<B256>::new()]);
        assert_eq!(
            attestation(0).sealed_by(&domain(), &AnswerSeal::alone(alone)),
            Ok(node.address())
        );

        // Several: one signature over `Responses(root, 9)`; each proof leads its own leaf there.
        let signature = seal_answers(&domain(), &node, 9, &answers).unwrap();
        let proofs = answer_proofs(&answers);
        let root = attestation(0).root(&proofs[0]);
        assert_eq!(signature, node.sign_digest(&responses_digest(&domain(), root, 9)));
        for (i, proof) in proofs.iter().enumerate() {
            assert!(!proof.is_empty() && proof.len() <= MAX_ANSWER_PROOF);
            assert_eq!(attestation(i).root(proof), root);
            let seal = AnswerSeal { signature, proof: proof.clone() };
            assert_eq!(attestation(i).sealed_by(&domain(), &seal), Ok(node.address()));
            // Another epoch, or another answer under this proof, is not what the node signed.
            let other_epoch = ResponseAttestation { epoch: 10, ..attestation(i) };
            assert_ne!(other_epoch.sealed_by(&domain(), &seal), Ok(node.address()));
            let other = ResponseAttestation { output_hash: B256::ZERO, ..attestation(i) };
            assert_ne!(other.sealed_by(&domain(), &seal), Ok(node.address()));
        }
        // The tree's root does not depend on the answers' order: the leaves are sorted.
        let mut reversed = answers.clone();
        reversed.reverse();
        assert_eq!(seal_answers(&domain(), &node, 9, &reversed), Some(signature));
        assert_eq!(seal_answers(&domain(), &node, 9, &[]), None);
        // The 64 answers of a full message need no more than the proof bound.
        let full: Vec<(B256, B256)> =
            (0..64u64).map(|i| (B256::from(U256::from(i)), B256::ZERO)).collect();
        assert!(answer_proofs(&full).iter().all(|proof| proof.len() <= MAX_ANSWER_PROOF));
    }

    #[test]
    fn the_type_hash_is_the_contract_s() {
        // `Validation.RESPONSES_TYPEHASH`, as `cast keccak "Responses(bytes32 root,uint64 epoch)"`.
        assert_eq!(
            RESPONSES_TYPEHASH.to_string(),
            "0x67be074bc5fdb701084c1278d27c029e8f57dfa107c723e1603de9110d596780"
        );
    }
}
