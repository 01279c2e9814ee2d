"""Runs an imported model (manifest + blocks) with onnxruntime in Python.

Used by the ORT baseline and the self-check: blocks are chained in order exactly as the
Rust pipeline does across nodes (hidden_out → hidden_in), each block keeping the KV cache
of its own layers (present_* fed back as past_* on the next call)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import load_manifest


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


class ImportedModel:
    def __init__(self, folder: Path, threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.config = self.manifest["config"]
        options = session_options(threads)
        self.sessions = [ort.InferenceSession(str(self.folder / b["graph"]), options, providers=["CPUExecutionProvider"])
                         for b in self.manifest["blocks"]]
        self.reset()

    def reset(self) -> None:
        """Forget the KV cache (start a new sequence)."""
        shape = (1, self.config["num_kv_heads"], 0, self.config["head_dim"])
        self.cache = {layer: (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
                      for layer in range(self.config["num_layers"])}

    def step(self, ids: list[int]) -> np.ndarray:
        """Decoder: append `ids` to the sequence; returns logits [S, V] for them."""
        x = np.array([ids], dtype=np.int64)
        for block, session in zip(self.manifest["blocks"], self.sessions):
            layers = range(block["first_layer"], block["last_layer"] + 1)
            feeds = {block["inputs"][0]["name"]: x}
            inputs = {i["name"] for i in block["inputs"]}
            if "past_padding" in inputs:  # one unpadded row
                feeds["past_padding"] = np.zeros(1, dtype=np.int64)
            elif "past_lengths" in inputs:  # batched graphs of 2026-12-01
                feeds["past_lengths"] = np.array([self.cache[block["first_layer"]][0].shape[2]], dtype=np.int64)
            for layer in layers:
                feeds[f"past_key.{layer}"], feeds[f"past_value.{layer}"] = self.cache[layer]
            names = [o["name"] for o in block["outputs"]]
            result = dict(zip(names, session.run(names, feeds)))
            for layer in layers:
                self.cache[layer] = (result[f"present_key.{layer}"], result[f"present_value.{layer}"])
            x = result[names[0]]
        return x[0]

    def encode(self, ids: list[int], mask: list[int], types: list[int]) -> np.ndarray:
        """Encoder: token embeddings [S, H] of one (possibly padded) sequence."""
        row = lambda v: np.array([v], dtype=np.int64)
        x = None
        for block, session in zip(self.manifest["blocks"], self.sessions):
            if block["index"] == 0:
                feeds = {"input_ids": row(ids), "attention_mask": row(mask), "token_type_ids": row(types)}
            else:
                feeds = {"hidden_in": x, "attention_mask": row(mask)}
            (x,) = session.run([block["outputs"][0]["name"]], feeds)
        return x[0]
