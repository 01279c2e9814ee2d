"""Reads a Hugging Face checkpoint folder: config.json plus single or sharded safetensors.

The safetensors files are parsed directly (8-byte header length, JSON header, raw data)
and memory-mapped, because numpy has no bfloat16 and the `safetensors` numpy loader
cannot return BF16 tensors; every tensor comes back as float32 for the ONNX graphs."""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError

# safetensors dtype tag → (numpy storage dtype, name used in manifests)
_DTYPES = {
    "F32": (np.dtype("<f4"), "float32"),
    "F16": (np.dtype("<f2"), "float16"),
    "BF16": (np.dtype("<u2"), "bfloat16"),
    "I64": (np.dtype("<i8"), "int64"),
}


@dataclass(frozen=True)
class _TensorRef:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    length: int


def _read_header(path: Path) -> dict[str, _TensorRef]:
    """Map tensor name → location for one safetensors file."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    refs = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        refs[name] = _TensorRef(path, info["dtype"], tuple(info["shape"]), 8 + header_len + begin, end - begin)
    return refs


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: from the shard index if there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{index} names missing shard files: {', '.join(missing)}")
        return [folder / f for f in files]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise CheckpointError(f"{folder}: no model.safetensors, shard index or *.safetensors files "
                          "(only safetensors checkpoints are supported)")


class Checkpoint:
    """A Hugging Face checkpoint folder: its config.json and its tensors, read lazily."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{self.folder}: no config.json (is this a Hugging Face checkpoint folder?)")
        self.config: dict = json.loads(config_path.read_text())
        self._refs: dict[str, _TensorRef] = {}
        for path in _weight_files(self.folder):
            self._refs.update(_read_header(path))
        self._maps: dict[Path, np.memmap] = {}

    def json_file(self, relative: str) -> dict | list | None:
        """A JSON side file of the checkpoint (e.g. generation_config.json), or None."""
        path = self.folder / relative
        return json.loads(path.read_text()) if path.is_file() else None

    def has(self, name: str) -> bool:
        return name in self._refs

    @property
    def source_dtype(self) -> str:
        """The floating-point dtype most of the weight bytes are stored in."""
        totals: dict[str, int] = {}
        for ref in self._refs.values():
            if ref.dtype in ("F32", "F16", "BF16"):
                label = _DTYPES[ref.dtype][1]
                totals[label] = totals.get(label, 0) + ref.length
        return max(totals, key=totals.get) if totals else "float32"

    def get(self, name: str) -> np.ndarray:
        """The tensor as a float32 array (bfloat16 widened bit-exactly, float16 cast)."""
        ref = self._ref(name)
        if ref.dtype not in _DTYPES:
            raise CheckpointError(f"tensor {name}: unsupported safetensors dtype {ref.dtype}")
        storage, _ = _DTYPES[ref.dtype]
        if ref.path not in self._maps:
            self._maps[ref.path] = np.memmap(ref.path, dtype=np.uint8, mode="r")
        raw = self._maps[ref.path][ref.start:ref.start + ref.length].view(storage).reshape(ref.shape)
        if ref.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)

    def _ref(self, name: str) -> _TensorRef:
        try:
            return self._refs[name]
        except KeyError:
            raise CheckpointError(f"{self.folder}: tensor {name!r} not found in the safetensors files") from None
