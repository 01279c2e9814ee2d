"""The least of libp2p that opens a request stream to a rust-libp2p node over TCP.

Layers, each from the libp2p specifications (not InferGrid's to specify):
multistream-select 1.0 (`connections/`), Noise XX with libp2p's signed static key
(`noise/`), yamux (`yamux/`, after hashicorp's spec), then multistream-select again on a
yamux stream for the application protocol. One thread, blocking sockets: a client sends one
request at a time, and while it waits it serves what the node sends on its own (pings,
streams it opens, which are refused).
"""

import hashlib
import hmac
import socket
import struct

from Crypto.Cipher import ChaCha20_Poly1305
from Crypto.PublicKey import ECC
from Crypto.Protocol.DH import import_x25519_public_key, key_agreement

from . import peerid

MULTISTREAM = "/multistream/1.0.0"
NOISE = "/noise"
YAMUX = "/yamux/1.0.0"

NOISE_PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"  # exactly 32 bytes: h = name
NOISE_MAX_PLAINTEXT = 65535 - 16  # a frame's 2-byte length covers the 16-byte tag

YAMUX_DATA, YAMUX_WINDOW_UPDATE, YAMUX_PING, YAMUX_GO_AWAY = range(4)
SYN, ACK, FIN, RST = 1, 2, 4, 8
YAMUX_INITIAL_WINDOW = 256 * 1024
YAMUX_MAX_FRAME = 16 * 1024  # what this client puts in one data frame


class Libp2pError(Exception):
    """The connection or a stream failed; the message says at which layer."""


class ProtocolRefused(Libp2pError):
    """The peer answered `na`: it does not speak the protocol (another version, say)."""


class Multiaddr:
    """`/ip4/A.B.C.D/tcp/PORT/p2p/PEER`: the only form this client dials."""

    def __init__(self, text: str):
        parts = text.split("/")
        if len(parts) != 7 or parts[0] or parts[1] != "ip4" or parts[3] != "tcp" or parts[5] != "p2p":
            raise ValueError(f"{text}: expected /ip4/<address>/tcp/<port>/p2p/<peer id>")
        self.host, self.port = parts[2], int(parts[4])
        self.peer_id = peerid.base58_decode(parts[6])


# --- multistream-select ---------------------------------------------------------------


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _read_uvarint(read_exact) -> int:
    value = 0
    for shift in range(0, 63, 7):
        byte = read_exact(1)[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise Libp2pError("multistream-select: varint too long")


def _message(text: str) -> bytes:
    body = text.encode() + b"\n"
    return _uvarint(len(body)) + body


def negotiate(write, read_exact, protocol: str) -> None:
    """Proposes `protocol` as the dialer, header and proposal at once, and reads both
    answers. `ProtocolRefused` on `na`."""
    write(_message(MULTISTREAM) + _message(protocol))
    for expected in (MULTISTREAM, protocol):
        length = _read_uvarint(read_exact)
        if length > 1024:
            raise Libp2pError(f"multistream-select: a {length}-byte message")
        answer = read_exact(length).decode(errors="replace").removesuffix("\n")
        if answer == "na" and expected == protocol:
            raise ProtocolRefused(f"the peer does not speak {protocol}")
        if answer != expected:
            raise Libp2pError(f"multistream-select: expected {expected!r}, got {answer!r}")


# --- Noise ----------------------------------------------------------------------------


def _hkdf2(chaining_key: bytes, material: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (HMAC-SHA256)."""
    temp = hmac.new(chaining_key, material, hashlib.sha256).digest()
    first = hmac.new(temp, b"\x01", hashlib.sha256).digest()
    return first, hmac.new(temp, first + b"\x02", hashlib.sha256).digest()


class _CipherState:
    def __init__(self, key: bytes):
        self.key, self.nonce = key, 0

    def _cipher(self):
        if self.nonce >= 2**64 - 1:
            raise Libp2pError("noise: nonces exhausted")
        nonce = b"\0\0\0\0" + self.nonce.to_bytes(8, "little")
        self.nonce += 1
        return ChaCha20_Poly1305.new(key=self.key, nonce=nonce)

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        cipher = self._cipher()
        cipher.update(ad)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return ciphertext + tag

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < 16:
            raise Libp2pError("noise: a frame shorter than its tag")
        cipher = self._cipher()
        cipher.update(ad)
        try:
            return cipher.decrypt_and_verify(ciphertext[:-16], ciphertext[-16:])
        except ValueError:
            raise Libp2pError("noise: a frame failed authentication") from None


class _SymmetricState:
    """Noise's SymmetricState: the handshake hash `h`, chaining key `ck` and cipher."""

    def __init__(self):
        self.h = self.ck = NOISE_PROTOCOL_NAME
        self.cipher: _CipherState | None = None
        self.mix_hash(b"")  # libp2p uses an empty prologue

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, material: bytes) -> None:
        self.ck, key = _hkdf2(self.ck, material)
        self.cipher = _CipherState(key)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = self.cipher.encrypt(self.h, plaintext) if self.cipher else plaintext
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, data: bytes) -> bytes:
        out = self.cipher.decrypt(self.h, data) if self.cipher else data
        self.mix_hash(data)
        return out

    def split(self) -> tuple[_CipherState, _CipherState]:
        first, second = _hkdf2(self.ck, b"")
        return _CipherState(first), _CipherState(second)


