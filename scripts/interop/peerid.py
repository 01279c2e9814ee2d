"""libp2p keys and peer ids, and the node identity derived from an operator key.

libp2p (specs `peer-ids`): a public key travels as protobuf `PublicKey { KeyType Type = 1;
bytes Data = 2 }`; its peer id is the identity multihash of those bytes when they are at
most 42 bytes long (every Ed25519 and secp256k1 key), written in base58btc.
InferGrid (`wire.md`, "Identity and the registry binding"): a node's secp256k1 libp2p key
is derived from its operator's secret, and so is a gateway's from its payer key.
"""

import hashlib
from dataclasses import dataclass

from . import secp256k1
from .eip712 import keccak256

SECP256K1 = 2  # libp2p KeyType value
NODE_IDENTITY_TAG = b"infergrid/node-identity/v2"
NOISE_SIGNATURE_PREFIX = b"noise-libp2p-static-key:"

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58_encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = _BASE58[rest] + digits
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def base58_decode(text: str) -> bytes:
    number = 0
    for char in text:
        if char not in _BASE58:
            raise ValueError(f"{text!r} is not base58")
        number = number * 58 + _BASE58.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def encode_public_key(key_type: int, data: bytes) -> bytes:
    """Protobuf `PublicKey`: field 1 (varint) the type, field 2 (bytes) the key."""
    return bytes([0x08, key_type, 0x12, len(data)]) + data


def decode_public_key(encoded: bytes) -> tuple[int, bytes]:
    """`(key type, key bytes)` of a protobuf `PublicKey` as libp2p writes it (both fields,
    in order, each key shorter than 128 bytes); `ValueError` otherwise."""
    if len(encoded) < 4 or encoded[0] != 0x08 or encoded[2] != 0x12 or encoded[3] != len(encoded) - 4:
        raise ValueError("not a libp2p PublicKey message")
    return encoded[1], encoded[4:]


def peer_id_bytes(encoded_key: bytes) -> bytes:
    """The identity multihash (code 0x00) of an encoded public key of ≤ 42 bytes."""
    if len(encoded_key) > 42:
        raise ValueError("keys over 42 bytes (RSA) hash their peer id; not supported here")
    return bytes([0x00, len(encoded_key)]) + encoded_key


def peer_id_text(peer_id: bytes) -> str:
    return base58_encode(peer_id)


def verify_libp2p_signature(encoded_key: bytes, message: bytes, signature: bytes) -> bool:
    """Checks a secp256k1 libp2p key's signature: ECDSA over SHA-256 of the message,
    DER-encoded (libp2p specs `peer-ids`, "Signing"). Only secp256k1: the registry accepts
    no other node keys (`contracts.md`), so a node presenting another type is refused."""
    key_type, data = decode_public_key(encoded_key)
    if key_type != SECP256K1:
        raise ValueError(f"libp2p key type {key_type} is not secp256k1, as node keys must be")
    try:
        r, s = secp256k1.der_decode(signature)
        return secp256k1.verify(secp256k1.decompress(data), hashlib.sha256(message).digest(), r, s)
    except ValueError:
        return False


@dataclass(frozen=True)
class Secp256k1Identity:
    """A libp2p identity on a secp256k1 key."""

    secret: int

    @classmethod
    def derive(cls, operator_secret: int) -> "Secp256k1Identity":
        """`wire.md`: keccak256(tag ‖ k), hashed again until it is a valid scalar."""
        secret = keccak256(NODE_IDENTITY_TAG + operator_secret.to_bytes(32, "big"))
        while not 0 < int.from_bytes(secret, "big") < secp256k1.N:
            secret = keccak256(secret)
        return cls(int.from_bytes(secret, "big"))

    def public_key(self) -> tuple[int, int]:
        return secp256k1.public_key(self.secret)

    def encoded_public_key(self) -> bytes:
        return encode_public_key(SECP256K1, secp256k1.compress(self.public_key()))

    def peer_id(self) -> bytes:
        return peer_id_bytes(self.encoded_public_key())

    def sign(self, message: bytes) -> bytes:
        """libp2p signature: ECDSA over SHA-256 of the message, DER-encoded, low-s."""
        r, s, _ = secp256k1.sign(self.secret, hashlib.sha256(message).digest())
        return secp256k1.der_encode(r, s)
