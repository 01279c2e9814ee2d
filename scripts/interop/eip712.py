"""Keccak-256, EIP-712 digests of the protocol's typed messages, and Ethereum signatures.

The typed messages (`payments.md`, `wire.md` "Response signature", `contracts.md`):
`Voucher` in the PaymentChannels domain, `Response` in the Validation domain and
`PeerIdOwnership` in the NodeRegistry domain. Signatures are 65 bytes `r ‖ s ‖ v`,
low-s, `v ∈ {27, 28}`, as OpenZeppelin's `ECDSA` accepts them.
"""

from dataclasses import dataclass

from Crypto.Hash import keccak

from . import secp256k1

DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
VOUCHER_TYPE = b"Voucher(uint256 channelId,uint256 cumulativeAmount)"
RESPONSE_TYPE = b"Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)"
RESPONSES_TYPE = b"Responses(bytes32 root,uint64 epoch)"
OWNERSHIP_TYPE = b"PeerIdOwnership(address operator)"

CHANNELS_NAME = "InferGrid PaymentChannels"
VALIDATION_NAME = "InferGrid Validation"
REGISTRY_NAME = "InferGrid NodeRegistry"


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 (the original padding, not FIPS 202 SHA3-256)."""
    return keccak.new(data=data, digest_bits=256).digest()


def word(value: int) -> bytes:
    """One ABI word: an unsigned integer, big-endian, 32 bytes."""
    return value.to_bytes(32, "big")


def address_word(address: str) -> bytes:
    return word(int(parse_address(address).hex(), 16))


def parse_address(address: str) -> bytes:
    """The 20 bytes of a `0x…` address (any case; the checksum is not required)."""
    raw = bytes.fromhex(address.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError(f"not a 20-byte address: {address}")
    return raw


def checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case spelling of a 20-byte address."""
    hexed = raw.hex()
    nibbles = keccak256(hexed.encode()).hex()
    return "0x" + "".join(c.upper() if int(n, 16) >= 8 else c for c, n in zip(hexed, nibbles))


def address_of(key: tuple[int, int]) -> str:
    """The Ethereum address of a public key: the last 20 bytes of keccak256(x ‖ y)."""
    return checksum_address(keccak256(key[0].to_bytes(32, "big") + key[1].to_bytes(32, "big"))[12:])


@dataclass(frozen=True)
class Domain:
    """An EIP-712 domain with all four fields and no salt (OpenZeppelin `EIP712`)."""

    name: str
    chain_id: int
    verifying_contract: str
    version: str = "1"

    def separator(self) -> bytes:
        return keccak256(
            keccak256(DOMAIN_TYPE)
            + keccak256(self.name.encode())
            + keccak256(self.version.encode())
            + word(self.chain_id)
            + address_word(self.verifying_contract)
        )

    def digest(self, struct_hash: bytes) -> bytes:
        return keccak256(b"\x19\x01" + self.separator() + struct_hash)


def voucher_struct_hash(channel_id: int, cumulative_amount: int) -> bytes:
    return keccak256(keccak256(VOUCHER_TYPE) + word(channel_id) + word(cumulative_amount))


def response_struct_hash(request_hash: bytes, output_hash: bytes, epoch: int) -> bytes:
    return keccak256(keccak256(RESPONSE_TYPE) + request_hash + output_hash + word(epoch))


def responses_struct_hash(root: bytes, epoch: int) -> bytes:
    return keccak256(keccak256(RESPONSES_TYPE) + root + word(epoch))


def ownership_struct_hash(operator: str) -> bytes:
    return keccak256(keccak256(OWNERSHIP_TYPE) + address_word(operator))


def sign(secret: int, digest: bytes) -> bytes:
    """65 bytes `r ‖ s ‖ v` over `digest`, deterministic, low-s, v ∈ {27, 28}."""
    r, s, recovery_id = secp256k1.sign(secret, digest)
    if recovery_id > 1:
        raise ValueError("r overflowed the group order; Ethereum cannot encode this signature")
    return word(r) + word(s) + bytes([27 + recovery_id])


def recover_address(digest: bytes, signature: bytes) -> str:
    """The address whose key made `signature` over `digest`, as `ecrecover` with
    OpenZeppelin's checks; `ValueError` for anything it would reject."""
    if len(signature) != 65:
        raise ValueError(f"a signature is 65 bytes, not {len(signature)}")
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    if v not in (27, 28):
        raise ValueError(f"signature v is {v}, not 27 or 28")
    if s > secp256k1.N // 2:
        raise ValueError("signature s is high (not low-s)")
    return address_of(secp256k1.recover(digest, r, s, v - 27))


def secret_from_hex(text: str) -> int:
    """A 32-byte private key given as hex (with or without `0x`)."""
    raw = bytes.fromhex(text.strip().removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError("a private key is 32 bytes of hex")
    return int.from_bytes(raw, "big")
