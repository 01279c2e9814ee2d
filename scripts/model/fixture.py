"""make-fixture: a random-weight Hugging Face checkpoint (llama or gpt2) for tests and benchmarks.

Weights are seeded and deterministic. The scales are chosen so the model is not
degenerate: unit-variance embeddings, projections scaled by 1/sqrt(fan_in) so attention
scores are O(1), and logits with a spread of a few units, so greedy decoding wanders
over many tokens instead of repeating one."""

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import safetensors
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .cli import ArgumentParser, progress, run
from .errors import UsageError

# Built-in training text for the fixture tokenizer (no downloads at build or run time).
CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Once upon a time there was a small village by the sea, where the fishermen went out every morning
and came back every evening with baskets full of silver fish. The children played on the beach,
the old women mended the nets, and the dogs slept in the warm sand while the gulls cried overhead.
It was a quiet place, and nothing much ever happened there, until one day a stranger arrived.
He wore a long grey coat and carried a wooden box under his arm. Nobody knew where he came from.
"What is in the box?" asked the baker's daughter. The stranger smiled and said that it held the
weather: sunshine for the summer, rain for the fields, snow for the winter and wind for the sails.
The villagers laughed, but that evening the sky turned purple and the sea became as still as glass.
Networks of computers can share the work of large language models. Each node holds a block of
layers, receives activations from the previous node, computes its part and sends the result on.
Payments flow per token, validators check the answers, and anyone can audit the history on chain.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159. Punctuation: , . ; : ! ? ( ) [ ] { } - _ + = / \\ ' "
Questions and answers, stories and songs, recipes and reports: text comes in many shapes and sizes.
The weather is lovely today. It's so sunny outside! He drove to the stadium to watch the game.
"""

LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama tokenizers
GPT2_SPECIALS = ["<|endoftext|>"]          # id 0 (bos = eos)

DTYPES = ("float32", "float16", "bfloat16")  # also the serialize() dtype names


def to_bytes(array: np.ndarray, dtype: str) -> bytes:
    """Encode a float32 array as little-endian float32/float16/bfloat16 bytes.

    bfloat16 is rounded to nearest-even from the float32 bits (numpy has no bf16 type)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "float32":
        return array.astype("<f4").tobytes()
    if dtype == "float16":
        return array.astype("<f2").tobytes()
    bits = array.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def build_tokenizer(vocab: int, specials: list[str], bos: str | None) -> Tokenizer:
    """Byte-level BPE trained on CORPUS to exactly `vocab` ids (special filler tokens pad
    the vocabulary when the corpus runs out of merges)."""
    minimum = 256 + len(specials)
    if vocab < minimum:
        raise UsageError(f"--vocab must be at least {minimum} (256 byte tokens + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    missing = vocab - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|extra_{i}|>" for i in range(missing)])
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    assert tok.get_vocab_size() == vocab, (tok.get_vocab_size(), vocab)
    return tok


