"""Per-family layer graphs: Llama, GPT-2 and BERT, built from HF checkpoint tensors.

Each family resolves its HF tensor names (with or without the `model.` / `transformer.`
/ `bert.` prefix real checkpoints differ on) and emits ONNX for embedding, one layer,
and the head; blocks.py wires them into block graphs."""

import numpy as np

from .checkpoint import Checkpoint
from .config import ModelConfig
from .errors import CheckpointError
from .onnxgraph import GraphBuilder, attention, gelu, layer_norm, linear, rms_norm, silu


def _prefix(ckpt: Checkpoint, probe: str, candidates: tuple[str, ...]) -> str:
    for prefix in candidates:
        if ckpt.has(prefix + probe):
            return prefix
    raise CheckpointError(f"{ckpt.folder}: cannot find tensor {probe!r} (tried prefixes {list(candidates)})")


class Llama:
    def __init__(self, ckpt: Checkpoint, cfg: ModelConfig):
        self.ckpt, self.cfg = ckpt, cfg
        self.p = _prefix(ckpt, "embed_tokens.weight", ("model.", ""))
        self._embed_name: str | None = None
        self._tables: dict[int, tuple[str, str]] = {}

    def w(self, name: str) -> np.ndarray:
        return self.ckpt.get(self.p + name)

    def prepare(self, g: GraphBuilder, pos: str) -> None:
        """cos/sin tables for positions `pos` [B, S], HF layout (freqs repeated twice), shaped
        [B, 1, 1, S, D] for queries and [B, 1, S, D] for keys."""
        d = self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
        pos_f = g.op("Unsqueeze", [g.op("Cast", [pos], hint="positions_f", to=1), g.const([2])], hint="positions_col")
        freqs = g.op("Mul", [pos_f, g.const(inv_freq.astype(np.float32), "float32")], hint="rope_freqs")
        emb = g.op("Concat", [freqs, freqs], hint="rope_angles", axis=-1)  # [B, S, D]
        cos, sin = g.op("Cos", [emb], hint="rope_cos"), g.op("Sin", [emb], hint="rope_sin")
        self._tables = {
            5: (g.op("Unsqueeze", [cos, g.const([1, 2])], hint="rope_cos_q"),
                g.op("Unsqueeze", [sin, g.const([1, 2])], hint="rope_sin_q")),
            4: (g.op("Unsqueeze", [cos, g.const([1])], hint="rope_cos_k"),
                g.op("Unsqueeze", [sin, g.const([1])], hint="rope_sin_k")),
        }

    def _rotary(self, g: GraphBuilder):
        half = self.cfg.head_dim // 2

        def apply(x: str, hint: str, rank: int) -> str:
            cos, sin = self._tables[rank]
            x1, x2 = g.op("Split", [x, g.const([half, half])], hint=f"{hint}.half", outputs=2, axis=-1)
            rotated = g.op("Concat", [g.op("Neg", [x2], hint=f"{hint}.neg"), x1], hint=f"{hint}.rot", axis=-1)
            return g.op("Add", [g.op("Mul", [x, cos], hint=f"{hint}.cos"),
                                g.op("Mul", [rotated, sin], hint=f"{hint}.sin")], hint=f"{hint}.rope")
        return apply

    def embed(self, g: GraphBuilder, ids: str, pos: str) -> str:
        self._embed_name = g.weight("embed_tokens.weight", self.w("embed_tokens.weight"))
        return g.op("Gather", [self._embed_name, ids], hint="embeddings", axis=0)

    def layer(self, g: GraphBuilder, h: str, i: int, allowed: str, past: tuple[str, str]):
        cfg, pre, name = self.cfg, f"layers.{i}.", f"layer{i}"
        n = rms_norm(g, h, f"{name}.input_layernorm", self.w(pre + "input_layernorm.weight"), cfg.norm_eps)
        q, k, v = (linear(g, n, f"{name}.{x}_proj", self.w(f"{pre}self_attn.{x}_proj.weight").T) for x in "qkv")
        ctx, pk, pv = attention(g, f"{name}.attn", q, k, v, heads=cfg.num_heads, kv_heads=cfg.num_kv_heads,
                                head_dim=cfg.head_dim, allowed=allowed, past=past, rotary=self._rotary(g))
        h = g.op("Add", [h, linear(g, ctx, f"{name}.o_proj", self.w(pre + "self_attn.o_proj.weight").T)],
                 hint=f"{name}.attn_res")
        n = rms_norm(g, h, f"{name}.post_attention_layernorm", self.w(pre + "post_attention_layernorm.weight"),
                     cfg.norm_eps)
        gate = silu(g, linear(g, n, f"{name}.gate_proj", self.w(pre + "mlp.gate_proj.weight").T), f"{name}.silu")
        up = linear(g, n, f"{name}.up_proj", self.w(pre + "mlp.up_proj.weight").T)
        mlp = linear(g, g.op("Mul", [gate, up], hint=f"{name}.gated"), f"{name}.down_proj",
                     self.w(pre + "mlp.down_proj.weight").T)
        return g.op("Add", [h, mlp], hint=f"{name}.out"), pk, pv

    def head(self, g: GraphBuilder, h: str) -> str:
        h = rms_norm(g, h, "norm", self.w("norm.weight"), self.cfg.norm_eps)
        if self.cfg.tie_word_embeddings:
            lm = self._embed_name or g.weight("embed_tokens.weight", self.w("embed_tokens.weight"))
        else:
            lm = g.weight("lm_head.weight", self.ckpt.get("lm_head.weight"))
        return lm_head(g, h, lm, self.cfg)


