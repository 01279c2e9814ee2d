"""Manifest hashing and model-id derivation (protocol-spec/model-format.md).

The model id is what nodes register on-chain and validators check. A manifest with pieces
(what nodes fetch from each other) is identified by all of itself: the id is the sha3-256 of
its bytes with the id written as ID_PLACEHOLDER, so a manifest fetched from a peer can be
checked whole. Earlier manifests, without pieces, keep the id of their files only: sha3-256
over the sorted lines "<file name> <sha3-256 hex>\\n"."""

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


ID_PLACEHOLDER = "0x" + "0" * 64
# The largest manifest a peer sends or takes (protocol-spec/wire.md, Pieces).
MAX_MANIFEST_BYTES = 4 << 20


def files_model_id(files: dict[str, str]) -> str:
    """The id of a manifest without pieces (earlier imports)."""
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    return "0x" + hashlib.sha3_256(lines.encode()).hexdigest()


def manifest_text(manifest: dict) -> str:
    """manifest.json's text for a manifest with pieces, its model_id derived from the text
    written with ID_PLACEHOLDER in its place."""
    text = json.dumps({**manifest, "model_id": ID_PLACEHOLDER}, indent=2) + "\n"
    derived = "0x" + hashlib.sha3_256(text.encode()).hexdigest()
    return text.replace(ID_PLACEHOLDER, derived, 1)


def derived_model_id(text: str, manifest: dict) -> str:
    """The id a manifest's own text (or, without pieces, its files) derives."""
    if "pieces" not in manifest:
        return files_model_id(manifest["files"])
    if text.count(manifest["model_id"]) != 1:
        raise ImportedModelError("the model id does not appear exactly once in the manifest")
    return "0x" + hashlib.sha3_256(text.replace(manifest["model_id"], ID_PLACEHOLDER).encode()).hexdigest()


def load_manifest(folder: Path) -> dict:
    """Read an imported model's manifest, checking its format tag."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise ImportedModelError(f"{folder}: no manifest.json (not an imported model, or the import did not finish)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ImportedModelError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest
