"""convert-gguf: a llama.cpp GGUF file → a Hugging Face-style checkpoint folder.

    convert-gguf --gguf FILE --out DIR [--dtype float32|float16]

Writes config.json, model.safetensors (dequantized), tokenizer.json,
tokenizer_config.json (with the chat template) and generation_config.json (the end tokens), which `import-model --hf` then turns into
blocks unchanged; `import-model --gguf` does both in one go.

Two things differ between GGUF and Hugging Face Llama weights and are undone here:
- llama.cpp permutes the rows of attn_q / attn_k so that its rotary embedding can rotate
  adjacent pairs (x[2i], x[2i+1]); HF rotates halves (x[i], x[i + D/2]).
- GGUF lists tensor dims fastest-first (ggml `ne`), numpy slowest-first.

The tokenizer is rebuilt from `tokenizer.ggml.*`: byte-level BPE from the token list and
merges; control tokens (token type 3) become special added tokens. The pre-tokenizer comes
from `tokenizer.ggml.pre`: "gpt2" is ByteLevel's GPT-2 regex alone; "smollm" (and the other
names llama.cpp maps to the same regexes, e.g. "starcoder") first split every digit on its
own, which is Digits(individual_digits=True) before ByteLevel, as in SmolLM2's own
tokenizer.json."""

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from .cli import ArgumentParser, progress, run
from .errors import CheckpointError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama",)
# Tensor types whose dequantization has been checked (F32/Q8_0/Q4_1 against a trained model's
# greedy output; the others share gguf's reference implementation).
SUPPORTED_TYPES = tuple(GGMLQuantizationType[n] for n in (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"))
# tokenizer.ggml.pre → split digits one by one before the byte-level regex?
_PRE_TOKENIZERS = {"gpt2": False, "default": False, "smollm": True, "starcoder": True, "refact": True}
_CONTROL = 3  # llama.cpp LLAMA_TOKEN_TYPE_CONTROL


class GgufFile:
    """A GGUF file's metadata and tensors (dequantized on demand to float32 numpy arrays)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file")
        # The reader maps every tensor up front, so a truncated file fails here (as a
        # reshape or index error on the short mapping) rather than halfway through the import.
        try:
            self._reader = GGUFReader(path)
        except (ValueError, OSError, IndexError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a readable GGUF file, truncated or corrupt ({exc})") from exc
        self.tensors = {t.name: t for t in self._reader.tensors}

    def get(self, key: str, default=None):
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def need(self, key: str):
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.path}: metadata key {key} is missing")
        return value

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as float32, in numpy (HF) dim order."""
        t = self.tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing")
        if t.tensor_type not in SUPPORTED_TYPES:
            raise UnsupportedModelError(f"tensor {name}: GGUF type {t.tensor_type.name} is not supported "
                                        f"(supported: {', '.join(q.name for q in SUPPORTED_TYPES)})")
        shape = tuple(int(n) for n in reversed(t.shape))
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf.py `permute`: per head, rows (pair i, half j)
    go back from interleaved position 2i + j to half-split position j·D/2 + i."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def hf_config(g: GgufFile) -> dict:
    arch = g.need("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported "
                                    f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if g.get("llama.rope.scaling.type", "none") not in ("none", None):
        raise UnsupportedModelError(f"llama rope scaling {g.get('llama.rope.scaling.type')!r} is not supported")
    hidden, heads = int(g.need("llama.embedding_length")), int(g.need("llama.attention.head_count"))
    head_dim = hidden // heads
    rope_dims = int(g.get("llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise UnsupportedModelError(f"partial rotary ({rope_dims} of {head_dim} dims) is not supported")
    tokens = g.need("tokenizer.ggml.tokens")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(g.need("llama.feed_forward_length")),
        "num_hidden_layers": int(g.need("llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.get("llama.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "vocab_size": int(g.get("llama.vocab_size", len(tokens))),
        "max_position_embeddings": int(g.get("llama.context_length", 2048)),
        "rms_norm_eps": float(g.need("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(g.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "hidden_act": "silu",
        "bos_token_id": g.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": g.get("tokenizer.ggml.padding_token_id"),
    }


def hf_tensors(g: GgufFile, cfg: dict, dtype: str) -> dict[str, np.ndarray]:
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    pairs = [("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight")]
    if not cfg["tie_word_embeddings"]:
        pairs.append(("output.weight", "lm_head.weight"))
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"blk.{i}.", f"model.layers.{i}."
        pairs += [(p + "attn_norm.weight", q + "input_layernorm.weight"),
                  (p + "attn_q.weight", q + "self_attn.q_proj.weight"),
                  (p + "attn_k.weight", q + "self_attn.k_proj.weight"),
                  (p + "attn_v.weight", q + "self_attn.v_proj.weight"),
                  (p + "attn_output.weight", q + "self_attn.o_proj.weight"),
                  (p + "ffn_norm.weight", q + "post_attention_layernorm.weight"),
                  (p + "ffn_gate.weight", q + "mlp.gate_proj.weight"),
                  (p + "ffn_up.weight", q + "mlp.up_proj.weight"),
                  (p + "ffn_down.weight", q + "mlp.down_proj.weight")]
    out = {}
    for src, dst in pairs:
        w = g.tensor(src)
        if src.endswith("attn_q.weight"):
            w = unpermute(w, heads)
        elif src.endswith("attn_k.weight"):
            w = unpermute(w, kv_heads)
        out[dst] = w.astype(dtype)
    return out


def hf_tokenizer(g: GgufFile) -> Tokenizer:
    model = g.need("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedModelError(f"GGUF tokenizer model {model!r} is not supported (supported: gpt2 byte-level BPE)")
    pre = g.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise UnsupportedModelError(f"GGUF pre-tokenizer {pre!r} is not supported "
                                    f"(supported: {', '.join(_PRE_TOKENIZERS)})")
    tokens = list(g.need("tokenizer.ggml.tokens"))
    types = list(g.need("tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in g.need("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if _PRE_TOKENIZERS[pre] else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _CONTROL])
    return tok


def tokenizer_config(g: GgufFile) -> dict:
    tokens = g.need("tokenizer.ggml.tokens")
    name = lambda key: tokens[g.get(key)] if g.get(key) is not None else None
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name("tokenizer.ggml.bos_token_id"),
           "eos_token": name("tokenizer.ggml.eos_token_id"), "pad_token": name("tokenizer.ggml.padding_token_id"),
           "unk_token": name("tokenizer.ggml.unknown_token_id"),
           "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False)),
           "model_max_length": int(g.get("llama.context_length", 2048))}
    template = g.get("tokenizer.chat_template")
    if template is not None:
        out["chat_template"] = template
    return out


def generation_config(g: GgufFile) -> dict:
    """Every token that ends generation: eos, plus llama.cpp's end-of-turn and end-of-generation
    tokens where the file names them (chat models stop a turn on those)."""
    ends = [g.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                               "tokenizer.ggml.eom_token_id")]
    return {"eos_token_id": list(dict.fromkeys(int(t) for t in ends if t is not None)),
            "bos_token_id": g.get("tokenizer.ggml.bos_token_id")}


def convert(gguf: Path, out: Path, dtype: str = "float32") -> dict:
    """Write the HF-style checkpoint for `gguf` into `out`; returns its config."""
    g = GgufFile(gguf)
    cfg = hf_config(g)
    types = {t.tensor_type.name for t in g.tensors.values()}
    progress(f"convert-gguf: {gguf.name}: llama {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
             f"tensor types {', '.join(sorted(types))} → {dtype}")
    tokenizer = hf_tokenizer(g)
    tensors = hf_tensors(g, cfg, dtype)
    cfg["torch_dtype"] = dtype
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(g), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation_config(g), indent=2) + "\n")
    save_file(tensors, str(out / "model.safetensors"))
    progress(f"convert-gguf: wrote {out} ({sum(t.nbytes for t in tensors.values()) / 1e6:.0f} MB of weights)")
    return cfg


def main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="convert-gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True, type=Path, help="the .gguf file")
    parser.add_argument("--out", required=True, type=Path, help="output checkpoint folder")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="dtype of model.safetensors (the blocks are float32 either way)")
    args = parser.parse_args(argv)
    convert(args.gguf, args.out, args.dtype)
    return 0


if __name__ == "__main__":
    run(main)
