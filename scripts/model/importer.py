"""import-model: Hugging Face checkpoint → InferGrid layer blocks (ONNX + aligned weights).

Usage: import-model (--hf DIR | --gguf FILE [--dtype float32|float16]) --out DIR
                    (--blocks N | --layers 0-3,4-7,...) [--name NAME] [--quantize int8|int4]

A GGUF file is first converted (gguf_convert.py) into a temporary Hugging Face-style
folder beside --out (same filesystem, so no /tmp size limit), imported, then removed.

The manifest is written last, through a rename, so an interrupted import never leaves
a valid-looking model behind."""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .blocks import Block, build_decoder_block, build_encoder_block, plan_even, plan_ranges, block_io
from .checkpoint import Checkpoint
from .cli import ArgumentParser, progress, run
from .config import ModelConfig, load_config
from .errors import CheckpointError, UnsupportedModelError, UsageError
from .families import FAMILIES
from .gguf_convert import convert
from .manifest import (FORMAT, MAX_MANIFEST_BYTES, MAX_PIECE_BYTES, MIN_PIECE_BYTES, PIECE_BYTES, file_pieces,
                       file_sha3, manifest_text)
from .onnxgraph import GraphBuilder

CHAT_TEMPLATE = "chat_template.jinja"


def pooling_of(ckpt: Checkpoint) -> dict:
    """Sentence-transformers pooling: 1_Pooling/config.json and a Normalize module in modules.json."""
    modules = ckpt.json_file("modules.json") or []
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    pool_dir = next((m.get("path") for m in modules if str(m.get("type", "")).endswith(".Pooling")), "1_Pooling")
    pool = ckpt.json_file(f"{pool_dir}/config.json")
    if pool is not None:
        modes = [k[len("pooling_mode_"):] for k, v in pool.items() if k.startswith("pooling_mode_") and v]
        if modes != ["mean_tokens"]:
            raise UnsupportedModelError(f"pooling modes {modes} are not supported (only mean_tokens)")
    return {"mode": "mean", "normalize": normalize}


def tokenizer_info(cfg: ModelConfig, chat_template: str | None) -> dict:
    return {"file": "tokenizer.json", "bos_token_id": cfg.bos_token_id, "eos_token_ids": cfg.eos_token_ids,
            "pad_token_id": cfg.pad_token_id, "chat_template": chat_template}


def chat_template_of(ckpt: Checkpoint) -> str | None:
    """The checkpoint's Jinja chat template: `chat_template.jinja` (newer Hugging Face
    checkpoints) or `tokenizer_config.json`'s `chat_template` (a string, or a list of named
    templates of which "default" is the one used); None when it has none."""
    jinja = ckpt.folder / CHAT_TEMPLATE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = (ckpt.json_file("tokenizer_config.json") or {}).get("chat_template")
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}.get("default")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{ckpt.folder}: tokenizer_config.json chat_template is neither a string "
                              "nor a list of named templates")
    return template


QUANTIZE_BITS = {"int8": 8, "int4": 4}


def build_block(ckpt: Checkpoint, cfg: ModelConfig, block: Block, out: Path, quantize_bits: int | None = None) -> dict:
    """Write block-K.onnx + block-K.weights and return the block's manifest entry."""
    graph, weights = f"block-{block.index}.onnx", f"block-{block.index}.weights"
    g = GraphBuilder(out / weights, quantize_bits)
    family = FAMILIES[cfg.architecture](ckpt, cfg)
    if cfg.is_decoder:
        build_decoder_block(g, cfg, block, family)
    else:
        build_encoder_block(g, cfg, block, family)
    g.save(out / graph, f"{cfg.architecture}-block-{block.index}")
    inputs, outputs = block_io(cfg, block)
    return {"index": block.index, "first_layer": block.first_layer, "last_layer": block.last_layer,
            "graph": graph, "weights": weights, "weight_bytes": g.weight_bytes, "inputs": inputs, "outputs": outputs,
            "tensors": g.external}


def _clear_previous(out: Path) -> None:
    """Remove an earlier import's manifest and blocks so nothing stale survives."""
    (out / "manifest.json").unlink(missing_ok=True)
    (out / CHAT_TEMPLATE).unlink(missing_ok=True)
    for path in list(out.glob("block-*.onnx")) + list(out.glob("block-*.weights")):
        path.unlink()