class _Init:
    """Seeded weight initializer."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

    def norm_weight(self, size: int) -> np.ndarray:
        return 1.0 + self.normal((size,), 0.1)

    def tied_final_norm(self, size: int) -> np.ndarray:
        """A tied head scores tokens against a residual stream that still carries the input
        token's own embedding; with a final norm weight ≈ 1 greedy decoding would repeat
        one token forever. Random-sign weights make that self-score average zero."""
        return self.normal((size,), 1.0)


def llama_tensors(a, init: _Init) -> dict[str, np.ndarray]:
    H, D, I = a.hidden, a.head_dim, a.intermediate
    t = {"model.embed_tokens.weight": init.normal((a.vocab, H), 1.0)}
    for i in range(a.layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = init.norm_weight(H)
        t[p + "self_attn.q_proj.weight"] = init.normal((a.heads * D, H), H ** -0.5)
        t[p + "self_attn.k_proj.weight"] = init.normal((a.kv_heads * D, H), H ** -0.5)
        t[p + "self_attn.v_proj.weight"] = init.normal((a.kv_heads * D, H), H ** -0.5)
        t[p + "self_attn.o_proj.weight"] = init.normal((H, a.heads * D), 0.5 * (a.heads * D) ** -0.5)
        t[p + "post_attention_layernorm.weight"] = init.norm_weight(H)
        t[p + "mlp.gate_proj.weight"] = init.normal((I, H), H ** -0.5)
        t[p + "mlp.up_proj.weight"] = init.normal((I, H), H ** -0.5)
        t[p + "mlp.down_proj.weight"] = init.normal((H, I), 0.5 * I ** -0.5)
    t["model.norm.weight"] = init.tied_final_norm(H) if a.tied else init.norm_weight(H)
    if not a.tied:
        t["lm_head.weight"] = init.normal((a.vocab, H), 3.0 * H ** -0.5)
    return t


def gpt2_tensors(a, init: _Init) -> dict[str, np.ndarray]:
    H, I = a.hidden, a.intermediate
    t = {"transformer.wte.weight": init.normal((a.vocab, H), 1.0),
         "transformer.wpe.weight": init.normal((a.max_pos, H), 0.5)}
    for i in range(a.layers):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"] = init.norm_weight(H)
            t[p + ln + ".bias"] = init.normal((H,), 0.02)
        for name, (fan_in, fan_out, scale) in {"attn.c_attn": (H, 3 * H, 1.0), "attn.c_proj": (H, H, 0.5),
                                               "mlp.c_fc": (H, I, 1.0), "mlp.c_proj": (I, H, 0.5)}.items():
            t[p + name + ".weight"] = init.normal((fan_in, fan_out), scale * fan_in ** -0.5)  # Conv1D: [in, out]
            t[p + name + ".bias"] = init.normal((fan_out,), 0.02)
    t["transformer.ln_f.weight"] = init.tied_final_norm(H)
    t["transformer.ln_f.bias"] = init.normal((H,), 0.02)
    return t


def llama_config(a) -> dict:
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": a.hidden, "initializer_range": 0.02,
        "intermediate_size": a.intermediate, "max_position_embeddings": a.max_pos, "mlp_bias": False,
        "num_attention_heads": a.heads, "num_hidden_layers": a.layers, "num_key_value_heads": a.kv_heads,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": a.rope_theta,
        "tie_word_embeddings": a.tied, "torch_dtype": a.dtype, "transformers_version": "4.46.0",
        "use_cache": True, "vocab_size": a.vocab,
    }
    if a.head_dim_given:
        config["head_dim"] = a.head_dim
    return dict(sorted(config.items()))


def gpt2_config(a) -> dict:
    return {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": 0, "embd_pdrop": 0.1, "eos_token_id": 0, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": a.max_pos, "n_embd": a.hidden,
        "n_head": a.heads, "n_inner": a.intermediate if a.intermediate != 4 * a.hidden else None,
        "n_layer": a.layers, "n_positions": a.max_pos, "resid_pdrop": 0.1, "scale_attn_weights": True,
        "summary_first_dropout": 0.1, "tie_word_embeddings": True, "torch_dtype": a.dtype,
        "transformers_version": "4.46.0", "use_cache": True, "vocab_size": a.vocab,
    }


def write_safetensors(tensors: dict[str, np.ndarray], out: Path, dtype: str, shards: int) -> None:
    """model.safetensors, or model-0000k-of-0000n.safetensors + index when shards > 1."""
    names = list(tensors)
    if not 1 <= shards <= len(names):
        raise UsageError(f"--shards must be between 1 and the tensor count {len(names)}")
    encoded = {n: {"dtype": dtype, "shape": list(tensors[n].shape), "data": to_bytes(tensors[n], dtype)}
               for n in names}
    metadata = {"format": "pt"}
    if shards == 1:
        safetensors.serialize_file(encoded, str(out / "model.safetensors"), metadata=metadata)
        return
    total = sum(len(e["data"]) for e in encoded.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    running = 0
    for i, name in enumerate(names):  # contiguous groups of about total/shards bytes, none empty
        shard = min(running * shards // total, shards - 1, i)
        shard = max(shard, shards - (len(names) - i))
        groups[shard].append(name)
        running += len(encoded[name]["data"])
    weight_map = {}
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        safetensors.serialize_file({n: encoded[n] for n in group}, str(out / file), metadata=metadata)
        weight_map.update({n: file for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


DEFAULTS = {
    "llama": dict(layers=5, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512, max_pos=256, tied=False),
    "gpt2": dict(layers=3, hidden=64, heads=4, kv_heads=None, intermediate=None, vocab=512, max_pos=256, tied=True),
}


def parse(argv: Sequence[str]):
    p = ArgumentParser(prog="make-fixture", description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    for flag in ("layers", "hidden", "heads", "kv-heads", "head-dim", "intermediate", "vocab", "max-pos", "shards"):
        p.add_argument(f"--{flag}", type=int)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    tie = p.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=None)
    tie.add_argument("--untied", dest="tied", action="store_false")
    a = p.parse_args(argv)
    for key, value in DEFAULTS[a.arch].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.shards = a.shards or 1
    if a.arch == "gpt2":
        if a.kv_heads is not None or a.head_dim is not None or a.tied is False:
            raise UsageError("gpt2 fixtures take no --kv-heads/--head-dim/--untied (GPT-2 is MHA and always tied)")
        a.kv_heads, a.intermediate = a.heads, a.intermediate or 4 * a.hidden
    if a.hidden % a.heads or a.heads % a.kv_heads:
        raise UsageError(f"--hidden {a.hidden} must be divisible by --heads {a.heads}, "
                         f"and --heads by --kv-heads {a.kv_heads}")
    a.head_dim_given = a.head_dim is not None
    a.head_dim = a.head_dim or a.hidden // a.heads
    if a.head_dim % 2:
        raise UsageError(f"head dim {a.head_dim} must be even (rotary embeddings)")
    if min(a.layers, a.hidden, a.heads, a.vocab, a.max_pos, a.intermediate) < 1:
        raise UsageError("sizes must be positive")
    return a


def main(argv: Sequence[str]) -> int:
    a = parse(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    init = _Init(a.seed)
    if a.arch == "llama":
        tensors, config = llama_tensors(a, init), llama_config(a)
        tokenizer = build_tokenizer(a.vocab, LLAMA_SPECIALS, bos="<s>")
    else:
        tensors, config = gpt2_tensors(a, init), gpt2_config(a)
        tokenizer = build_tokenizer(a.vocab, GPT2_SPECIALS, bos=None)
    for stale in list(a.out.glob("*.safetensors")) + [a.out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    (a.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(a.out / "tokenizer.json"))
    write_safetensors(tensors, a.out, a.dtype, a.shards)
    params = sum(t.size for t in tensors.values())
    progress(f"make-fixture: {a.arch} {a.layers} layers, hidden {a.hidden}, {params / 1e6:.2f} M params "
             f"({params * 4 / 1e6:.1f} MB float32), {a.dtype}, {a.shards} shard(s) → {a.out}")
    return 0


if __name__ == "__main__":
    run(main)
