"""Block plans and the per-block graph scaffolding shared by all families.

The interface of each block (input/output names, dtypes, symbolic shapes) is produced
in one place, `block_io`, and used both to declare the ONNX graph's inputs/outputs and
to write the manifest, so the two can never disagree."""

from dataclasses import dataclass

from .config import ModelConfig
from .errors import UsageError
from .onnxgraph import GraphBuilder


@dataclass(frozen=True)
class Block:
    index: int
    first_layer: int  # global layer index, inclusive
    last_layer: int   # inclusive
    count: int        # number of blocks in the import

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.last_layer + 1)


def plan_even(num_layers: int, blocks: int) -> list[Block]:
    """Split layers into `blocks` contiguous ranges; earlier blocks take the remainder."""
    if not 1 <= blocks <= num_layers:
        raise UsageError(f"--blocks must be between 1 and the layer count {num_layers}, got {blocks}")
    base, extra = divmod(num_layers, blocks)
    plan, start = [], 0
    for i in range(blocks):
        size = base + (1 if i < extra else 0)
        plan.append(Block(i, start, start + size - 1, blocks))
        start += size
    return plan


def plan_ranges(num_layers: int, spec: str) -> list[Block]:
    """Parse `0-3,4-7,8-11`: contiguous, in order, covering every layer exactly once."""
    ranges = []
    for part in spec.split(","):
        try:
            lo, _, hi = part.strip().partition("-")
            ranges.append((int(lo), int(hi) if hi else int(lo)))
        except ValueError:
            raise UsageError(f"--layers: cannot parse {part!r} (expected e.g. 0-3,4-7)") from None
    expected = 0
    for lo, hi in ranges:
        if lo != expected or hi < lo:
            raise UsageError(f"--layers {spec!r}: ranges must be contiguous and ascending from layer 0 "
                             f"(expected a range starting at {expected}, got {lo}-{hi})")
        expected = hi + 1
    if expected != num_layers:
        raise UsageError(f"--layers {spec!r} covers layers 0-{expected - 1} but the model has {num_layers} layers")
    return [Block(i, lo, hi, len(ranges)) for i, (lo, hi) in enumerate(ranges)]


def _tensor(name: str, dtype: str, shape: list) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape}


