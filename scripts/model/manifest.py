"""Manifest hashing and model-id derivation (protocol-spec/model-format.md).

The model id is what nodes register on-chain and validators check, so it is derived
only from file contents: sha3-256 over the sorted lines "<file name> <sha3-256 hex>\\n"."""

import hashlib
import json
from pathlib import Path

from .errors import ImportedModelError

FORMAT = "infergrid-model/1"


def file_sha3(path: Path) -> str:
    digest = hashlib.sha3_256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_id(files: dict[str, str]) -> str:
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files))
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
