"""Sends one paid Prefill step to an InferGrid node and checks its signed answer.

    python -m scripts.interop.client --node /ip4/127.0.0.1/tcp/31000/p2p/16Uiu2… \\
        --rpc-url http://127.0.0.1:8545 --deployment anvil-fixtures/devnet/deployment.json \\
        --key-env PAYER_KEY --channel 1 --model-id 0x… --blocks 0-2 --tokens 1,2,3

It reads the node's operator, price and registered span from the registry, signs a voucher
for what the step costs (`payments.md`, "Metering"), dials the node with a libp2p identity
derived from the payer key (as `infergrid gateway` does), sends the step, and checks that
the answer's EIP-712 `Response` signature recovers to the operator registered for the
node's peer id, for the chain's current epoch or one either side (`wire.md`).
Prints one JSON object. Exit status: 0 a checked answer, 1 a refusal or an answer that
does not check, 2 bad arguments or a failure to reach the chain or the node.
"""

import argparse
import json
import math
import os
import random
import sys

from . import chain, eip712, libp2p, payments, peerid, wire


class ClientError(Exception):
    """Anything that stops the step before an answer: printed as `error: …`, status 2."""


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--node", required=True, help="the node's multiaddr, /ip4/…/tcp/…/p2p/<peer id>")
    parser.add_argument("--rpc-url", required=True, help="the chain's JSON-RPC endpoint")
    parser.add_argument("--deployment", required=True, help="the deployment JSON (chain id, contract addresses)")
    parser.add_argument("--key-env", required=True, help="environment variable holding the payer's private key")
    parser.add_argument("--channel", required=True, type=int, help="the payment channel to the node's operator")
    parser.add_argument("--model-id", required=True, help="0x + 64 hex digits")
    parser.add_argument("--blocks", required=True, help="the span, FIRST-LAST (inclusive) or one block")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids of the prompt")
    parser.add_argument(
        "--metered-before",
        type=int,
        default=0,
        help="block-tokens this payer already used on the channel (vouchers are cumulative)",
    )
    parser.add_argument("--session", type=int, help="the session id (default: random)")
    parser.add_argument("--values", action="store_true", help="print the output's values too")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node")
    return parser.parse_args(argv)


