"""reference-forward: an independent float64 numpy forward pass, the importer's test oracle.

    reference-forward --hf DIR --prompt-ids 1,2,3 --steps N --out FILE.npz   (llama, gpt2)
    reference-forward --hf DIR --texts-json FILE --out FILE.npz              (bert)

Written straight from config.json and the safetensors files with nothing shared with
the importer (not its checkpoint reader, config normalization or graph code): a bug
there must show up as a mismatch here, not be reproduced. Decoders recompute the whole
sequence at each greedy step (no KV cache), so the cache logic is checked too.

Output npz: decoders `prompt_ids` [P], `token_ids` [N], `logits` [N, V] (last position
at each step); encoders `input_ids`, `attention_mask` [B, S], `embeddings` [B, H]."""

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import safetensors
from tokenizers import Tokenizer

from .cli import ArgumentParser, run
from .errors import CheckpointError, UnsupportedModelError, UsageError


_NUMPY = {"F32": "<f4", "FLOAT32": "<f4", "F16": "<f2", "FLOAT16": "<f2", "I64": "<i8", "INT64": "<i8"}


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint as float64 (int tensors kept), via safetensors.deserialize."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    if not files:
        raise CheckpointError(f"{folder}: no safetensors files")
    tensors = {}
    for file in files:
        for name, t in safetensors.deserialize((folder / file).read_bytes()):
            raw = bytes(t["data"])
            dtype = t["dtype"].upper()
            if dtype in ("BF16", "BFLOAT16"):
                array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, _NUMPY[dtype])
            tensors[name] = array.reshape(t["shape"]).astype(np.float64 if array.dtype.kind == "f" else np.int64)
    return tensors


def strip_prefix(tensors: dict[str, np.ndarray], prefixes: tuple[str, ...], probe: str) -> dict[str, np.ndarray]:
    for prefix in prefixes:
        if prefix + probe in tensors:
            return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    raise CheckpointError(f"tensor {probe!r} not found")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x, kind: str):
    if kind == "gelu":
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)).astype(np.float64))
    if kind in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    raise UnsupportedModelError(f"activation {kind!r}")


def attend(q, k, v, allowed):
    """q [Hq,T,D], k/v [Hq,T,D] (already repeated for GQA), allowed [T,T] bool → [T, Hq·D]."""
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    probs = softmax(np.where(allowed, scores, -np.inf))
    return (probs @ v).transpose(1, 0, 2).reshape(q.shape[1], -1)


