"""ort-baseline: one-process onnxruntime (Python) on a 1-block imported decoder, greedy with KV cache.

    ort-baseline --model DIR --prompt-len N --decode N [--warmup N] [--threads N] [--prompt-ids 1,2,...]

Prints one JSON object on stdout: prefill_tokens_per_s, decode_tokens_per_s, load_s,
token_ids (the generated ids) and prompt_ids. The default prompt is
ids[i] = (7 + 31·i) mod vocab_size, i = 0..N-1, so the Rust benchmark can feed the same
prompt and compare token ids. --warmup runs the whole prefill+decode that many times first."""

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .cli import ArgumentParser, run
from .errors import ImportedModelError, UsageError
from .runtime import ImportedModel


def default_prompt(length: int, vocab: int) -> list[int]:
    return [(7 + 31 * i) % vocab for i in range(length)]


def generate(model: ImportedModel, prompt: list[int], decode: int) -> tuple[float, float, list[int]]:
    """Greedy: (prefill seconds, decode seconds, generated ids)."""
    model.reset()
    started = time.perf_counter()
    token = int(np.argmax(model.step(prompt)[-1]))
    prefill_s = time.perf_counter() - started
    tokens = [token]
    started = time.perf_counter()
    for _ in range(decode):
        token = int(np.argmax(model.step([token])[-1]))
        tokens.append(token)
    return prefill_s, time.perf_counter() - started, tokens


def main(argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="ort-baseline", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="imported model folder (1 block)")
    p.add_argument("--prompt-len", type=int, required=True)
    p.add_argument("--decode", type=int, required=True, help="decode steps after the prefill")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    p.add_argument("--prompt-ids", help="comma-separated prompt ids (overrides --prompt-len's default prompt)")
    a = p.parse_args(argv)
    if a.prompt_len < 1 or a.decode < 1 or a.warmup < 0:
        raise UsageError("--prompt-len and --decode must be ≥ 1, --warmup ≥ 0")
    started = time.perf_counter()
    model = ImportedModel(a.model, a.threads)
    load_s = time.perf_counter() - started
    if len(model.manifest["blocks"]) != 1 or model.manifest["architecture"] not in ("llama", "gpt2"):
        raise ImportedModelError(f"{a.model}: the baseline needs a 1-block decoder import (import-model --blocks 1)")
    prompt = ([int(x) for x in a.prompt_ids.split(",")] if a.prompt_ids
              else default_prompt(a.prompt_len, model.config["vocab_size"]))
    if len(prompt) + a.decode > model.config["max_positions"] and model.manifest["architecture"] == "gpt2":
        raise UsageError(f"prompt + decode exceeds gpt2 max_positions {model.config['max_positions']}")
    for _ in range(a.warmup):
        generate(model, prompt, a.decode)
    prefill_s, decode_s, tokens = generate(model, prompt, a.decode)
    print(json.dumps({"prefill_tokens_per_s": len(prompt) / prefill_s, "decode_tokens_per_s": a.decode / decode_s,
                      "load_s": load_s, "token_ids": tokens, "prompt_ids": prompt}))
    return 0


if __name__ == "__main__":
    run(main)
