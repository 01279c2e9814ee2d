"""The inference messages of `protocol-spec/wire.md`, the pieces requests and DHT keys.

Integers are little-endian unless marked, floats IEEE-754 binary32 little-endian. A
request's payment field (channel id, cumulative amount) is big-endian, as uint256 words.
Decoding is exact and strict, in the order and with the error names wire.md lists.
"""

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from .eip712 import keccak256

PROTOCOL_FAMILY = "/infergrid/infer/"
PROTOCOL = PROTOCOL_FAMILY + "3"
REQUEST_MAGIC = b"IGQ3"
RESPONSE_MAGIC = b"IGS2"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_RANK = 4
MAX_ERROR_MESSAGE = 4096
SIGNATURE_BYTES = 65


class StepKind(IntEnum):
    """Spelled as wire.md names them, so names print as the spec's."""

    Prefill = 0
    Decode = 1
    Replay = 2
    Close = 3
    Draft = 4


class ErrorCode(IntEnum):
    """Spelled as wire.md names them, so refusals print as the spec's names."""

    Malformed = 1
    NotAdmitted = 2
    UnknownModel = 3
    BlocksNotServed = 4
    BadInput = 5
    SessionLost = 6
    Overloaded = 7
    Internal = 8
    PaymentRequired = 9


class PaymentReason(IntEnum):
    """The sub-code of a PaymentRequired refusal (version 3)."""

    NoChannel = 1
    UnknownChannel = 2
    OtherNode = 3
    Closing = 4
    OtherPeer = 5
    Stale = 6
    BadSignature = 7
    CreditExceeded = 8
    NoCredit = 9
    TooManyLookups = 10


class CodecError(ValueError):
    """A message that does not decode; `kind` is wire.md's name for the reason."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# --- payloads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Empty:
    TAG = 0


@dataclass(frozen=True)
class Tokens:
    TAG = 1
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Tensor:
    """float32 tensor, row-major; `data` holds the raw little-endian bytes."""

    TAG = 2
    dims: tuple[int, ...]
    data: bytes

    def values(self) -> list[float]:
        return list(struct.unpack(f"<{len(self.data) // 4}f", self.data))


@dataclass(frozen=True)
class Masked:
    TAG = 3
    inner: Tokens | Tensor
    attention_mask: tuple[int, ...]
    token_type_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Draft:
    """A draft step's input: ids run at the step's position, then `guesses` tokens guessed."""

    TAG = 4
    ids: tuple[int, ...]
    guesses: int


Payload = Empty | Tokens | Tensor | Masked | Draft


def _u256(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _i64s(values) -> bytes:
    return struct.pack("<I", len(values)) + struct.pack(f"<{len(values)}q", *values)


def encode_payload(payload: Payload) -> bytes:
    tag = bytes([payload.TAG])
    if isinstance(payload, Empty):
        return tag
    if isinstance(payload, Tokens):
        return tag + _i64s(payload.ids)
    if isinstance(payload, Tensor):
        if not 1 <= len(payload.dims) <= MAX_RANK:
            raise ValueError(f"a tensor has rank 1..{MAX_RANK}, not {len(payload.dims)}")
        count = 1
        for dim in payload.dims:
            count *= dim
        if len(payload.data) != 4 * count:
            raise ValueError(f"dims {payload.dims} need {4 * count} bytes, not {len(payload.data)}")
        return tag + bytes([len(payload.dims)]) + struct.pack(f"<{len(payload.dims)}I", *payload.dims) + payload.data
    if isinstance(payload, Draft):
        return tag + struct.pack("<H", payload.guesses) + _i64s(payload.ids)
    return tag + encode_payload(payload.inner) + _i64s(payload.attention_mask) + _i64s(payload.token_type_ids)


class _Reader:
    """Reads fields in order; a read past the end is `Truncated`."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.at:
            raise CodecError("Truncated", f"{n} bytes wanted at offset {self.at}, {len(self.data) - self.at} left")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u256(self) -> int:
        return int.from_bytes(self.take(32), "big")

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def i64s(self) -> tuple[int, ...]:
        (count,) = self.unpack("<I")
        if 8 * count > len(self.data) - self.at:
            raise CodecError("Truncated", f"{count} values announced, fewer bytes left")
        return self.unpack(f"<{count}q")

    def end(self) -> None:
        if self.at != len(self.data):
            raise CodecError("Trailing", f"{len(self.data) - self.at} bytes after the last field")


