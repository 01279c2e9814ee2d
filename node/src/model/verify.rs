use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use sha3::{Digest, Sha3_256};

use super::{BlockSpec, FilePieces, ModelManifest};

/// A model file that does not match its manifest.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: sha3-256 {actual}, manifest says {expected}")]
    HashMismatch { path: PathBuf, expected: String, actual: String },
    #[error("{path} does not match the manifest's piece list (size or a piece hash)")]
    PiecesMismatch { path: PathBuf },
    #[error("manifest model id {expected} does not match its contents (derived {actual})")]
    ModelId { expected: String, actual: String },
}

/// sha3-256 (FIPS 202) of a file, lowercase hex.
pub fn file_sha3(path: &std::path::Path) -> Result<String, VerifyError> {
    let io = |source| VerifyError::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha3_256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The model id of a manifest without pieces (earlier imports): sha3-256 over
/// `"<file> <hash>\n"` for every file, sorted by name.
pub fn files_model_id(files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha3_256::new();
    for (name, hash) in files {
        hasher.update(format!("{name} {hash}\n").as_bytes());
    }
    format!("0x{}", hex::encode(hasher.finalize()))
}

/// What stands for the model id in the bytes a manifest's id is the hash of.
pub const MODEL_ID_PLACEHOLDER: &str =
    "0x0000000000000000000000000000000000000000000000000000000000000000";

/// The model id of a manifest with pieces: sha3-256 of its `manifest.json` bytes with its
/// model id (which must appear in them exactly once) replaced by [`MODEL_ID_PLACEHOLDER`].
/// Every field is covered (blocks, tensors, tokenizer, file and piece hashes), so a manifest
/// fetched from a peer is exactly the one the id names.
pub fn manifest_model_id(bytes: &[u8], model_id: &str) -> Result<String, String> {
    let needle = model_id.as_bytes();
    let at: Vec<usize> = bytes
        .windows(needle.len().max(1))
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect();
    let [at] = at[..] else {
        return Err(format!("the model id appears {} times in the manifest, not once", at.len()));
    };
    let mut hasher = Sha3_256::new();
    hasher.update(&bytes[..at]);
    hasher.update(MODEL_ID_PLACEHOLDER.as_bytes());
    hasher.update(&bytes[at + needle.len()..]);
    Ok(format!("0x{}", hex::encode(hasher.finalize())))
}

fn check_file(manifest: &ModelManifest, file: &str) -> Result<(), VerifyError> {
    let path = manifest.path(file);
    let io = |source| VerifyError::Io { path: path.clone(), source };
    // A seeder serves the listed pieces: a list that disagrees with the file would get it
    // banned, so they are checked too, from the same read as the whole file's hash.
    let (actual, pieces) = match &manifest.pieces {
        Some(pieces) => {
            let (listed, whole) =
                FilePieces::with_file_hash(&path, pieces.piece_bytes).map_err(io)?;
            (whole, Some((pieces, listed)))
        }
        None => (file_sha3(&path)?, None),
    };
    let expected = manifest.files.get(file).cloned().unwrap_or_default();
    if actual != expected {
        return Err(VerifyError::HashMismatch { path, expected, actual });
    }
    if let Some((pieces, listed)) = pieces
        && pieces.files.get(file) != Some(&listed)
    {
        return Err(VerifyError::PiecesMismatch { path });
    }
    Ok(())
}

/// Checks the two files of one block: what a node serving only that block needs; and, for
/// a manifest with pieces, that the manifest is the one its model id names (it is what the
/// node seeds to others).
pub fn verify_block_files(manifest: &ModelManifest, block: &BlockSpec) -> Result<(), VerifyError> {
    if manifest.pieces.is_some() {
        check_id(manifest)?;
    }
    check_file(manifest, &block.graph)?;
    check_file(manifest, &block.weights)
}

fn check_id(manifest: &ModelManifest) -> Result<(), VerifyError> {
    let actual = manifest.derived_id().unwrap_or_else(|why| format!("none: {why}"));
    if actual == manifest.model_id {
        Ok(())
    } else {
        Err(VerifyError::ModelId { expected: manifest.model_id.clone(), actual })
    }
}

/// Checks the model id and every file of the model that is in its folder (a node that
/// fetched some blocks holds only theirs); returns the blocks whose two files are there.
pub fn verify_held(manifest: &ModelManifest) -> Result<Vec<usize>, VerifyError> {
    check_id(manifest)?;
    let here = |file: &String| manifest.path(file).exists();
    for file in manifest.files.keys().filter(|file| here(file)) {
        check_file(manifest, file)?;
    }
    let held = manifest.blocks.iter().filter(|b| here(&b.graph) && here(&b.weights));
    Ok(held.map(|b| b.index).collect())
}

/// Checks every file hash and the model id; the first bad file is named in the error.
pub fn verify_model(manifest: &ModelManifest) -> Result<(), VerifyError> {
    for file in manifest.files.keys() {
        check_file(manifest, file)?;
    }
    check_id(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_id_is_the_hash_of_its_bytes_with_the_id_blanked() {
        let blank = format!("{{\"model_id\": \"{MODEL_ID_PLACEHOLDER}\", \"name\": \"m\"}}\n");
        let id = format!("0x{}", hex::encode(Sha3_256::digest(blank.as_bytes())));
        let written = blank.replace(MODEL_ID_PLACEHOLDER, &id);
        assert_eq!(manifest_model_id(written.as_bytes(), &id), Ok(id.clone()));
        // Any other byte changes it.
        let renamed = written.replace("\"m\"", "\"n\"");
        assert_ne!(manifest_model_id(renamed.as_bytes(), &id), Ok(id.clone()));
        // The id must be there exactly once: not hidden in another field too.
        let twice = written.replace("\"m\"", &format!("\"{id}\""));
        assert!(manifest_model_id(twice.as_bytes(), &id).unwrap_err().contains("2 times"));
        assert!(manifest_model_id(b"{}", &id).unwrap_err().contains("0 times"));
    }

    /// The worked examples of `model-format.md`, "Model id".
    #[test]
    fn the_specs_worked_examples_hold() {
        let id = "0x97023d5b8f21195a52ccbe6d98c6d0b0a6d9a4017350bc8c6653934ab62cc12a";
        let text = format!(
            "{{\n  \"format\": \"infergrid-model/1\",\n  \"model_id\": \"{id}\",\n  \"name\": \"m\"\n}}\n"
        );
        assert_eq!(text.len(), 135);
        assert_eq!(manifest_model_id(text.as_bytes(), id).as_deref(), Ok(id));
        let files = BTreeMap::from([
            ("block-0.onnx".to_owned(), hex::encode(Sha3_256::digest(b"abc"))),
            ("block-0.weights".to_owned(), hex::encode(Sha3_256::digest([0u8; 20_000]))),
            ("chat_template.jinja".to_owned(), hex::encode(Sha3_256::digest(b""))),
            ("tokenizer.json".to_owned(), hex::encode(Sha3_256::digest(b"{}"))),
        ]);
        assert_eq!(
            files_model_id(&files),
            "0x4004591f147835861031b720a50e2b38e29314f777b8bfd67fefdf14498a3839"
        );
    }
}