def lm_head(g: GraphBuilder, h: str, weight_vh: str, cfg: ModelConfig) -> str:
    """logits = h · Wᵀ with W kept [vocab, hidden] (Gemm transB), so a tied one-block model
    shares a single copy of the embedding matrix between Gather and the head."""
    flat = g.op("Reshape", [h, g.const([-1, cfg.hidden_size])], hint="head_in")
    logits = g.op("Gemm", [flat, weight_vh], hint="logits_2d", transB=1)
    rows = g.op("Shape", [h], hint="head_rows", start=0, end=2)  # [B, S]
    shape = g.op("Concat", [rows, g.const([cfg.vocab_size])], hint="logits_shape", axis=0)
    return g.op("Reshape", [logits, shape], hint="logits_3d")


class GPT2:
    def __init__(self, ckpt: Checkpoint, cfg: ModelConfig):
        self.ckpt, self.cfg = ckpt, cfg
        self.p = _prefix(ckpt, "wte.weight", ("transformer.", ""))
        self._wte_name: str | None = None

    def w(self, name: str) -> np.ndarray:
        return self.ckpt.get(self.p + name)

    def prepare(self, g: GraphBuilder, pos: str) -> None:
        """GPT-2 has no per-layer position tables (learned wpe lives in the first block)."""

    def embed(self, g: GraphBuilder, ids: str, pos: str) -> str:
        self._wte_name = g.weight("wte.weight", self.w("wte.weight"))
        tok = g.op("Gather", [self._wte_name, ids], hint="token_embeddings", axis=0)
        wpe = g.op("Gather", [g.weight("wpe.weight", self.w("wpe.weight")), pos], hint="position_embeddings", axis=0)
        return g.op("Add", [tok, wpe], hint="embeddings")

    def layer(self, g: GraphBuilder, h: str, i: int, allowed: str, past: tuple[str, str]):
        cfg, pre, name = self.cfg, f"h.{i}.", f"layer{i}"
        ln = lambda x, t: layer_norm(g, x, f"{name}.{t}", self.w(pre + t + ".weight"), self.w(pre + t + ".bias"),
                                     cfg.norm_eps)
        conv = lambda x, t: linear(g, x, f"{name}.{t}", self.w(pre + t + ".weight"), self.w(pre + t + ".bias"))
        qkv = conv(ln(h, "ln_1"), "attn.c_attn")
        H = cfg.hidden_size
        q, k, v = g.op("Split", [qkv, g.const([H, H, H])], hint=f"{name}.qkv", outputs=3, axis=-1)
        ctx, pk, pv = attention(g, f"{name}.attn", q, k, v, heads=cfg.num_heads, kv_heads=cfg.num_heads,
                                head_dim=cfg.head_dim, allowed=allowed, past=past)
        h = g.op("Add", [h, conv(ctx, "attn.c_proj")], hint=f"{name}.attn_res")
        mlp = conv(gelu(g, conv(ln(h, "ln_2"), "mlp.c_fc"), cfg.activation, f"{name}.gelu"), "mlp.c_proj")
        return g.op("Add", [h, mlp], hint=f"{name}.out"), pk, pv

    def head(self, g: GraphBuilder, h: str) -> str:
        h = layer_norm(g, h, "ln_f", self.w("ln_f.weight"), self.w("ln_f.bias"), self.cfg.norm_eps)
        lm = self._wte_name or g.weight("wte.weight", self.w("wte.weight"))
        return lm_head(g, h, lm, self.cfg)