def _decode_payload(reader: _Reader, nested: bool = False) -> Payload:
    tag = reader.u8()
    if tag > Draft.TAG:
        raise CodecError("UnknownTag", str(tag))
    if tag == Empty.TAG:
        if nested:
            raise CodecError("UnknownTag", "3")
        return Empty()
    if tag == Tokens.TAG:
        return Tokens(reader.i64s())
    if tag == Tensor.TAG:
        rank = reader.u8()
        if not 1 <= rank <= MAX_RANK:
            raise CodecError("Rank", str(rank))
        dims = reader.unpack(f"<{rank}I")
        count = 1
        for dim in dims:
            count *= dim
        return Tensor(dims, reader.take(4 * count))
    if tag == Draft.TAG:
        guesses = reader.unpack("<H")[0]
        draft = Draft(reader.i64s(), guesses)
        if nested:
            raise CodecError("UnknownTag", "3")
        return draft
    if nested:
        raise CodecError("UnknownTag", "3")
    inner = _decode_payload(reader, nested=True)
    return Masked(inner, reader.i64s(), reader.i64s())


# --- requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Voucher:
    """The payment field: the payer's latest cumulative voucher, signed (`payments.md`)."""

    channel_id: int
    cumulative_amount: int
    signature: bytes


@dataclass(frozen=True)
class InferRequest:
    kind: StepKind
    model_id: bytes
    first_block: int
    last_block: int
    session: int
    position: int
    payload: Payload
    payment: Voucher | None = field(default=None)

    def encode(self) -> bytes:
        head = REQUEST_MAGIC + bytes([self.kind]) + self.model_id
        head += struct.pack("<HHQI", self.first_block, self.last_block, self.session, self.position)
        if self.payment is None:
            paid = b"\x00"
        else:
            if len(self.payment.signature) != SIGNATURE_BYTES:
                raise ValueError("a voucher signature is 65 bytes")
            paid = b"\x01" + _u256(self.payment.channel_id) + _u256(self.payment.cumulative_amount)
            paid += self.payment.signature
        return head + paid + encode_payload(self.payload)

    def request_hash(self) -> bytes:
        """What the node signs: keccak256 of the request with payment flag 0, no voucher."""
        unpaid = InferRequest(
            self.kind, self.model_id, self.first_block, self.last_block, self.session, self.position, self.payload
        )
        return keccak256(unpaid.encode())


