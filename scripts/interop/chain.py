"""Read-only views of the InferGrid contracts over Ethereum JSON-RPC (`eth_call`).

Calls are ABI-encoded by hand: a 4-byte selector (keccak256 of the signature) and 32-byte
words; a dynamic argument or result sits behind an offset word. Only the few views a
client needs before paying a node and checking its answer are here.
"""

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from .eip712 import checksum_address, keccak256, word


class ChainError(Exception):
    """The RPC endpoint failed or answered something this client cannot read."""


@dataclass(frozen=True)
class NodeRecord:
    """The service fields of `NodeRegistry.getNode(operator)`."""

    peer_id: bytes
    model_id: bytes
    first_block: int
    last_block: int
    price_per_token: int

    @property
    def span_blocks(self) -> int:
        return self.last_block - self.first_block + 1


def selector(signature: str) -> bytes:
    return keccak256(signature.encode())[:4]


def encode_bytes_argument(data: bytes) -> bytes:
    """The ABI encoding of a single `bytes` argument: offset, length, padded data."""
    padded = data + b"\0" * (-len(data) % 32)
    return word(32) + word(len(data)) + padded


def _words(data: bytes, count: int, at: int = 0) -> list[int]:
    if len(data) < at + 32 * count:
        raise ChainError(f"an eth_call answer of {len(data)} bytes, {at + 32 * count} expected")
    return [int.from_bytes(data[at + 32 * i : at + 32 * (i + 1)], "big") for i in range(count)]


class Rpc:
    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url, timeout

    def _call(self, method: str, params: list):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                reply = json.load(answer)
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as e:
            raise ChainError(f"{method} at {self.url}: {e}") from None
        if "error" in reply:
            raise ChainError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply["result"]

    def eth_call(self, contract: str, call_data: bytes) -> bytes:
        result = self._call("eth_call", [{"to": contract, "data": "0x" + call_data.hex()}, "latest"])
        return bytes.fromhex(result.removeprefix("0x"))

    def chain_id(self) -> int:
        return int(self._call("eth_chainId", []), 16)

    def latest_block_time(self) -> int:
        return int(self._call("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    def uint_view(self, contract: str, signature: str) -> int:
        """A view without arguments returning one unsigned integer."""
        return _words(self.eth_call(contract, selector(signature)), 1)[0]

    def operator_of(self, registry: str, peer_id: bytes) -> str | None:
        """`NodeRegistry.operatorOf(peerId)`; None when the peer id is not registered."""
        answer = self.eth_call(registry, selector("operatorOf(bytes)") + encode_bytes_argument(peer_id))
        (operator,) = _words(answer, 1)
        return checksum_address(operator.to_bytes(20, "big")) if operator else None

    def get_node(self, registry: str, operator: str) -> NodeRecord:
        """`NodeRegistry.getNode(operator)`: one `Node` tuple, dynamic (it holds `bytes`
        and `string[]`), so the answer starts with the tuple's offset."""
        call = selector("getNode(address)") + word(int(operator, 16))
        answer = self.eth_call(registry, call)
        (tuple_at,) = _words(answer, 1)
        peer_id_at, model_id, first, last, price = _words(answer, 5, tuple_at)
        (length,) = _words(answer, 1, tuple_at + peer_id_at)
        start = tuple_at + peer_id_at + 32
        return NodeRecord(answer[start : start + length], word(model_id), first, last, price)

    def current_epoch(self, validation: str) -> int:
        """The epoch by the chain's clock (`wire.md`, "Response signature"): the later of
        this host's clock and the latest block's timestamp (a lower bound of the chain's
        time), from `Validation.genesis()` and `epochDuration()`."""
        genesis = self.uint_view(validation, "genesis()")
        duration = self.uint_view(validation, "epochDuration()")
        now = max(int(time.time()), self.latest_block_time())
        return (now - genesis) // duration