def _dh(private, public: bytes) -> bytes:
    try:
        return key_agreement(static_priv=private, static_pub=import_x25519_public_key(public), kdf=lambda x: x)
    except ValueError as e:
        raise Libp2pError(f"noise: bad X25519 key from the peer: {e}") from None


def _x25519_public(private) -> bytes:
    return private.public_key().export_key(format="raw")


def _protobuf_fields(data: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a protobuf message (others skipped; last one wins)."""
    fields, at = {}, 0

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            if at >= len(data) or shift > 63:
                raise Libp2pError("noise payload: truncated varint")
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            varint()
        elif wire_type == 2:
            length = varint()
            if at + length > len(data):
                raise Libp2pError("noise payload: truncated field")
            fields[number] = data[at : at + length]
            at += length
        elif wire_type in (1, 5):
            at += 8 if wire_type == 1 else 4
        else:
            raise Libp2pError(f"noise payload: unsupported protobuf wire type {wire_type}")
    return fields


def _handshake_payload(identity: peerid.Secp256k1Identity, static_public: bytes) -> bytes:
    """`NoiseHandshakePayload { identity_key = 1; identity_sig = 2 }`."""
    key = identity.encoded_public_key()
    signature = identity.sign(peerid.NOISE_SIGNATURE_PREFIX + static_public)
    return b"\x0a" + _uvarint(len(key)) + key + b"\x12" + _uvarint(len(signature)) + signature


def _check_remote(payload: bytes, remote_static: bytes, expected_peer: bytes) -> None:
    """The responder's payload must name the peer we dialled and sign its Noise key."""
    fields = _protobuf_fields(payload)
    if 1 not in fields or 2 not in fields:
        raise Libp2pError("noise: the peer's payload has no identity key or signature")
    key, signature = fields[1], fields[2]
    try:
        actual = peerid.peer_id_bytes(key)
        signed = peerid.verify_libp2p_signature(key, peerid.NOISE_SIGNATURE_PREFIX + remote_static, signature)
    except ValueError as e:
        raise Libp2pError(f"noise: the peer's identity key: {e}") from None
    if actual != expected_peer:
        raise Libp2pError(
            f"noise: dialled {peerid.peer_id_text(expected_peer)} but the peer is {peerid.peer_id_text(actual)}"
        )
    if not signed:
        raise Libp2pError("noise: the peer's signature over its static key does not verify")


class _NoiseChannel:
    """A byte stream over Noise transport messages, each a 2-byte big-endian length and
    a ChaCha20-Poly1305 ciphertext."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()
        self.send_cipher: _CipherState | None = None
        self.recv_cipher: _CipherState | None = None

    def _recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except TimeoutError:
                raise Libp2pError("timed out waiting for the peer") from None
            if not chunk:
                raise Libp2pError("the peer closed the connection")
            data += chunk
        return bytes(data)

    def send_frame(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">H", len(body)) + body)

    def recv_frame(self) -> bytes:
        (length,) = struct.unpack(">H", self._recv_exact(2))
        return self._recv_exact(length)

    def handshake(self, identity: peerid.Secp256k1Identity, expected_peer: bytes) -> None:
        """Noise XX as the initiator: `-> e`, `<- e, ee, s, es`, `-> s, se`."""
        state = _SymmetricState()
        ephemeral, static = ECC.generate(curve="curve25519"), ECC.generate(curve="curve25519")
        e_public = _x25519_public(ephemeral)
        state.mix_hash(e_public)
        self.send_frame(e_public + state.encrypt_and_hash(b""))

        reply = self.recv_frame()
        if len(reply) < 32 + 48:
            raise Libp2pError("noise: the second handshake message is too short")
        remote_ephemeral = reply[:32]
        state.mix_hash(remote_ephemeral)
        state.mix_key(_dh(ephemeral, remote_ephemeral))
        remote_static = state.decrypt_and_hash(reply[32:80])
        state.mix_key(_dh(ephemeral, remote_static))
        _check_remote(state.decrypt_and_hash(reply[80:]), remote_static, expected_peer)

        s_public = _x25519_public(static)
        encrypted_static = state.encrypt_and_hash(s_public)
        state.mix_key(_dh(static, remote_ephemeral))
        self.send_frame(encrypted_static + state.encrypt_and_hash(_handshake_payload(identity, s_public)))
        self.send_cipher, self.recv_cipher = state.split()

    def write(self, data: bytes) -> None:
        for at in range(0, len(data), NOISE_MAX_PLAINTEXT):
            self.send_frame(self.send_cipher.encrypt(b"", data[at : at + NOISE_MAX_PLAINTEXT]))

    def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self.recv_cipher.decrypt(b"", self.recv_frame())
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


# --- yamux ----------------------------------------------------------------------------


class _Stream:
    def __init__(self):
        self.received = bytearray()
        self.closed_by_peer = False  # FIN seen
        self.reset = False
        self.send_window = YAMUX_INITIAL_WINDOW


class Connection:
    """A yamux session over a Noise channel to one authenticated peer."""

    def __init__(self, channel: _NoiseChannel):
        self.channel = channel
        self.streams: dict[int, _Stream] = {}
        self.next_stream_id = 1  # the dialer's streams are odd

    def _send(self, frame_type: int, flags: int, stream_id: int, length: int, body: bytes = b"") -> None:
        self.channel.write(struct.pack(">BBHII", 0, frame_type, flags, stream_id, length) + body)

    def _pump(self) -> None:
        """Reads and handles one frame from the peer."""
        version, frame_type, flags, stream_id, length = struct.unpack(">BBHII", self.channel.read_exact(12))
        if version != 0:
            raise Libp2pError(f"yamux: version {version}")
        if frame_type == YAMUX_PING:
            if flags & SYN:
                self._send(YAMUX_PING, ACK, 0, length)
            return
        if frame_type == YAMUX_GO_AWAY:
            raise Libp2pError(f"yamux: the peer closed the session (go away, code {length})")
        if frame_type not in (YAMUX_DATA, YAMUX_WINDOW_UPDATE):
            raise Libp2pError(f"yamux: unknown frame type {frame_type}")
        body = self.channel.read_exact(length) if frame_type == YAMUX_DATA else b""
        stream = self.streams.get(stream_id)
        if stream is None:
            if flags & SYN:
                # The node opens streams of its own (identify, ping, Kademlia, gossipsub):
                # this client serves none of them.
                self._send(YAMUX_WINDOW_UPDATE, RST, stream_id, 0)
            return
        if frame_type == YAMUX_WINDOW_UPDATE:
            stream.send_window += length
        else:
            stream.received += body
        if flags & FIN:
            stream.closed_by_peer = True
        if flags & RST:
            stream.reset = True

    def _open(self) -> int:
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        self.streams[stream_id] = _Stream()
        self._send(YAMUX_WINDOW_UPDATE, SYN, stream_id, 0)
        return stream_id

    def _write(self, stream_id: int, data: bytes) -> None:
        stream = self.streams[stream_id]
        at = 0
        while at < len(data):
            if stream.reset:
                raise Libp2pError("yamux: the peer reset the stream")
            if stream.send_window == 0:
                self._pump()
                continue
            chunk = data[at : at + min(stream.send_window, YAMUX_MAX_FRAME)]
            self._send(YAMUX_DATA, 0, stream_id, len(chunk), chunk)
            stream.send_window -= len(chunk)
            at += len(chunk)

    def _read_exact(self, stream_id: int, n: int) -> bytes:
        stream = self.streams[stream_id]
        while len(stream.received) < n:
            if stream.reset or stream.closed_by_peer:
                raise Libp2pError("yamux: the stream ended early")
            self._pump()
        out = bytes(stream.received[:n])
        del stream.received[:n]
        self._credit(stream_id, n)
        return out

    def _credit(self, stream_id: int, consumed: int) -> None:
        """Gives back the receive window as data is consumed, so large answers keep flowing."""
        if consumed:
            self._send(YAMUX_WINDOW_UPDATE, 0, stream_id, consumed)

    def request(self, protocol: str, body: bytes, max_response: int) -> bytes:
        """One request-response exchange on a fresh stream: negotiate `protocol`, write
        `body`, close the write side, read the answer to EOF (at most `max_response` bytes)."""
        stream_id = self._open()
        stream = self.streams[stream_id]
        try:
            negotiate(
                lambda data: self._write(stream_id, data),
                lambda n: self._read_exact(stream_id, n),
                protocol,
            )
            self._write(stream_id, body)
            self._send(YAMUX_DATA, FIN, stream_id, 0)
            answer = bytearray()
            while True:
                if stream.received:
                    consumed = len(stream.received)
                    answer += stream.received
                    stream.received.clear()
                    if len(answer) > max_response:
                        raise Libp2pError(f"the answer exceeds {max_response} bytes")
                    if not stream.closed_by_peer:
                        self._credit(stream_id, consumed)
                if stream.reset:
                    raise Libp2pError("yamux: the peer reset the stream")
                if stream.closed_by_peer:
                    return bytes(answer)
                self._pump()
        finally:
            del self.streams[stream_id]

    def close(self) -> None:
        try:
            self._send(YAMUX_GO_AWAY, 0, 0, 0)
        except OSError:
            pass
        self.channel.sock.close()


def dial(address: Multiaddr, identity: peerid.Secp256k1Identity, timeout: float) -> Connection:
    """TCP, then `/noise` (checking the peer is `address.peer_id`), then `/yamux/1.0.0`."""
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as e:
        raise Libp2pError(f"cannot connect to {address.host}:{address.port}: {e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    channel = _NoiseChannel(sock)
    try:
        negotiate(sock.sendall, channel._recv_exact, NOISE)
        channel.handshake(identity, address.peer_id)
        negotiate(channel.write, channel.read_exact, YAMUX)
    except (Libp2pError, OSError):
        sock.close()
        raise
    return Connection(channel)
