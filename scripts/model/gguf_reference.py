"""gguf-reference: an independent float64 numpy forward pass of a llama GGUF file.

    gguf-reference --gguf FILE --prompt-ids 1,2,3 [--prompt-ids 4,5 …] --steps N --out FILE.json
    gguf-reference --gguf FILE --texts TEXTS.json --out FILE.json

The oracle for the GGUF import: it reads the GGUF tensors itself (gguf's reader and
dequantizer, nothing of gguf_convert.py) and keeps q/k in llama.cpp's permuted row order,
applying rotary the way llama.cpp does on that layout (rotating adjacent pairs x[2i],
x[2i+1]), so a wrong un-permute in the converter shows up as a mismatch here instead of
being reproduced. Recomputes the whole sequence at every greedy step (no KV cache).

Output JSON: `runs`, one per --prompt-ids, each with `prompt_ids`, `token_ids` [N] and
`max_logits` [N] (the winning logit at each step, a cheap numeric cross-check).

With --texts (a JSON list of strings) it tokenizes instead, with gguf_bpe.py's independent
byte-level BPE over the file's vocabulary: `tokenized`, one `{"text", "ids"}` per string."""

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from .cli import ArgumentParser, progress, run
from .errors import CheckpointError, UnsupportedModelError
from .gguf_bpe import GgufBpe


class GgufLlama:
    def __init__(self, path: Path):
        try:
            reader = GGUFReader(path)
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from exc
        meta = lambda key: reader.fields[key].contents()
        if meta("general.architecture") != "llama":
            raise UnsupportedModelError(f"gguf-reference supports llama only, not {meta('general.architecture')!r}")
        self.h, self.nh = meta("llama.embedding_length"), meta("llama.attention.head_count")
        self.kv, self.layers = meta("llama.attention.head_count_kv"), meta("llama.block_count")
        self.eps, self.theta = meta("llama.attention.layer_norm_rms_epsilon"), meta("llama.rope.freq_base")
        self.d = self.h // self.nh
        # ggml `ne` lists the fastest dim first: numpy shape is the reverse.
        self.t = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64).reshape(tuple(reversed(t.shape.tolist())))
                  for t in reader.tensors}
        self.head = self.t.get("output.weight", self.t["token_embd.weight"])

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope_pairs(self, z: np.ndarray) -> np.ndarray:
        """llama.cpp's rotary on its permuted rows: pair i = (z[2i], z[2i+1]), angle pos·θ^(-2i/D)."""
        T, d = z.shape[1], self.d
        angles = np.arange(T)[:, None] * self.theta ** (-np.arange(0, d, 2) / d)[None, :]
        cos, sin = np.cos(angles), np.sin(angles)
        even, odd = z[..., 0::2], z[..., 1::2]
        out = np.empty_like(z)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def last_logits(self, ids: list[int]) -> np.ndarray:
        t, T, d = self.t, len(ids), self.d
        x = t["token_embd.weight"][ids]
        causal = np.tril(np.ones((T, T), dtype=bool))
        heads = lambda z, n: z.reshape(T, n, d).transpose(1, 0, 2)
        for i in range(self.layers):
            p = f"blk.{i}."
            n = self.rms(x, t[p + "attn_norm.weight"])
            q = self.rope_pairs(heads(n @ t[p + "attn_q.weight"].T, self.nh))
            k = np.repeat(self.rope_pairs(heads(n @ t[p + "attn_k.weight"].T, self.kv)), self.nh // self.kv, axis=0)
            v = np.repeat(heads(n @ t[p + "attn_v.weight"].T, self.kv), self.nh // self.kv, axis=0)
            scores = np.where(causal, q @ k.transpose(0, 2, 1) / math.sqrt(d), -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            x = x + (probs @ v).transpose(1, 0, 2).reshape(T, -1) @ t[p + "attn_output.weight"].T
            n = self.rms(x, t[p + "ffn_norm.weight"])
            gate = n @ t[p + "ffn_gate.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (n @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
        return self.rms(x[-1], t["output_norm.weight"]) @ self.head.T


def greedy(model: GgufLlama, prompt: list[int], steps: int) -> dict:
    ids, best = list(prompt), []
    for _ in range(steps):
        logits = model.last_logits(ids)
        ids.append(int(np.argmax(logits)))
        best.append(float(logits.max()))
    return {"prompt_ids": prompt, "token_ids": ids[len(prompt):], "max_logits": best}


def tokenize(path: Path, texts: list[str]) -> list[dict]:
    try:
        fields = GGUFReader(path).fields
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from exc
    meta = lambda key: fields[key].contents()
    if meta("tokenizer.ggml.model") != "gpt2":
        raise UnsupportedModelError("gguf-reference tokenizes byte-level BPE (tokenizer.ggml.model gpt2) only")
    bpe = GgufBpe(meta("tokenizer.ggml.tokens"), meta("tokenizer.ggml.token_type"), meta("tokenizer.ggml.merges"),
                  meta("tokenizer.ggml.pre"))
    return [{"text": text, "ids": bpe.encode(text)} for text in texts]


def main(argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="gguf-reference", description=__doc__.splitlines()[0])
    p.add_argument("--gguf", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="results as JSON")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompt-ids", action="append", help="comma-separated prompt token ids")
    mode.add_argument("--texts", type=Path, help="a JSON list of strings to tokenize")
    p.add_argument("--steps", type=int, default=16, help="greedy steps per prompt (default 16)")
    a = p.parse_args(argv)
    if a.texts is not None:
        a.out.write_text(json.dumps({"tokenized": tokenize(a.gguf, json.loads(a.texts.read_text()))}))
        return 0
    model = GgufLlama(a.gguf)
    runs = []
    for prompt in a.prompt_ids:
        runs.append(greedy(model, [int(x) for x in prompt.split(",")], a.steps))
        progress(f"gguf-reference: {prompt} → {runs[-1]['token_ids']}")
    a.out.write_text(json.dumps({"runs": runs}))
    return 0


if __name__ == "__main__":
    run(main)