def block_io(cfg: ModelConfig, block: Block) -> tuple[list[dict], list[dict]]:
    """The block's inputs and outputs as manifest entries (symbolic dims: batch, seq, past, total).

    Decoder blocks run a batch of sessions at once: row b's first `past_padding[b]` positions of
    `past_*` are padding, its cached tokens fill the rest of the `past` axis, and `seq` new ones
    follow."""
    hidden = _tensor("hidden_in", "float32", ["batch", "seq", cfg.hidden_size])
    inputs, outputs = [], []
    if cfg.is_decoder:
        inputs.append(_tensor("input_ids", "int64", ["batch", "seq"]) if block.is_first else hidden)
        inputs.append(_tensor("past_padding", "int64", ["batch"]))
        for layer in block.layers:
            for kind in ("key", "value"):
                inputs.append(_tensor(f"past_{kind}.{layer}", "float32",
                                      ["batch", cfg.num_kv_heads, "past", cfg.head_dim]))
        outputs.append(_tensor("logits", "float32", ["batch", "seq", cfg.vocab_size]) if block.is_last
                       else _tensor("hidden_out", "float32", ["batch", "seq", cfg.hidden_size]))
        for layer in block.layers:
            for kind in ("key", "value"):
                outputs.append(_tensor(f"present_{kind}.{layer}", "float32",
                                       ["batch", cfg.num_kv_heads, "total", cfg.head_dim]))
    else:
        if block.is_first:
            inputs += [_tensor(n, "int64", [1, "seq"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
        else:
            inputs += [_tensor("hidden_in", "float32", [1, "seq", cfg.hidden_size]),
                       _tensor("attention_mask", "int64", [1, "seq"])]
        outputs.append(_tensor("token_embeddings" if block.is_last else "hidden_out", "float32",
                               [1, "seq", cfg.hidden_size]))
    return inputs, outputs


def build_decoder_block(g: GraphBuilder, cfg: ModelConfig, block: Block, family) -> None:
    """Decoder scaffolding: inputs, per-row positions L[b]+arange(S), the mask, layers, outputs.

    Row b's first `past_padding[b]` = Z[b] positions of the past axis (length P) are padding and
    its L[b] = P − Z[b] cached tokens fill the rest (left padding); the S new ones are at
    P..P+S-1. Query s may see key t when Z[b] ≤ t < P, or when t ≥ P and t − P ≤ s (causal
    among the new). Left padding keeps a row's tokens contiguous in `present_*`, so a batch's
    present is the next step's past as it is. With one unpadded row (Z = 0) this is exactly the
    causal mask t ≤ P + s.

    `family` supplies embed(g, ids, pos), prepare(g, pos) (per-block position tables),
    layer(g, h, layer, allowed, past) → (h, present_k, present_v) and head(g, h)."""
    inputs, outputs = block_io(cfg, block)
    for spec in inputs:
        g.add_input(spec["name"], spec["dtype"], spec["shape"])
    x = inputs[0]["name"]
    first_past = f"past_key.{block.first_layer}"
    seq = g.op("Shape", [x], hint="seq_len", start=1, end=2)
    past = g.op("Shape", [first_past], hint="past_len", start=2, end=3)
    total = g.op("Add", [past, seq], hint="total_len")
    zero_axis = g.const([0])
    seq_s = g.op("Squeeze", [seq, zero_axis], hint="seq_scalar")
    past_s = g.op("Squeeze", [past, zero_axis], hint="past_scalar")
    total_s = g.op("Squeeze", [total, zero_axis], hint="total_scalar")
    zero, one = g.const(0), g.const(1)
    steps = g.op("Range", [zero, seq_s, one], hint="steps")  # [S]
    padding = g.op("Unsqueeze", ["past_padding", g.const([1])], hint="padding_col")  # [B, 1]
    lengths = g.op("Sub", [past_s, padding], hint="lengths_col")  # [B, 1]
    pos = g.op("Add", [lengths, g.op("Unsqueeze", [steps, zero_axis], hint="steps_row")], hint="positions")  # [B, S]
    keys = g.op("Range", [zero, total_s, one], hint="key_positions")  # [T]
    fresh = g.op("GreaterOrEqual", [keys, past_s], hint="key_fresh")  # [T]
    cached = g.op("And", [g.op("GreaterOrEqual", [keys, g.op("Unsqueeze", [padding, g.const([2])], hint="padding_3d")],
                               hint="key_unpadded"),
                          g.op("Not", [fresh], hint="key_past")], hint="key_cached")  # [B, 1, T]
    causal = g.op("LessOrEqual", [g.op("Sub", [keys, past_s], hint="key_step"),
                                  g.op("Unsqueeze", [steps, g.const([1])], hint="query_steps")],
                  hint="key_causal")  # [S, T]
    allowed = g.op("Or", [cached, g.op("And", [fresh, causal], hint="key_new_allowed")],
                   hint="allowed")  # [B, S, T]
    allowed = g.op("Unsqueeze", [allowed, g.const([1, 2])], hint="allowed_5d")  # [B, 1, 1, S, T]
    family.prepare(g, pos)
    h = family.embed(g, x, pos) if block.is_first else x
    for layer in block.layers:
        h, present_k, present_v = family.layer(g, h, layer, allowed, (f"past_key.{layer}", f"past_value.{layer}"))
        g.add_output(present_k, f"present_key.{layer}", "float32", ["batch", cfg.num_kv_heads, "total", cfg.head_dim])
        g.add_output(present_v, f"present_value.{layer}", "float32", ["batch", cfg.num_kv_heads, "total", cfg.head_dim])
    main = outputs[0]
    g.add_output(family.head(g, h) if block.is_last else h, main["name"], main["dtype"], main["shape"])
    # present_* were added before the main output; put the main output first as in the manifest.
    g.outputs.insert(0, g.outputs.pop())


def build_encoder_block(g: GraphBuilder, cfg: ModelConfig, block: Block, family) -> None:
    """Encoder scaffolding: padded keys (attention_mask 0) are excluded from attention."""
    inputs, outputs = block_io(cfg, block)
    for spec in inputs:
        g.add_input(spec["name"], spec["dtype"], spec["shape"])
    mask = g.op("Cast", ["attention_mask"], hint="key_mask", to=9)  # bool
    allowed = g.op("Unsqueeze", [mask, g.const([1, 2, 3])], hint="key_allowed")  # [1,1,1,1,S]
    h = family.embed(g, "input_ids", "token_type_ids") if block.is_first else "hidden_in"
    for layer in block.layers:
        h = family.layer(g, h, layer, allowed)
    main = outputs[0]
    g.add_output(h, main["name"], main["dtype"], main["shape"])
