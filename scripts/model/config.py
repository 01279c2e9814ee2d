"""Normalizes a Hugging Face config.json into the fields the importer and manifest use.

One dataclass for all families so the graph builders and the manifest read the same
names (hidden_size, num_kv_heads, head_dim, …) whatever the HF spelling (n_embd, …)."""

from dataclasses import dataclass, field

from .checkpoint import Checkpoint
from .errors import CheckpointError, UnsupportedModelError

# HF `architectures` entry → our family; model_type is the fallback when it is absent.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "GPT2LMHeadModel": "gpt2",
    "BertModel": "bert",
}
MODEL_TYPES = {"llama": "llama", "gpt2": "gpt2", "bert": "bert"}

GELU_ERF = "gelu"          # 0.5·x·(1 + erf(x/√2))
GELU_TANH = "gelu_tanh"    # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
_GELU_NAMES = {"gelu": GELU_ERF, "gelu_new": GELU_TANH, "gelu_pytorch_tanh": GELU_TANH, "gelu_fast": GELU_TANH}


@dataclass
class ModelConfig:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    tie_word_embeddings: bool
    source_dtype: str
    activation: str
    rope_theta: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None

    def manifest_config(self) -> dict:
        """The manifest's `config` object (see protocol-spec/model-format.md)."""
        out = {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "intermediate_size": self.intermediate_size,
            "max_positions": self.max_positions,
            "norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "source_dtype": self.source_dtype,
        }
        if self.rope_theta is not None:
            out["rope_theta"] = self.rope_theta
        return out

    @property
    def is_decoder(self) -> bool:
        return self.architecture in ("llama", "gpt2")


def family_of(hf: dict) -> str:
    """The family of a config.json, or UnsupportedModelError listing what is supported."""
    for arch in hf.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if not hf.get("architectures") and hf.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[hf["model_type"]]
    raise UnsupportedModelError(
        f"unsupported model (architectures={hf.get('architectures')}, model_type={hf.get('model_type')!r}); "
        f"supported architectures: {', '.join(ARCHITECTURES)} (model_type {', '.join(MODEL_TYPES)})")


def _need(hf: dict, *keys: str):
    for key in keys:
        if hf.get(key) is not None:
            return hf[key]
    raise CheckpointError(f"config.json lacks {' / '.join(keys)}")


def _eos_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _gelu(name: str, key: str) -> str:
    if name not in _GELU_NAMES:
        raise UnsupportedModelError(f"{key}={name!r} is not supported (supported: {', '.join(_GELU_NAMES)})")
    return _GELU_NAMES[name]


def load_config(ckpt: Checkpoint) -> ModelConfig:
    """Read and validate the checkpoint's config.json for its family."""
    hf = ckpt.config
    family = family_of(hf)
    generation = ckpt.json_file("generation_config.json") or {}
    # Chat models often end a turn with a token that config.json's eos does not name but
    # generation_config.json's list does (e.g. <|im_end|> or <|eot_id|>): generation stops at any.
    eos = list(dict.fromkeys(_eos_list(hf.get("eos_token_id")) + _eos_list(generation.get("eos_token_id"))))
    bos = hf.get("bos_token_id", generation.get("bos_token_id"))
    pad = hf.get("pad_token_id", generation.get("pad_token_id"))
    if family == "llama":
        hidden = _need(hf, "hidden_size")
        heads = _need(hf, "num_attention_heads")
        if hf.get("rope_scaling"):
            raise UnsupportedModelError(f"llama rope_scaling {hf['rope_scaling']} is not supported")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise UnsupportedModelError("llama attention_bias / mlp_bias are not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"llama hidden_act={hf['hidden_act']!r} is not supported (only silu)")
        head_dim = hf.get("head_dim") or hidden // heads
        if head_dim % 2:
            raise UnsupportedModelError(f"llama head_dim {head_dim} must be even for rotary embeddings")
        return ModelConfig(
            architecture="llama", hidden_size=hidden, num_layers=_need(hf, "num_hidden_layers"),
            num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
            vocab_size=_need(hf, "vocab_size"), intermediate_size=_need(hf, "intermediate_size"),
            max_positions=hf.get("max_position_embeddings", 2048), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), source_dtype=ckpt.source_dtype,
            activation="silu", rope_theta=float(hf.get("rope_theta", 10000.0)),
            bos_token_id=bos, eos_token_ids=eos, pad_token_id=pad)
    if family == "gpt2":
        hidden = _need(hf, "n_embd", "hidden_size")
        heads = _need(hf, "n_head", "num_attention_heads")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise UnsupportedModelError("gpt2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
        if hf.get("scale_attn_weights") is False:
            raise UnsupportedModelError("gpt2 scale_attn_weights=false is not supported")
        return ModelConfig(
            architecture="gpt2", hidden_size=hidden, num_layers=_need(hf, "n_layer", "num_hidden_layers"),
            num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, vocab_size=_need(hf, "vocab_size"),
            intermediate_size=hf.get("n_inner") or 4 * hidden, max_positions=_need(hf, "n_positions", "n_ctx"),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), tie_word_embeddings=True,
            source_dtype=ckpt.source_dtype, activation=_gelu(hf.get("activation_function", "gelu_new"), "activation_function"),
            bos_token_id=bos, eos_token_ids=eos, pad_token_id=pad)
    hidden = _need(hf, "hidden_size")
    heads = _need(hf, "num_attention_heads")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(f"bert position_embedding_type={hf['position_embedding_type']!r} is not supported")
    if hf.get("is_decoder"):
        raise UnsupportedModelError("bert is_decoder=true is not supported (encoders only)")
    return ModelConfig(
        architecture="bert", hidden_size=hidden, num_layers=_need(hf, "num_hidden_layers"),
        num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, vocab_size=_need(hf, "vocab_size"),
        intermediate_size=_need(hf, "intermediate_size"), max_positions=hf.get("max_position_embeddings", 512),
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)), tie_word_embeddings=False, source_dtype=ckpt.source_dtype,
        activation=_gelu(hf.get("hidden_act", "gelu"), "hidden_act"),
        bos_token_id=bos, eos_token_ids=eos, pad_token_id=pad)
