"""secp256k1 ECDSA in pure Python: deterministic signing (RFC 6979), low-s, recovery.

Written by hand rather than taken from an Ethereum library so that every signature this
client makes or checks is derived from the published curve and the specification's rules,
not from another implementation of the protocol's conventions. Speed is irrelevant here
(a handful of signatures per run), so points use plain affine arithmetic.
"""

import hashlib
import hmac

P = 2**256 - 2**32 - 977
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G = (
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
)

Point = tuple[int, int] | None  # None is the point at infinity


def _add(a: Point, b: Point) -> Point:
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        slope = 3 * a[0] * a[0] * pow(2 * a[1], -1, P)
    else:
        slope = (b[1] - a[1]) * pow(b[0] - a[0], -1, P)
    x = (slope * slope - a[0] - b[0]) % P
    return x, (slope * (a[0] - x) - a[1]) % P


def multiply(k: int, point: Point = G) -> Point:
    """`k · point` by double-and-add."""
    result = None
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def public_key(secret: int) -> tuple[int, int]:
    if not 0 < secret < N:
        raise ValueError("a secp256k1 secret must be in 1..n-1")
    return multiply(secret)


def compress(point: tuple[int, int]) -> bytes:
    return bytes([2 + (point[1] & 1)]) + point[0].to_bytes(32, "big")


def decompress(data: bytes) -> tuple[int, int]:
    """The point of a 33-byte compressed key; `ValueError` if it is not on the curve."""
    if len(data) != 33 or data[0] not in (2, 3):
        raise ValueError("not a compressed secp256k1 public key")
    x = int.from_bytes(data[1:], "big")
    y = pow((x**3 + 7) % P, (P + 1) // 4, P)
    if x >= P or (y * y - x**3 - 7) % P:
        raise ValueError("compressed secp256k1 key is not on the curve")
    if y & 1 != data[0] & 1:
        y = P - y
    return x, y


def _rfc6979_nonce(secret: int, digest: bytes) -> int:
    """RFC 6979 section 3.2 with HMAC-SHA256 (the digest is already 32 bytes, < 2^256)."""
    x = secret.to_bytes(32, "big")
    h = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    v, k = b"\x01" * 32, b"\x00" * 32
    k = hmac.new(k, v + b"\x00" + x + h, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    k = hmac.new(k, v + b"\x01" + x + h, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    while True:
        v = hmac.new(k, v, hashlib.sha256).digest()
        candidate = int.from_bytes(v, "big")
        if 0 < candidate < N:
            return candidate
        k = hmac.new(k, v + b"\x00", hashlib.sha256).digest()
        v = hmac.new(k, v, hashlib.sha256).digest()


def sign(secret: int, digest: bytes) -> tuple[int, int, int]:
    """`(r, s, recovery_id)` over a 32-byte digest, deterministic and low-s (s ≤ n/2)."""
    z = int.from_bytes(digest, "big")
    k = _rfc6979_nonce(secret, digest)
    point = multiply(k)
    r = point[0] % N
    s = pow(k, -1, N) * (z + r * secret) % N
    recovery_id = (point[1] & 1) | (2 if point[0] >= N else 0)
    if s > N // 2:
        s, recovery_id = N - s, recovery_id ^ 1
    return r, s, recovery_id


def recover(digest: bytes, r: int, s: int, recovery_id: int) -> tuple[int, int]:
    """The public key that made `(r, s)` over `digest`; `ValueError` if none can."""
    if not (0 < r < N and 0 < s < N and 0 <= recovery_id <= 3):
        raise ValueError("signature values out of range")
    x = r + N * (recovery_id >> 1)
    if x >= P:
        raise ValueError("signature r does not name a curve point")
    point = decompress(bytes([2 + (recovery_id & 1)]) + x.to_bytes(32, "big"))
    z = int.from_bytes(digest, "big")
    r_inv = pow(r, -1, N)
    key = _add(multiply(s * r_inv % N, point), multiply((-z * r_inv) % N))
    if key is None:
        raise ValueError("signature recovers to no key")
    return key


def verify(key: tuple[int, int], digest: bytes, r: int, s: int) -> bool:
    if not (0 < r < N and 0 < s < N):
        return False
    z, s_inv = int.from_bytes(digest, "big"), pow(s, -1, N)
    point = _add(multiply(z * s_inv % N), multiply(r * s_inv % N, key))
    return point is not None and point[0] % N == r


def der_encode(r: int, s: int) -> bytes:
    """ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }`, as libp2p's secp256k1 keys sign."""

    def integer(value: int) -> bytes:
        body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # keeps a leading 0 bit
        return b"\x02" + bytes([len(body)]) + body

    body = integer(r) + integer(s)
    return b"\x30" + bytes([len(body)]) + body


def der_decode(data: bytes) -> tuple[int, int]:
    """`(r, s)` of a DER signature; `ValueError` when it is not one."""

    def integer(at: int) -> tuple[int, int]:
        if data[at] != 0x02 or data[at + 1] > 33:
            raise ValueError("DER signature: not an INTEGER of at most 33 bytes")
        end = at + 2 + data[at + 1]
        return int.from_bytes(data[at + 2 : end], "big"), end

    try:
        if data[0] != 0x30 or data[1] != len(data) - 2:
            raise ValueError("DER signature: not a SEQUENCE of the right length")
        r, at = integer(2)
        s, at = integer(at)
    except IndexError:
        raise ValueError("DER signature: truncated") from None
    if at != len(data):
        raise ValueError("DER signature: trailing bytes")
    return r, s