# --- responses ------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """A paid node's account of the paying peer's channel after the step (version 3): what
    it counts as owed, so that payer and node can see and settle a disagreement."""

    channel_id: int
    settled: int  # wei owed for block-tokens metered under earlier terms
    metered: int  # block-tokens metered under the current terms
    price_per_token: int
    span_blocks: int
    voucher: int  # the latest voucher the node accepted (0: none)
    credit: int

    def owed(self) -> int:
        return self.settled + self.price_per_token * self.metered // max(self.span_blocks, 1)

    def encode(self) -> bytes:
        """uint256 fields big-endian, `metered` u64 and `span_blocks` u16 little-endian."""
        return (
            _u256(self.channel_id) + _u256(self.settled) + struct.pack("<Q", self.metered)
            + _u256(self.price_per_token) + struct.pack("<H", self.span_blocks)
            + _u256(self.voucher) + _u256(self.credit)
        )


def _encode_account(account: Account | None) -> bytes:
    return b"\x00" if account is None else b"\x01" + account.encode()


def _decode_account(reader: "_Reader") -> Account | None:
    flag = reader.u8()
    if flag == 0:
        return None
    if flag != 1:
        raise CodecError("UnknownAccountFlag", str(flag))
    channel_id, settled, (metered,) = reader.u256(), reader.u256(), reader.unpack("<Q")
    price, (span,) = reader.u256(), reader.unpack("<H")
    return Account(channel_id, settled, metered, price, span, reader.u256(), reader.u256())


@dataclass(frozen=True)
class Answer:
    """An Ok response: the output payload (its exact bytes, which the signature covers)."""

    output: Payload
    output_bytes: bytes
    signature: bytes
    account: Account | None = None

    def output_hash(self) -> bytes:
        return keccak256(self.output_bytes)


@dataclass(frozen=True)
class Refusal:
    """An Err response; `reason` only (and always) with PaymentRequired."""

    code: ErrorCode
    message: str
    reason: PaymentReason | None = None
    account: Account | None = None

    def encode(self) -> bytes:
        message = self.message.encode()
        head = RESPONSE_MAGIC + b"\x01" + struct.pack("<HI", self.code, len(message)) + message
        return head + bytes([self.reason or 0]) + _encode_account(self.account)


def decode_response(data: bytes) -> Answer | Refusal:
    if len(data) > MAX_MESSAGE_BYTES:
        raise CodecError("TooLarge", f"{len(data)} bytes")
    reader = _Reader(data)
    if reader.take(4) != RESPONSE_MAGIC:
        raise CodecError("BadMagic", f"{data[:4]!r} is not {RESPONSE_MAGIC!r}")
    status = reader.u8()
    if status == 0:
        start = reader.at
        output = _decode_payload(reader)
        output_bytes = data[start : reader.at]
        signature = reader.take(SIGNATURE_BYTES)
        account = _decode_account(reader)
        reader.end()
        return Answer(output, output_bytes, signature, account)
    if status != 1:
        raise CodecError("UnknownStatus", str(status))
    (code, length) = reader.unpack("<HI")
    try:
        code = ErrorCode(code)
    except ValueError:
        raise CodecError("UnknownErrorCode", str(code)) from None
    if length > MAX_ERROR_MESSAGE:
        raise CodecError("TooLarge", f"an error message of {length} bytes")
    try:
        message = reader.take(length).decode()
    except UnicodeDecodeError:
        raise CodecError("Utf8", "the error message is not UTF-8") from None
    raw_reason = reader.u8()
    reason = None
    if code == ErrorCode.PaymentRequired or raw_reason:
        try:
            reason = PaymentReason(raw_reason)
        except ValueError:
            raise CodecError("UnknownReason", f"payment reason {raw_reason} with error code {int(code)}") from None
        if code != ErrorCode.PaymentRequired:
            raise CodecError("UnknownReason", f"payment reason {raw_reason} with error code {int(code)}")
    account = _decode_account(reader)
    reader.end()
    return Refusal(code, message, reason, account)


def is_retired_version(refusal: Refusal) -> bool:
    """A newer node's answer on a version it retired (`wire.md`, "Versions"): to be taken
    like a negotiation refusal, not as a fault of the node."""
    return (
        refusal.code == ErrorCode.Malformed
        and refusal.message.startswith(f"malformed request: {PROTOCOL_FAMILY}")
        and " is retired: " in refusal.message
    )


# --- pieces (`/infergrid/pieces/1`, big-endian) -----------------------------------------

PIECE_MANIFEST, PIECE_DATA = 1, 2
PIECE_REFUSED = 3


def manifest_request(model_id: bytes) -> bytes:
    return bytes([PIECE_MANIFEST]) + model_id


def piece_request(model_id: bytes, file: str, index: int) -> bytes:
    name = file.encode()
    if not 1 <= len(name) <= 255:
        raise ValueError("a file name is 1 to 255 bytes")
    return bytes([PIECE_DATA]) + model_id + bytes([len(name)]) + name + struct.pack(">I", index)


def piece_refusal(code: int, message: str) -> bytes:
    return bytes([PIECE_REFUSED, code]) + message.encode()


# --- discovery ------------------------------------------------------------------------


def block_key(model_id: bytes, block: int) -> bytes:
    """DHT key of the peers serving `block` of the model."""
    return b"infergrid/block/" + model_id + struct.pack(">H", block)


def files_key(model_id: bytes, block: int) -> bytes:
    """DHT key of the peers seeding `block`'s files."""
    return b"infergrid/files/" + model_id + struct.pack(">H", block)


ANNOUNCEMENT_FIELDS = (
    "peer_id",
    "model_id",
    "first_block",
    "last_block",
    "active_sessions",
    "free_cache_tokens",
    "compute_ms_per_token",
)


def announcement_json(fields: dict) -> str:
    """A load announcement as `infergrid node` publishes it: compact JSON, the fields in
    the order of wire.md's table."""
    return json.dumps({name: fields[name] for name in ANNOUNCEMENT_FIELDS}, separators=(",", ":"), ensure_ascii=False)
