use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use sha3::{Digest, Sha3_256};

use super::{BlockSpec, FilePieces, ModelManifest, Pieces};

/// A model file that does not match its manifest.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: sha3-256 {actual}, manifest says {expected}")]
    HashMismatch { path: PathBuf, expected: String, actual: String },
    #[error("{path} does not match the manifest's piece list (size or a piece hash)")]
    PiecesMismatch { path: PathBuf },
    #[error("manifest model id {expected} does not match its files (derived {actual})")]
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

/// The model id: sha3-256 over `"<file> <hash>\n"` for every file, sorted by name, then the
/// piece list's lines when there is one.
pub fn model_id(files: &BTreeMap<String, String>, pieces: Option<&Pieces>) -> String {
    let mut hasher = Sha3_256::new();
    for (name, hash) in files {
        hasher.update(format!("{name} {hash}\n").as_bytes());
    }
    if let Some(pieces) = pieces {
        hasher.update(pieces.id_lines().as_bytes());
    }
    format!("0x{}", hex::encode(hasher.finalize()))
}

fn check_file(manifest: &ModelManifest, file: &str) -> Result<(), VerifyError> {
    let path = manifest.path(file);
    let actual = file_sha3(&path)?;
    let expected = manifest.files.get(file).cloned().unwrap_or_default();
    if actual != expected {
        return Err(VerifyError::HashMismatch { path, expected, actual });
    }
    // A seeder serves these pieces: a list that disagrees with the file would get it banned.
    if let Some(pieces) = &manifest.pieces {
        let listed = FilePieces::of_file(&path, pieces.piece_bytes)
            .map_err(|source| VerifyError::Io { path: path.clone(), source })?;
        if pieces.files.get(file) != Some(&listed) {
            return Err(VerifyError::PiecesMismatch { path });
        }
    }
    Ok(())
}

/// Checks the two files of one block: what a node serving only that block needs.
pub fn verify_block_files(manifest: &ModelManifest, block: &BlockSpec) -> Result<(), VerifyError> {
    check_file(manifest, &block.graph)?;
    check_file(manifest, &block.weights)
}

/// Checks every file hash and the model id; the first bad file is named in the error.
pub fn verify_model(manifest: &ModelManifest) -> Result<(), VerifyError> {
    for file in manifest.files.keys() {
        check_file(manifest, file)?;
    }
    let actual = manifest.derived_id();
    if actual == manifest.model_id {
        Ok(())
    } else {
        Err(VerifyError::ModelId { expected: manifest.model_id.clone(), actual })
    }
}
