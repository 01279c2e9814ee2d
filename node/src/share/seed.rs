//! What a node seeds: the manifest of the model it serves and the pieces of the files it
//! holds, read from disk as peers ask.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::ModelManifest;
use crate::model::pieces::{Pieces, read_range};
use crate::net::pieces::{PieceRequest, PieceResponse, PieceSource, Refusal};

/// A model folder whose manifest has no piece list cannot be seeded.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0}: the manifest has no piece list (imported before pieces): import the model again to seed it"
)]
pub struct NoPieces(String);

/// Answers manifest and piece requests for one model folder.
pub struct Seed {
    model: [u8; 32],
    manifest: ModelManifest,
    /// The files present at their listed size. Whoever fetches checks every piece; a file
    /// that rotted on disk gets this seeder banned by its fetchers, not served as good.
    held: BTreeSet<String>,
    /// TESTING ONLY: every this many pieces served, one is corrupted.
    corrupt_every: Option<u64>,
    /// TESTING ONLY: every piece is held this long before it is sent.
    delay: std::time::Duration,
    served: AtomicU64,
}

impl Seed {
    /// Seeds `manifest`'s folder: its manifest file and the files it holds.
    pub fn open(manifest: &ModelManifest) -> Result<Self, NoPieces> {
        let dir = manifest.dir.display().to_string();
        let pieces = manifest.pieces.as_ref().ok_or(NoPieces(dir))?;
        let held = pieces
            .files
            .iter()
            .filter(|(name, file)| {
                std::fs::metadata(manifest.path(name)).is_ok_and(|m| m.len() == file.bytes)
            })
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Self {
            model: manifest.id().0,
            manifest: manifest.clone(),
            held,
            corrupt_every: None,
            delay: std::time::Duration::ZERO,
            served: AtomicU64::new(0),
        })
    }

    /// TESTING ONLY: corrupts one piece in `every` served (flips a byte), to show fetchers
    /// refuse bad pieces and ban the seeder.
    pub fn corrupting(mut self, every: u64) -> Self {
        self.corrupt_every = Some(every.max(1));
        self
    }

    /// TESTING ONLY: holds every piece `delay` before sending it (a slow link, emulated).
    pub fn delaying(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The manifest's piece list (there is one: checked at open).
    fn pieces(&self) -> &Pieces {
        self.manifest.pieces.as_ref().expect("checked at open")
    }

    /// The files it can serve.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The blocks both of whose files it can serve: what it publishes provider records for.
    pub fn held_blocks(&self) -> Vec<u16> {
        let held = |file: &String| self.held.contains(file);
        let blocks = self.manifest.blocks.iter();
        let whole = blocks.filter(|b| held(&b.graph) && held(&b.weights));
        whole.filter_map(|b| u16::try_from(b.index).ok()).collect()
    }

    fn piece(&self, file: &str, index: u32) -> PieceResponse {
        if !self.held.contains(file) {
            let why = if self.pieces().files.contains_key(file) {
                format!("{file} is not held here")
            } else {
                format!("{file} is not a file of this model")
            };
            return PieceResponse::refused(Refusal::UnknownFile, why);
        }
        let Some(range) = self.pieces().range(file, u64::from(index)) else {
            let count = self.pieces().files[file].hashes.len();
            return PieceResponse::refused(
                Refusal::OutOfRange,
                format!("{file} has {count} pieces, no piece {index}"),
            );
        };
        match read_range(&self.manifest.path(file), range) {
            Ok(mut bytes) => {
                std::thread::sleep(self.delay);
                let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(every) = self.corrupt_every
                    && served.is_multiple_of(every)
                    && let Some(byte) = bytes.first_mut()
                {
                    *byte ^= 0xff;
                }
                PieceResponse::Piece(bytes)
            }
            Err(e) => {
                tracing::warn!("seeding: reading piece {index} of {file} failed: {e}");
                PieceResponse::refused(Refusal::Unavailable, "the piece could not be read")
            }
        }
    }
}

impl PieceSource for Seed {
    fn answer(&self, request: PieceRequest) -> PieceResponse {
        let model = match &request {
            PieceRequest::Manifest { model } | PieceRequest::Piece { model, .. } => *model,
        };
        if model != self.model {
            return PieceResponse::refused(
                Refusal::UnknownModel,
                format!("this peer seeds model 0x{}", hex::encode(self.model)),
            );
        }
        match request {
            // The bytes it was loaded and checked from, not the file now on disk.
            PieceRequest::Manifest { .. } => PieceResponse::Manifest(self.manifest.bytes.clone()),
            PieceRequest::Piece { file, index, .. } => self.piece(&file, index),
        }
    }
}
