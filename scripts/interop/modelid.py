"""Model ids (`model-format.md`, "Model id"): sha3-256 (FIPS 202, not keccak) of the
manifest's own bytes with its id blanked, or, for manifests without pieces, of the
sorted `"<file> <sha3 hex>\\n"` lines."""

import hashlib

PLACEHOLDER = "0x" + "0" * 64


def derived_model_id(manifest: bytes, model_id: str) -> str:
    """The id the manifest's bytes derive; `ValueError` unless `model_id` is in them once."""
    count = manifest.count(model_id.encode())
    if count != 1:
        raise ValueError(f"the model id appears {count} times in the manifest, not once")
    return "0x" + hashlib.sha3_256(manifest.replace(model_id.encode(), PLACEHOLDER.encode())).hexdigest()


def files_model_id(files: dict[str, str]) -> str:
    """The legacy id: over `files` (name → sha3-256 hex) sorted by name as bytes."""
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files, key=str.encode))
    return "0x" + hashlib.sha3_256(lines.encode()).hexdigest()