class Bert:
    def __init__(self, ckpt: Checkpoint, cfg: ModelConfig):
        self.ckpt, self.cfg = ckpt, cfg
        self.p = _prefix(ckpt, "embeddings.word_embeddings.weight", ("bert.", ""))

    def w(self, name: str) -> np.ndarray:
        return self.ckpt.get(self.p + name)

    def _ln(self, g: GraphBuilder, x: str, t: str) -> str:
        return layer_norm(g, x, t, self.w(t + ".weight"), self.w(t + ".bias"), self.cfg.norm_eps)

    def _dense(self, g: GraphBuilder, x: str, t: str) -> str:
        return linear(g, x, t, self.w(t + ".weight").T, self.w(t + ".bias"))

    def embed(self, g: GraphBuilder, ids: str, token_types: str) -> str:
        e = "embeddings."
        seq = g.op("Squeeze", [g.op("Shape", [ids], hint="seq_len", start=1, end=2), g.const([0])], hint="seq_scalar")
        pos = g.op("Range", [g.const(0), seq, g.const(1)], hint="positions")
        words = g.op("Gather", [g.weight(e + "word_embeddings.weight", self.w(e + "word_embeddings.weight")), ids],
                     hint="word_embeddings", axis=0)
        where = g.op("Gather", [g.weight(e + "position_embeddings.weight", self.w(e + "position_embeddings.weight")),
                                pos], hint="position_embeddings", axis=0)
        types = g.op("Gather", [g.weight(e + "token_type_embeddings.weight",
                                         self.w(e + "token_type_embeddings.weight")), token_types],
                     hint="token_type_embeddings", axis=0)
        total = g.op("Add", [g.op("Add", [words, where], hint="emb_sum"), types], hint="emb_total")
        return self._ln(g, total, e + "LayerNorm")

    def layer(self, g: GraphBuilder, h: str, i: int, allowed: str) -> str:
        cfg, pre = self.cfg, f"encoder.layer.{i}."
        q, k, v = (self._dense(g, h, f"{pre}attention.self.{x}") for x in ("query", "key", "value"))
        ctx, _, _ = attention(g, f"layer{i}.attn", q, k, v, heads=cfg.num_heads, kv_heads=cfg.num_heads,
                              head_dim=cfg.head_dim, allowed=allowed)
        attn_out = self._dense(g, ctx, pre + "attention.output.dense")
        h = self._ln(g, g.op("Add", [attn_out, h], hint=f"layer{i}.attn_res"), pre + "attention.output.LayerNorm")
        inter = gelu(g, self._dense(g, h, pre + "intermediate.dense"), cfg.activation, f"layer{i}.gelu")
        out = self._dense(g, inter, pre + "output.dense")
        return self._ln(g, g.op("Add", [out, h], hint=f"layer{i}.ffn_res"), pre + "output.LayerNorm")


FAMILIES = {"llama": Llama, "gpt2": GPT2, "bert": Bert}
