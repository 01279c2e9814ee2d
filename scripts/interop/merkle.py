"""The challenge-set Merkle tree (`validation.md`, "Challenge sets"): OpenZeppelin's
`StandardMerkleTree` over `[requestHash, expectedOutputHash]` pairs, built exactly as the
spec lays it out so that roots and proofs agree across tools."""

from .eip712 import keccak256


def leaf(request_hash: bytes, expected_output_hash: bytes) -> bytes:
    """keccak256(bytes.concat(keccak256(abi.encode(requestHash, expectedOutputHash))))."""
    return keccak256(keccak256(request_hash + expected_output_hash))


def _parent(a: bytes, b: bytes) -> bytes:
    return keccak256(min(a, b) + max(a, b))


class Tree:
    """Leaves sorted ascending; sorted leaf k at index 2n − 2 − k of a 2n − 1 array."""

    def __init__(self, leaves: list[bytes]):
        if not leaves:
            raise ValueError("a tree needs at least one leaf")
        n = len(leaves)
        self.nodes: list[bytes] = [b""] * (2 * n - 1)
        for k, value in enumerate(sorted(leaves)):
            self.nodes[2 * n - 2 - k] = value
        for i in range(n - 2, -1, -1):
            self.nodes[i] = _parent(self.nodes[2 * i + 1], self.nodes[2 * i + 2])

    def root(self) -> bytes:
        return self.nodes[0]

    def proof(self, value: bytes) -> list[bytes]:
        """Siblings from the leaf up to (not including) the root."""
        i = self.nodes.index(value, len(self.nodes) // 2)
        siblings = []
        while i > 0:
            siblings.append(self.nodes[i + 1 if i % 2 else i - 1])
            i = (i - 1) // 2
        return siblings


def verify(proof: list[bytes], root: bytes, value: bytes) -> bool:
    """OpenZeppelin `MerkleProof.verify`: fold the sorted pairs up to the root."""
    for sibling in proof:
        value = _parent(value, sibling)
    return value == root