def import_model(hf: Path, out: Path, blocks: int | None, layers: str | None, name: str | None,
                 piece_bytes: int = PIECE_BYTES, quantize: str | None = None) -> dict:
    ckpt = Checkpoint(hf)
    cfg = load_config(ckpt)
    plan = plan_ranges(cfg.num_layers, layers) if layers else plan_even(cfg.num_layers, blocks)
    tokenizer = hf / "tokenizer.json"
    if not tokenizer.is_file():
        raise CheckpointError(f"{hf}: no tokenizer.json")
    pooling = None if cfg.is_decoder else pooling_of(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    template = chat_template_of(ckpt)
    if template is not None:
        (out / CHAT_TEMPLATE).write_text(template, encoding="utf-8")
    progress(f"import: {cfg.architecture} {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
             f"vocab {cfg.vocab_size}, {cfg.source_dtype} → {len(plan)} block(s)"
             + (f", layer matrices quantized to {quantize}" if quantize else ""))
    entries = []
    for block in plan:
        started = time.monotonic()
        entry = build_block(ckpt, cfg, block, out, QUANTIZE_BITS[quantize] if quantize else None)
        progress(f"import: block {block.index + 1}/{len(plan)} layers {block.first_layer}-{block.last_layer}: "
                 f"{len(entry['tensors'])} tensors, {entry['weight_bytes'] / 1e6:.1f} MB "
                 f"({time.monotonic() - started:.1f} s)")
        entries.append(entry)
    files = {p: file_sha3(out / p) for p in
             ["tokenizer.json"] + ([CHAT_TEMPLATE] if template is not None else []) + [e[k] for e in entries for k in ("graph", "weights")]}
    pieces = {"piece_bytes": piece_bytes, "files": {p: file_pieces(out / p, piece_bytes) for p in files}}
    manifest = {
        "format": FORMAT,
        "model_id": None,  # derived from the text written
        "name": name or hf.resolve().name,
        "architecture": cfg.architecture,
        "config": cfg.manifest_config(),
        "tokenizer": tokenizer_info(cfg, CHAT_TEMPLATE if template is not None else None),
        "pooling": pooling,
        "blocks": entries,
        "files": files,
        "pieces": pieces,
    }
    text = manifest_text(manifest)
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise UsageError(f"the manifest would be {len(text.encode())} bytes, over the {MAX_MANIFEST_BYTES} peers "
                         f"exchange: import with a larger --piece-bytes (now {piece_bytes})")
    manifest = json.loads(text)
    tmp = out / "manifest.json.tmp"
    # Bytes, not text mode: the id is the hash of exactly these bytes.
    tmp.write_bytes(text.encode())
    os.replace(tmp, out / "manifest.json")
    progress(f"import: wrote {out / 'manifest.json'} (model id {manifest['model_id']})")
    return manifest


def main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="import-model", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", type=Path, help="Hugging Face checkpoint folder")
    source.add_argument("--gguf", type=Path, help="llama.cpp GGUF file (llama architecture)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for manifest + blocks")
    split = parser.add_mutually_exclusive_group(required=True)
    split.add_argument("--blocks", type=int, help="split the layers evenly into N blocks")
    split.add_argument("--layers", help="explicit inclusive layer ranges, e.g. 0-3,4-7,8-11")
    parser.add_argument("--name", help="model name in the manifest (default: the checkpoint folder's "
                                        "name, or the GGUF file's name without .gguf)")
    parser.add_argument("--dtype", choices=("float32", "float16"),
                        help="--gguf only: dtype the GGUF weights are dequantized to (default float32)")
    parser.add_argument("--piece-bytes", type=int, default=PIECE_BYTES,
                        help="bytes per piece nodes fetch and verify one at a time: a power of two "
                             f"from {MIN_PIECE_BYTES} to {MAX_PIECE_BYTES} (default {PIECE_BYTES})")
    parser.add_argument("--quantize", choices=tuple(QUANTIZE_BITS),
                        help="store the layers' matrices as int8 or int4 blocks of 32 with a float scale each "
                             "(ONNX Runtime's MatMulNBits), e.g. for a draft model; embeddings, norms and the "
                             "head stay float32")
    args = parser.parse_args(argv)
    pb = args.piece_bytes
    if pb < MIN_PIECE_BYTES or pb > MAX_PIECE_BYTES or pb & (pb - 1):
        raise UsageError(f"--piece-bytes {pb}: not a power of two from {MIN_PIECE_BYTES} to {MAX_PIECE_BYTES}")
    if args.hf is not None:
        if args.dtype is not None:
            raise UsageError("--dtype applies to --gguf only (a checkpoint keeps its own dtype)")
        import_model(args.hf, args.out, args.blocks, args.layers, args.name, pb, args.quantize)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{args.out.name}-gguf-", dir=args.out.parent) as tmp:
        convert(args.gguf, Path(tmp), args.dtype or "float32")
        import_model(Path(tmp), args.out, args.blocks, args.layers, args.name or args.gguf.stem, pb, args.quantize)
    return 0


if __name__ == "__main__":
    run(main)
