"""Manifest hashing and model-id derivation (protocol-spec/model-format.md).

The model id is what nodes register on-chain and validators check, so it is derived
only from file contents: sha3-256 over the sorted lines "<file name> <sha3-256 hex>\\n",
then, when the manifest lists pieces (what nodes fetch from each other), "pieces <piece
bytes>\\n" and per file, sorted, "<file name> <bytes> <piece hash>…\\n"."""

import hashlib
import json
from pathlib import Path

from .errors import ImportedModelError

FORMAT = "infergrid-model/1"
# Bytes per piece unless --piece-bytes says otherwise; any power of two in [MIN, MAX].
PIECE_BYTES = 1 << 20
MIN_PIECE_BYTES = 1 << 14
MAX_PIECE_BYTES = 1 << 22


def file_sha3(path: Path) -> str:
    digest = hashlib.sha3_256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_pieces(path: Path, piece_bytes: int) -> dict:
    """The file's size and the sha3-256 of each of its piece_bytes-long pieces (the last may
    be shorter; an empty file has none)."""
    hashes = []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(piece_bytes), b""):
            hashes.append(hashlib.sha3_256(chunk).hexdigest())
    return {"bytes": path.stat().st_size, "hashes": hashes}


def model_id(files: dict[str, str], pieces: dict | None = None) -> str:
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    if pieces is not None:
        lines += f"pieces {pieces['piece_bytes']}\n"
        for name in sorted(pieces["files"]):
            entry = pieces["files"][name]
            lines += " ".join([name, str(entry["bytes"]), *entry["hashes"]]) + "\n"
    return "0x" + hashlib.sha3_256(lines.encode()).hexdigest()


def load_manifest(folder: Path) -> dict:
    """Read an imported model's manifest, checking its format tag."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise ImportedModelError(f"{folder}: no manifest.json (not an imported model, or the import did not finish)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ImportedModelError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest
