use alloy::primitives::B256;

use crate::eip712::keccak256;

/// A Merkle tree over a validator's challenge set, hashed the way OpenZeppelin's
/// `MerkleProof.verify` checks it: each parent is the keccak of its two children in sorted
/// order, and an unpaired node moves up unchanged.
#[derive(Debug, Clone)]
pub struct ChallengeTree {
    levels: Vec<Vec<B256>>,
}

impl ChallengeTree {
    /// Builds the tree; `None` for an empty set, which has no root to commit.
    pub fn new(leaves: Vec<B256>) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().expect("non-empty");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => hash_pair(a, b),
                    [single] => *single,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(above);
        }
        Some(Self { levels })
    }

    /// The root a validator commits on-chain.
    pub fn root(&self) -> B256 {
        self.levels.last().expect("at least one level")[0]
    }

    /// The sibling path of leaf `index`, or `None` when out of range.
    pub fn proof(&self, mut index: usize) -> Option<Vec<B256>> {
        if index >= self.levels[0].len() {
            return None;
        }
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(index ^ 1) {
                proof.push(*sibling);
            }
            index /= 2;
        }
        Some(proof)
    }
}

/// What `MerkleProof.verify` computes: folds the proof into the leaf.
pub fn fold_proof(leaf: B256, proof: &[B256]) -> B256 {
    proof.iter().fold(leaf, |node, sibling| hash_pair(&node, sibling))
}

fn hash_pair(a: &B256, b: &B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut enc = [0u8; 64];
    enc[..32].copy_from_slice(lo.as_slice());
    enc[32..].copy_from_slice(hi.as_slice());
    keccak256(&enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proof_folds_to_the_root() {
        for n in 1..=9u8 {
            let leaves: Vec<B256> = (0..n).map(|i| keccak256(&[i])).collect();
            let tree = ChallengeTree::new(leaves.clone()).unwrap();
            for (i, leaf) in leaves.iter().enumerate() {
                assert_eq!(fold_proof(*leaf, &tree.proof(i).unwrap()), tree.root(), "n={n} i={i}");
            }
            assert!(tree.proof(n as usize).is_none());
            assert_ne!(fold_proof(keccak256(b"not a leaf"), &tree.proof(0).unwrap()), tree.root());
        }
        assert!(ChallengeTree::new(Vec::new()).is_none());
    }
}
