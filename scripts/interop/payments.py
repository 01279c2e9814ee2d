"""Metering and vouchers (`payments.md`): what a step costs, and the payment field.

The unit is the block-token, one position through one block. A node registers one price
for its whole span of `n` blocks, so `U` block-tokens cost `⌊price · U / n⌋` wei, rounded
once on the cumulative count; a voucher promises that cumulative amount.
"""

from . import eip712, wire


def positions(payload: wire.Payload) -> int:
    """The positions a step carries: token ids, a `[1, S, D]` tensor's S, a mask's length;
    for a draft step its ids and every guess fed back (all but the last)."""
    if isinstance(payload, wire.Tokens):
        return len(payload.ids)
    if isinstance(payload, wire.Draft):
        return len(payload.ids) + max(payload.guesses - 1, 0)
    if isinstance(payload, wire.Tensor):
        return payload.dims[1] if len(payload.dims) > 1 else 0
    if isinstance(payload, wire.Masked):
        return len(payload.attention_mask)
    return 0


def block_tokens(kind: wire.StepKind, step_positions: int, first_block: int, last_block: int) -> int:
    """A step's units: positions × blocks of the span; Close steps are free."""
    if kind == wire.StepKind.Close:
        return 0
    return step_positions * (last_block - first_block + 1)


def amount_owed(price_per_token: int, total_block_tokens: int, span_blocks: int) -> int:
    """Wei owed for a cumulative count of block-tokens on a node registered for
    `span_blocks` blocks at `price_per_token`."""
    return price_per_token * total_block_tokens // span_blocks


def channels_domain(chain_id: int, channels: str) -> eip712.Domain:
    return eip712.Domain(eip712.CHANNELS_NAME, chain_id, channels)


def sign_voucher(payer_secret: int, domain: eip712.Domain, channel_id: int, cumulative_amount: int) -> wire.Voucher:
    digest = domain.digest(eip712.voucher_struct_hash(channel_id, cumulative_amount))
    return wire.Voucher(channel_id, cumulative_amount, eip712.sign(payer_secret, digest))


def credit_decision(owed_after: int, latest_voucher: int, deposit: int, min_deposit: int, credit: int) -> tuple[int, bool]:
    """`(unpaid, served)` for a step that brings the channel's usage to `owed_after` wei
    (`payments.md`, "Credit"): served when vouchers cover it, or when the channel holds at
    least `min_deposit` and the usage, and what vouchers do not cover is within the credit."""
    unpaid = max(owed_after - min(latest_voucher, deposit), 0)
    served = unpaid == 0 or (deposit >= min_deposit and owed_after <= deposit and unpaid <= credit)
    return unpaid, served