class LlamaRef:
    def __init__(self, cfg: dict, t: dict):
        self.t = strip_prefix(t, ("model.", ""), "embed_tokens.weight")
        self.lm_head = self.t["embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else t["lm_head.weight"]
        self.h, self.nh = cfg["hidden_size"], cfg["num_attention_heads"]
        self.kv = cfg.get("num_key_value_heads") or self.nh
        self.d = cfg.get("head_dim") or self.h // self.nh
        self.eps, self.theta, self.layers = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0), cfg["num_hidden_layers"]

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def logits(self, ids: list[int]) -> np.ndarray:
        t, T, d = self.t, len(ids), self.d
        x = t["embed_tokens.weight"][ids]
        angles = np.arange(T)[:, None] * (1.0 / self.theta ** (np.arange(0, d, 2) / d))[None, :]
        cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
        rope = lambda z: z * cos + np.concatenate([-z[..., d // 2:], z[..., :d // 2]], -1) * sin
        causal = np.tril(np.ones((T, T), dtype=bool))
        for i in range(self.layers):
            p = f"layers.{i}."
            n = self.rms(x, t[p + "input_layernorm.weight"])
            q = rope((n @ t[p + "self_attn.q_proj.weight"].T).reshape(T, self.nh, d).transpose(1, 0, 2))
            k = rope((n @ t[p + "self_attn.k_proj.weight"].T).reshape(T, self.kv, d).transpose(1, 0, 2))
            v = (n @ t[p + "self_attn.v_proj.weight"].T).reshape(T, self.kv, d).transpose(1, 0, 2)
            rep = self.nh // self.kv
            ctx = attend(q, np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0), causal)
            x = x + ctx @ t[p + "self_attn.o_proj.weight"].T
            n = self.rms(x, t[p + "post_attention_layernorm.weight"])
            gate = n @ t[p + "mlp.gate_proj.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (n @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
        return self.rms(x, t["norm.weight"]) @ self.lm_head.T


class GPT2Ref:
    def __init__(self, cfg: dict, t: dict):
        self.t = strip_prefix(t, ("transformer.", ""), "wte.weight")
        self.h, self.nh = cfg["n_embd"], cfg["n_head"]
        self.eps, self.layers = cfg.get("layer_norm_epsilon", 1e-5), cfg["n_layer"]
        self.act = cfg.get("activation_function", "gelu_new")

    def logits(self, ids: list[int]) -> np.ndarray:
        t, T, d = self.t, len(ids), self.h // self.nh
        x = t["wte.weight"][ids] + t["wpe.weight"][np.arange(T)]
        causal = np.tril(np.ones((T, T), dtype=bool))
        heads = lambda z: z.reshape(T, self.nh, d).transpose(1, 0, 2)
        for i in range(self.layers):
            p = f"h.{i}."
            ln = lambda z, n: layer_norm(z, t[f"{p}{n}.weight"], t[f"{p}{n}.bias"], self.eps)
            conv = lambda z, n: z @ t[f"{p}{n}.weight"] + t[f"{p}{n}.bias"]
            q, k, v = np.split(conv(ln(x, "ln_1"), "attn.c_attn"), 3, axis=-1)
            x = x + conv(attend(heads(q), heads(k), heads(v), causal), "attn.c_proj")
            x = x + conv(gelu(conv(ln(x, "ln_2"), "mlp.c_fc"), self.act), "mlp.c_proj")
        return layer_norm(x, t["ln_f.weight"], t["ln_f.bias"], self.eps) @ t["wte.weight"].T


class BertRef:
    def __init__(self, cfg: dict, t: dict):
        self.t = strip_prefix(t, ("bert.", ""), "embeddings.word_embeddings.weight")
        self.h, self.nh = cfg["hidden_size"], cfg["num_attention_heads"]
        self.eps, self.layers, self.act = cfg.get("layer_norm_eps", 1e-12), cfg["num_hidden_layers"], cfg["hidden_act"]

    def hidden(self, ids, types, mask) -> np.ndarray:
        t, T, d = self.t, len(ids), self.h // self.nh
        ln = lambda z, n: layer_norm(z, t[n + ".weight"], t[n + ".bias"], self.eps)
        dense = lambda z, n: z @ t[n + ".weight"].T + t[n + ".bias"]
        heads = lambda z: z.reshape(T, self.nh, d).transpose(1, 0, 2)
        e = "embeddings."
        x = ln(t[e + "word_embeddings.weight"][ids] + t[e + "position_embeddings.weight"][np.arange(T)]
               + t[e + "token_type_embeddings.weight"][types], e + "LayerNorm")
        keys = np.broadcast_to(np.asarray(mask, dtype=bool)[None, :], (T, T))
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (heads(dense(x, f"{p}attention.self.{n}")) for n in ("query", "key", "value"))
            x = ln(x + dense(attend(q, k, v, keys), p + "attention.output.dense"), p + "attention.output.LayerNorm")
            inner = gelu(dense(x, p + "intermediate.dense"), self.act)
            x = ln(x + dense(inner, p + "output.dense"), p + "output.LayerNorm")
        return x


def greedy(model, prompt: list[int], steps: int) -> tuple[np.ndarray, np.ndarray]:
    ids, rows = list(prompt), []
    for _ in range(steps):
        last = model.logits(ids)[-1]
        rows.append(last)
        ids.append(int(np.argmax(last)))
    return np.array(rows), np.array(ids[len(prompt):], dtype=np.int64)


def embed_texts(folder: Path, model: BertRef, texts: list[str]) -> dict[str, np.ndarray]:
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encodings = tokenizer.encode_batch(texts)
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").is_file() else []
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    out, ids, masks = [], [], []
    for enc in encodings:
        mask = np.array(enc.attention_mask, dtype=np.float64)
        hidden = model.hidden(enc.ids, enc.type_ids, enc.attention_mask)
        pooled = (hidden * mask[:, None]).sum(0) / max(mask.sum(), 1e-9)
        out.append(pooled / np.linalg.norm(pooled) if normalize else pooled)
        ids.append(enc.ids)
        masks.append(enc.attention_mask)
    return {"embeddings": np.array(out), "input_ids": np.array(ids, dtype=np.int64),
            "attention_mask": np.array(masks, dtype=np.int64)}


def save(path: Path, **arrays) -> None:
    """`.json` for consumers without an npz reader (the Rust tests), else `.npz`."""
    if path.suffix == ".json":
        path.write_text(json.dumps({k: np.asarray(v).tolist() for k, v in arrays.items()}))
    else:
        np.savez(path, **arrays)


def main(argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="reference-forward", description=__doc__.splitlines()[0])
    p.add_argument("--hf", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="results as .npz, or .json")
    p.add_argument("--prompt-ids", help="comma-separated prompt token ids (decoders)")
    p.add_argument("--steps", type=int, help="greedy steps (decoders)")
    p.add_argument("--texts-json", type=Path, help="JSON list of strings to embed (encoders)")
    a = p.parse_args(argv)
    cfg = json.loads((a.hf / "config.json").read_text())
    archs = cfg.get("architectures") or [cfg.get("model_type")]
    tensors = load_tensors(a.hf)
    if any(x in ("LlamaForCausalLM", "llama") for x in archs) or any(x in ("GPT2LMHeadModel", "gpt2") for x in archs):
        if a.prompt_ids is None or a.steps is None:
            raise UsageError("decoders need --prompt-ids and --steps")
        model = LlamaRef(cfg, tensors) if any("lama" in x for x in archs) else GPT2Ref(cfg, tensors)
        prompt = [int(x) for x in a.prompt_ids.split(",")]
        logits, tokens = greedy(model, prompt, a.steps)
        save(a.out, prompt_ids=np.array(prompt, dtype=np.int64), token_ids=tokens, logits=logits)
    elif any(x in ("BertModel", "bert") for x in archs):
        if a.texts_json is None:
            raise UsageError("encoders need --texts-json")
        save(a.out, **embed_texts(a.hf, BertRef(cfg, tensors), json.loads(a.texts_json.read_text())))
    else:
        raise UnsupportedModelError(f"reference-forward supports llama, gpt2 and bert, not {archs}")
    return 0


if __name__ == "__main__":
    run(main)
