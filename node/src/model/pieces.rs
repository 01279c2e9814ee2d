//! Pieces: fixed-size slices of a model's files, each with its sha3-256 in the manifest and
//! so under the model id (`model-format.md`, "Pieces"). They are what nodes fetch from each
//! other: a piece is checked the moment it arrives, so a peer that sends a bad one is caught
//! at that piece, not after a whole file.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

/// Bytes per piece written by `model import` unless `--piece-bytes` says otherwise.
pub const DEFAULT_PIECE_BYTES: u64 = 1 << 20;
/// The smallest piece a manifest may declare.
pub const MIN_PIECE_BYTES: u64 = 1 << 14;
/// The largest: what a peer must be ready to take in one message.
pub const MAX_PIECE_BYTES: u64 = 1 << 22;

/// The piece list of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pieces {
    /// Bytes per piece (the last piece of a file may be shorter): a power of two from
    /// [`MIN_PIECE_BYTES`] to [`MAX_PIECE_BYTES`].
    pub piece_bytes: u64,
    /// Every file of `files`, by name.
    pub files: BTreeMap<String, FilePieces>,
}

/// One file's size and the sha3-256 of each of its pieces, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePieces {
    pub bytes: u64,
    pub hashes: Vec<String>,
}

impl FilePieces {
    /// The pieces of the file at `path`, `piece_bytes` each.
    pub fn of_file(path: &Path, piece_bytes: u64) -> std::io::Result<Self> {
        Ok(Self::with_file_hash(path, piece_bytes)?.0)
    }

    /// [`Self::of_file`], and the sha3-256 of the whole file from the same read: a node
    /// checks both at start, and reading each file once halves that.
    pub fn with_file_hash(path: &Path, piece_bytes: u64) -> std::io::Result<(Self, String)> {
        let mut file = std::fs::File::open(path)?;
        let bytes = file.metadata()?.len();
        let (mut hashes, mut whole) = (Vec::new(), Sha3_256::new());
        let mut buf = vec![0u8; piece_bytes as usize];
        for index in 0..bytes.div_ceil(piece_bytes) {
            let length = piece_len(bytes, piece_bytes, index);
            file.read_exact(&mut buf[..length])?;
            whole.update(&buf[..length]);
            hashes.push(piece_hash(&buf[..length]));
        }
        Ok((Self { bytes, hashes }, hex::encode(whole.finalize())))
    }
}

/// sha3-256 of a piece, lowercase hex.
pub fn piece_hash(bytes: &[u8]) -> String {
    hex::encode(Sha3_256::digest(bytes))
}

fn piece_len(file_bytes: u64, piece_bytes: u64, index: u64) -> usize {
    (file_bytes - index * piece_bytes).min(piece_bytes) as usize
}

impl Pieces {
    /// Checks the list against the manifest's `files`: the same names, a legal piece size,
    /// and as many well-formed hashes as the file's size makes pieces.
    pub fn check(&self, files: &BTreeMap<String, String>) -> Result<(), String> {
        let size = self.piece_bytes;
        if !size.is_power_of_two() || !(MIN_PIECE_BYTES..=MAX_PIECE_BYTES).contains(&size) {
            return Err(format!(
                "piece size {size} is not a power of two from {MIN_PIECE_BYTES} to {MAX_PIECE_BYTES}"
            ));
        }
        if !self.files.keys().eq(files.keys()) {
            return Err("the piece list does not name exactly the manifest's files".into());
        }
        for (name, file) in &self.files {
            if file.hashes.len() as u64 != file.bytes.div_ceil(size) {
                return Err(format!(
                    "{name}: {} piece hashes for {} bytes in pieces of {size}",
                    file.hashes.len(),
                    file.bytes
                ));
            }
            if let Some(bad) = file.hashes.iter().find(|h| !is_sha3_hex(h)) {
                return Err(format!("{name}: piece hash {bad:?} is not 64 lowercase hex digits"));
            }
        }
        Ok(())
    }