def _span(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        span = int(first), int(last or first)
    except ValueError:
        raise ClientError(f"--blocks {text}: expected FIRST-LAST") from None
    if not 0 <= span[0] <= span[1] <= 0xFFFF:
        raise ClientError(f"--blocks {text}: not a span of u16 block indices")
    return span


def _load_deployment(path: str) -> tuple[int, dict[str, str]]:
    try:
        with open(path) as file:
            deployment = json.load(file)
        return int(deployment["chain_id"]), deployment["contracts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClientError(f"deployment file {path}: {e}") from None


def _payer_secret(variable: str) -> int:
    text = os.environ.get(variable)
    if not text:
        raise ClientError(f"environment variable {variable} (the payer's private key) is not set")
    try:
        return eip712.secret_from_hex(text)
    except ValueError as e:
        raise ClientError(f"{variable}: {e}") from None


def _account_summary(account: wire.Account | None) -> dict:
    """The node's account of the channel, as it came with the answer (amounts in wei)."""
    if account is None:
        return {}
    return {
        "account": {
            "channel": account.channel_id,
            "metered_block_tokens": account.metered,
            "owed": str(account.owed()),
            "voucher": str(account.voucher),
            "credit": str(account.credit),
        }
    }


def _malformed(output: wire.Payload, step_positions: int) -> str | None:
    """What is wrong with a step's output, if anything (`wire.md`, "Answer checks"): a
    float32 tensor `[1, S, W]` for the S positions sent, every value finite. (W, the hidden
    or vocabulary size, needs the model's manifest, which this client does not read.)"""
    if not isinstance(output, wire.Tensor):
        return f"a {type(output).__name__} payload, not a tensor"
    if len(output.dims) != 3 or output.dims[:2] != (1, step_positions):
        return f"shape {list(output.dims)}, not [1, {step_positions}, W]"
    if not all(math.isfinite(value) for value in output.values()):
        return "a value is not finite"
    return None


def _signer(rpc: chain.Rpc, validation: str, domain: eip712.Domain, request_hash: bytes,
            answer: wire.Answer, operator: str) -> tuple[int | None, list[str]]:
    """The epoch (current, then one either side) whose `Response` digest recovers to the
    operator, and what each tried epoch recovered to."""
    current = rpc.current_epoch(validation)
    tried = []
    for epoch in (current, current - 1, current + 1):
        if epoch < 0:
            continue
        digest = domain.digest(eip712.response_struct_hash(request_hash, answer.output_hash(), epoch))
        try:
            signer = eip712.recover_address(digest, answer.signature)
        except ValueError as e:
            signer = f"none ({e})"
        tried.append(f"epoch {epoch}: {signer}")
        if signer == operator:
            return epoch, tried
    return None, tried


def _node_terms(rpc: chain.Rpc, registry: str, peer: bytes, model_id: bytes) -> tuple[str, chain.NodeRecord]:
    """The operator registered for `peer` and its service, which must be for `model_id`."""
    operator = rpc.operator_of(registry, peer)
    if operator is None:
        raise ClientError(f"peer {peerid.peer_id_text(peer)} is not registered in the NodeRegistry")
    node = rpc.get_node(registry, operator)
    if node.model_id != model_id:
        raise ClientError(f"the node is registered for model 0x{node.model_id.hex()}, not 0x{model_id.hex()}")
    return operator, node


def _exchange(address: libp2p.Multiaddr, identity: peerid.Secp256k1Identity, request: wire.InferRequest,
              timeout: float) -> wire.Answer | wire.Refusal:
    connection = libp2p.dial(address, identity, timeout)
    try:
        return wire.decode_response(connection.request(wire.PROTOCOL, request.encode(), wire.MAX_MESSAGE_BYTES + 1))
    finally:
        connection.close()


def run(args: argparse.Namespace) -> tuple[int, dict]:
    """The step, as `(exit status, JSON result)`."""
    first, last = _span(args.blocks)
    try:
        model_id = bytes.fromhex(args.model_id.removeprefix("0x"))
        tokens = tuple(int(t) for t in args.tokens.split(","))
        address = libp2p.Multiaddr(args.node)
    except ValueError as e:
        raise ClientError(str(e)) from None
    if len(model_id) != 32:
        raise ClientError("--model-id: expected 0x and 64 hex digits")
    chain_id, contracts = _load_deployment(args.deployment)
    payer = _payer_secret(args.key_env)
    rpc = chain.Rpc(args.rpc_url)
    if rpc.chain_id() != chain_id:
        raise ClientError(f"{args.rpc_url} is chain {rpc.chain_id()}, the deployment is for chain {chain_id}")
    operator, node = _node_terms(rpc, contracts["registry"], address.peer_id, model_id)

    payload, kind = wire.Tokens(tokens), wire.StepKind.Prefill
    units = payments.block_tokens(kind, payments.positions(payload), first, last)
    amount = payments.amount_owed(node.price_per_token, args.metered_before + units, node.span_blocks)
    voucher = payments.sign_voucher(payer, payments.channels_domain(chain_id, contracts["channels"]), args.channel, amount)
    session = args.session if args.session is not None else random.getrandbits(64)
    request = wire.InferRequest(kind, model_id, first, last, session, 0, payload, voucher)
    result = {"peer_id": peerid.peer_id_text(address.peer_id), "operator": operator}
    try:
        response = _exchange(address, peerid.Secp256k1Identity.derive(payer), request, args.timeout)
    except libp2p.ProtocolRefused as e:
        return 1, result | {"status": "VersionRefused", "message": str(e)}

    if isinstance(response, wire.Refusal):
        code = response.code
        status = "VersionRefused" if wire.is_retired_version(response) else "Err"
        result |= {"status": status, "code": int(code), "error": code.name, "message": response.message}
        if response.reason is not None:
            result["reason"] = response.reason.name
        return 1, result | _account_summary(response.account)
    problem = _malformed(response.output, len(tokens))
    if problem:
        return 1, result | {"status": "Malformed", "message": f"the node's answer is malformed: {problem}"}
    validation = eip712.Domain(eip712.VALIDATION_NAME, chain_id, contracts["validation"])
    epoch, tried = _signer(rpc, contracts["validation"], validation, request.request_hash(), response, operator)
    result |= {
        "status": "Ok" if epoch is not None else "Unverified",
        "recovered": operator if epoch is not None else None,
        "epoch": epoch,
        "request_hash": "0x" + request.request_hash().hex(),
        "output_hash": "0x" + response.output_hash().hex(),
        "output": {"shape": list(response.output.dims)},
        "block_tokens": units,
        "amount_paid": str(amount),
        "channel": args.channel,
    } | _account_summary(response.account)
    if args.values:
        result["output"]["values"] = response.output.values()
    if epoch is None:
        result["message"] = "the answer's signature does not recover to the operator: " + "; ".join(tried)
        return 1, result
    return 0, result


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        status, result = run(args)
    except (ClientError, chain.ChainError, libp2p.Libp2pError, wire.CodecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: connection to the node failed: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    if status:
        print(f"error: {result['message']}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
