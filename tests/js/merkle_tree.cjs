// Roots and proofs of OpenZeppelin's StandardMerkleTree for the challenge sets read from
// stdin: [[ [requestHash, expectedOutputHash], ... ], ...] → [{root, proofs: [[...], ...]}, ...]
// (proofs in the order of the values given). The reference the Rust tree is checked against.
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const sets = JSON.parse(input);
  const out = sets.map((values) => {
    const tree = StandardMerkleTree.of(values, ["bytes32", "bytes32"]);
    return { root: tree.root, proofs: values.map((_, i) => tree.getProof(i)) };
  });
  process.stdout.write(JSON.stringify(out));
});