    /// Where piece `index` of `file` lies in the file, if there is such a piece.
    pub fn range(&self, file: &str, index: u64) -> Option<Range<u64>> {
        let entry = self.files.get(file)?;
        (index < entry.hashes.len() as u64).then(|| {
            let start = index * self.piece_bytes;
            start..start + piece_len(entry.bytes, self.piece_bytes, index) as u64
        })
    }

    /// Whether `bytes` is piece `index` of `file`.
    pub fn is_piece(&self, file: &str, index: u64, bytes: &[u8]) -> bool {
        let expected = self.files.get(file).and_then(|f| f.hashes.get(index as usize));
        self.range(file, index).is_some_and(|range| range.end - range.start == bytes.len() as u64)
            && expected.is_some_and(|hash| *hash == piece_hash(bytes))
    }
}

fn is_sha3_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads `range` of the file at `path`.
pub fn read_range(path: &Path, range: Range<u64>) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(range.start))?;
    let mut bytes = vec![0u8; (range.end - range.start) as usize];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(bytes: u64, pieces: usize) -> Pieces {
        let files = BTreeMap::from([(
            "a.bin".to_owned(),
            FilePieces { bytes, hashes: vec![piece_hash(b"x"); pieces] },
        )]);
        Pieces { piece_bytes: MIN_PIECE_BYTES, files }
    }

    #[test]
    fn ranges_cover_the_file_and_the_last_piece_is_short() {
        let pieces = list(MIN_PIECE_BYTES * 2 + 5, 3);
        assert_eq!(pieces.range("a.bin", 0), Some(0..MIN_PIECE_BYTES));
        assert_eq!(pieces.range("a.bin", 2), Some(2 * MIN_PIECE_BYTES..2 * MIN_PIECE_BYTES + 5));
        assert_eq!(pieces.range("a.bin", 3), None);
        assert_eq!(pieces.range("b.bin", 0), None);
    }

    #[test]
    fn malformed_lists_are_refused() {
        let files = BTreeMap::from([("a.bin".to_owned(), "00".repeat(32))]);
        assert!(list(MIN_PIECE_BYTES + 1, 2).check(&files).is_ok());
        assert!(list(MIN_PIECE_BYTES + 1, 1).check(&files).unwrap_err().contains("1 piece"));
        let mut odd = list(10, 1);
        odd.piece_bytes = MIN_PIECE_BYTES + 1;
        assert!(odd.check(&files).unwrap_err().contains("power of two"));
        let mut upper = list(10, 1);
        upper.files.get_mut("a.bin").unwrap().hashes[0] = "AB".repeat(32);
        assert!(upper.check(&files).unwrap_err().contains("lowercase hex"));
        let other = BTreeMap::from([("b.bin".to_owned(), "00".repeat(32))]);
        assert!(list(10, 1).check(&other).unwrap_err().contains("exactly"));
    }

    #[test]
    fn a_file_is_hashed_piece_by_piece() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..MIN_PIECE_BYTES as usize + 100).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = FilePieces::of_file(&path, MIN_PIECE_BYTES).unwrap();
        assert_eq!(file.bytes, data.len() as u64);
        let split = data.split_at(MIN_PIECE_BYTES as usize);
        assert_eq!(file.hashes, [piece_hash(split.0), piece_hash(split.1)]);
        let (again, whole) = FilePieces::with_file_hash(&path, MIN_PIECE_BYTES).unwrap();
        assert_eq!((again, whole), (file.clone(), piece_hash(&data)), "one read, both hashes");
        let pieces = Pieces {
            piece_bytes: MIN_PIECE_BYTES,
            files: BTreeMap::from([("f".to_owned(), file)]),
        };
        assert!(pieces.is_piece("f", 1, split.1));
        assert!(!pieces.is_piece("f", 0, split.1));
        let range = pieces.range("f", 1).unwrap();
        assert_eq!(read_range(&path, range).unwrap(), split.1);
        // Empty files have no pieces.
        std::fs::write(&path, b"").unwrap();
        assert!(FilePieces::of_file(&path, MIN_PIECE_BYTES).unwrap().hashes.is_empty());
    }
}
