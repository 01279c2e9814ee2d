use alloy::primitives::B256;

use crate::eip712::keccak256;

/// A Merkle tree (over a validator's challenge set, or a node's answers to one message of
/// steps), built exactly as OpenZeppelin's
/// `StandardMerkleTree` (`@openzeppelin/merkle-tree`) builds one, so that its root and proofs
/// equal that library's for the same leaves: the leaves sorted, laid out as a complete binary
/// tree in one array (leaf `k` of the sorted order at `2n − 2 − k`, the children of node `i`
/// at `2i + 1` and `2i + 2`), each parent the keccak of its two children in sorted order —
/// what `MerkleProof.verify` checks on-chain.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// The `2n − 1` nodes, the root first.
    nodes: Vec<B256>,
    /// Where each leaf, in the order given, sits in `nodes`.
    positions: Vec<usize>,
}

impl MerkleTree {
    /// Builds the tree; `None` for an empty set, which has no root to commit.
    pub fn new(leaves: Vec<B256>) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let count = leaves.len();
        let mut sorted: Vec<usize> = (0..count).collect();
        sorted.sort_by_key(|&i| leaves[i]);
        let mut nodes = vec![B256::ZERO; 2 * count - 1];
        let mut positions = vec![0; count];
        for (k, &leaf) in sorted.iter().enumerate() {
            let at = nodes.len() - 1 - k;
            nodes[at] = leaves[leaf];
            positions[leaf] = at;
        }
        for i in (0..nodes.len() - count).rev() {
            nodes[i] = hash_pair(&nodes[2 * i + 1], &nodes[2 * i + 2]);
        }
        Some(Self { nodes, positions })
    }

    /// The root a validator commits on-chain, or a node signs over its answers.
    pub fn root(&self) -> B256 {
        self.nodes[0]
    }

    /// The sibling path of leaf `index` (in the order given), from the leaf up, or `None`
    /// when out of range.
    pub fn proof(&self, index: usize) -> Option<Vec<B256>> {
        let mut at = *self.positions.get(index)?;
        let mut proof = Vec::new();
        while at > 0 {
            let sibling = if at % 2 == 1 { at + 1 } else { at - 1 };
            proof.push(self.nodes[sibling]);
            at = (at - 1) / 2;
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
            let tree = MerkleTree::new(leaves.clone()).unwrap();
            for (i, leaf) in leaves.iter().enumerate() {
                assert_eq!(fold_proof(*leaf, &tree.proof(i).unwrap()), tree.root(), "n={n} i={i}");
            }
            assert!(tree.proof(n as usize).is_none());
            assert_ne!(fold_proof(keccak256(b"not a leaf"), &tree.proof(0).unwrap()), tree.root());
        }
        assert!(MerkleTree::new(Vec::new()).is_none());
    }
}
