//! The challenge tree is OpenZeppelin's `StandardMerkleTree`: for sets of 1 to 33 challenges
//! (`[requestHash, expectedOutputHash]` pairs, types `["bytes32","bytes32"]`), the root and
//! every proof the validator computes equal those of `@openzeppelin/merkle-tree` (npm, run
//! by node), so that anyone can rebuild and check a committed root with the standard tool.

use std::io::Write;
use std::process::{Command, Stdio};

use alloy::primitives::B256;
use infergrid::eip712::keccak256;
use infergrid::validate::{MerkleTree, challenge_leaf, fold_proof};
use infergrid_e2e::models::repo_root;

#[test]
fn challenge_roots_and_proofs_equal_openzeppelins_standard_merkle_tree() {
    let sizes = [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 33];
    let sets: Vec<Vec<(B256, B256)>> = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| {
                    let tag = format!("set {n} challenge {i}");
                    (keccak256(format!("{tag} request").as_bytes()), keccak256(tag.as_bytes()))
                })
                .collect()
        })
        .collect();
    let json: Vec<Vec<[String; 2]>> = sets
        .iter()
        .map(|set| set.iter().map(|(r, e)| [r.to_string(), e.to_string()]).collect())
        .collect();
    let reference = openzeppelin(&serde_json::to_value(&json).unwrap());

    for (set, expected) in sets.iter().zip(&reference) {
        let leaves: Vec<B256> = set.iter().map(|&(r, e)| challenge_leaf(r, e)).collect();
        let tree = MerkleTree::new(leaves.clone()).unwrap();
        let n = set.len();
        assert_eq!(tree.root().to_string(), expected["root"].as_str().unwrap(), "root of {n}");
        for (i, leaf) in leaves.iter().enumerate() {
            let proof: Vec<String> = tree.proof(i).unwrap().iter().map(B256::to_string).collect();
            let theirs: Vec<String> =
                serde_json::from_value(expected["proofs"][i].clone()).unwrap();
            assert_eq!(proof, theirs, "proof of leaf {i} of {n}");
            assert_eq!(fold_proof(*leaf, &tree.proof(i).unwrap()), tree.root());
        }
        assert!(tree.proof(n).is_none());
    }
    eprintln!("{} sets of 1 to 33 challenges: roots and proofs equal OpenZeppelin's", sets.len());
}

/// The challenge tree of `protocol-spec/test-vectors.json` is OpenZeppelin's too.
#[test]
fn the_test_vectors_challenge_tree_is_openzeppelins() {
    let path = repo_root().join("protocol-spec/test-vectors.json");
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tree = &vectors["challengeTree"];
    let theirs = openzeppelin(&serde_json::json!([tree["values"]])).swap_remove(0);
    assert_eq!(theirs["root"], tree["root"]);
    assert_eq!(theirs["proofs"], tree["proofs"]);
}

/// OpenZeppelin's `StandardMerkleTree` (`tests/js/merkle_tree.cjs`, run by node) over each
/// set of `[requestHash, expectedOutputHash]` values: its root and proofs.
fn openzeppelin(sets: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut node = Command::new("node")
        .arg(repo_root().join("tests/js/merkle_tree.cjs"))
        .env("NODE_PATH", repo_root().join(".infergrid/npm/node_modules"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Debian's nodejs)");
    node.stdin.take().unwrap().write_all(sets.to_string().as_bytes()).unwrap();
    let out = node.wait_with_output().unwrap();
    assert!(out.status.success(), "merkle_tree.cjs: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
