//! Fetching a model's blocks from the peers that seed them: the manifest first (checked
//! against the model id), then every missing piece from several peers at once, rarest first,
//! each checked before it is written. A peer that sends a bad piece is banned and the piece
//! asked of another; a fetch that stops (crash, `kill -9`) resumes with only the pieces that
//! do not check out on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;

use crate::model::pieces::piece_hash;
use crate::model::{ModelManifest, VerifyError, file_sha3};
use crate::net::Network;
use crate::net::pieces::{PieceRequest, PieceResponse, Refusal};

/// Piece requests in flight to one peer at most.
pub const PER_PEER_IN_FLIGHT: usize = 4;
/// Piece requests in flight in all.
pub const MAX_IN_FLIGHT: usize = 16;
/// Failed requests in a row (no answer, a refusal) after which a peer is asked nothing more.
const STRIKES: u32 = 3;
/// Busy answers in a row that count as one failed request.
const BUSY_LIMIT: u32 = 50;
/// How long a Busy peer's slot is held before it is asked again.
const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// A fetch during which no piece arrives for this long fails, rather than wait for ever on
/// peers that stay busy or slow.
const NO_PROGRESS: Duration = Duration::from_secs(180);
/// Where pieces of files not yet complete are kept, inside the output folder.
pub const PARTIAL_DIR: &str = ".partial";

/// A peer to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub peer: PeerId,
    /// The blocks whose files it holds; `None`: not known, so asked for any file.
    pub blocks: Option<BTreeSet<u16>>,
}

/// Told of the fetch's progress (a progress bar, a log).
pub trait FetchProgress {
    /// The bytes to hold in all, and those already on disk.
    fn begin(&self, total: u64, held: u64);
    /// One more piece of `bytes` fetched and checked.
    fn advanced(&self, bytes: u64);
    /// Something the operator should read (a peer banned, a file complete).
    fn note(&self, line: &str);
}

/// What a fetch did.
#[derive(Debug, Default)]
pub struct FetchReport {
    /// Pieces of the files asked for.
    pub pieces: usize,
    /// Pieces already on disk and checked (a resumed fetch).
    pub resumed: usize,
    /// Pieces fetched now.
    pub fetched: usize,
    pub bytes_fetched: u64,
    /// Pieces fetched from each peer.
    pub by_peer: BTreeMap<PeerId, usize>,
    /// Bad pieces refused.
    pub refused: usize,
    /// Peers banned for a bad piece or a bad manifest.
    pub banned: Vec<PeerId>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no peer sent a usable manifest for model {model}: {reasons}")]
    NoManifest { model: B256, reasons: String },
    #[error("the manifest of model {0} has no piece list, so its files cannot be fetched")]
    NoPieces(B256),
    #[error("the model has {blocks} blocks; cannot fetch blocks {first}-{last}")]
    NoSuchBlocks { blocks: usize, first: u16, last: u16 },
    #[error("no peer left to fetch piece {index} of {file} from: {why}")]
    NoProvider { file: String, index: u64, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// Fetches the files of `blocks` of `model` (and the model's other files: tokenizer, chat
/// template) into `out` from `providers`, then writes the manifest there; `out` then loads as
/// a model folder serving those blocks.
pub async fn fetch(
    net: &Network,
    model: B256,
    blocks: (u16, u16),
    out: &Path,
    providers: &[Provider],
    progress: &dyn FetchProgress,
) -> Result<FetchReport, FetchError> {
    std::fs::create_dir_all(out.join(PARTIAL_DIR)).map_err(io(out))?;
    let mut report = FetchReport::default();
    let mut banned: HashSet<PeerId> = HashSet::new();
    let manifest = fetch_manifest(net, model, out, providers, &mut banned, progress).await?;
    let (first, last) = blocks;
    if usize::from(last) >= manifest.blocks.len() || first > last {
        return Err(FetchError::NoSuchBlocks { blocks: manifest.blocks.len(), first, last });
    }
    let wanted = wanted_files(&manifest, blocks);
    let mut files = Vec::new();
    for (name, block) in &wanted {
        files.push(FileState::open(&manifest, name, *block)?);
    }
    report.pieces = files.iter().map(|f| f.pieces).sum();
    report.resumed = report.pieces - files.iter().map(|f| f.missing.len()).sum::<usize>();
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let missing_bytes: u64 = files.iter().map(|f| f.missing_bytes(&manifest)).sum();
    progress.begin(total, total - missing_bytes);

    let mut queue: Vec<(usize, u64)> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        queue.extend(file.missing.iter().map(|&index| (i, index)));
    }
    // Rarest first: pieces only a few peers hold are asked for while those peers are there.
    let holders = |file: &FileState| providers.iter().filter(|p| p.holds(file.block)).count();
    queue.sort_by_key(|&(i, index)| (holders(&files[i]), i, index));

    let mut peers = Peers { banned, ..Peers::default() };
    let mut last_failure: HashMap<(usize, u64), String> = HashMap::new();
    let mut last_progress = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for file in files.iter_mut().filter(|file| file.missing.is_empty()) {
        finish_file(&manifest, file, progress)?;
    }
    loop {
        let mut next = 0;
        while next < queue.len() && in_flight.len() < MAX_IN_FLIGHT && peers.any_free(providers) {
            let (i, index) = queue[next];
            let block = files[i].block;
            let mut usable = peers.usable(providers, i, block).peekable();
            if usable.peek().is_none() {
                let why = last_failure.remove(&(i, index)).unwrap_or_else(|| {
                    "no known peer holds it (or all were banned or failed)".into()
                });
                return Err(FetchError::NoProvider { file: files[i].name.clone(), index, why });
            }
            let Some(peer) = peers.least_loaded(usable) else {
                next += 1;
                continue;
            };
            queue.remove(next);
            *peers.load.entry(peer).or_default() += 1;
            let request = PieceRequest::Piece {
                model: model.0,
                file: files[i].name.clone(),
                index: index as u32,
            };
            let net = net.clone();
            in_flight.push(async move {
                let answer = net.ask_pieces(peer, request).await;
                if let Ok(PieceResponse::Refused { refusal: Refusal::Busy, .. }) = answer {
                    // Back off while holding the peer's slot, so it is not asked again at once.
                    tokio::time::sleep(BUSY_BACKOFF).await;
                }
                (i, index, peer, answer)
            });
        }
        if last_progress.elapsed() > NO_PROGRESS {
            let (i, index) = queue.first().copied().unwrap_or_default();
            let why = format!("no piece arrived for {} s", NO_PROGRESS.as_secs());
            return Err(FetchError::NoProvider { file: files[i].name.clone(), index, why });
        }
        let Some((i, index, peer, answer)) = in_flight.next().await else {
            break;
        };
        *peers.load.entry(peer).or_default() -= 1;
        let file = &mut files[i];
        match answer {
            Ok(PieceResponse::Piece(bytes)) if file.is_piece(&manifest, index, &bytes) => {
                let range = manifest.pieces.as_ref().and_then(|p| p.range(&file.name, index));
                let offset = range.map_or(0, |r| r.start);
                let handle = file.handle.as_ref().expect("a file with missing pieces is open");
                handle.write_all_at(&bytes, offset).map_err(io(&file.partial))?;
                file.missing.remove(&index);
                peers.succeeded(peer);
                last_progress = Instant::now();
                report.fetched += 1;
                report.bytes_fetched += bytes.len() as u64;
                *report.by_peer.entry(peer).or_default() += 1;
                progress.advanced(bytes.len() as u64);
                if file.missing.is_empty() {
                    finish_file(&manifest, file, progress)?;
                }
            }
            Ok(PieceResponse::Piece(bytes)) => {
                report.refused += 1;
                if peers.banned.insert(peer) {
                    progress.note(&format!(
                        "peer {peer} sent a bad piece {index} of {} (sha3 {}): banned",
                        file.name,
                        piece_hash(&bytes)
                    ));
                }
                queue.insert(0, (i, index));
            }
            Ok(PieceResponse::Refused { refusal: Refusal::Busy, .. }) => {
                if peers.busy(peer) {
                    progress.note(&format!("peer {peer} stayed busy: asked nothing more"));
                }
                queue.push((i, index));
            }
            Ok(PieceResponse::Refused {
                refusal: refusal @ (Refusal::UnknownFile | Refusal::OutOfRange),
                message,
            }) => {
                // It lacks this file: others may still have it, and it the others.
                peers.lacking.insert((peer, i));
                last_failure.insert((i, index), format!("{peer}: {refusal:?}: {message}"));
                queue.insert(0, (i, index));
            }
            Ok(PieceResponse::Refused {
                refusal: refusal @ (Refusal::UnknownModel | Refusal::Unavailable),
                message,
            }) => {
                // It seeds nothing of this model, or cannot read it: asked nothing more.
                peers.strikes.insert(peer, STRIKES);
                let why = format!("{peer}: {refusal:?}: {message}");
                progress.note(&format!("peer {why}: asked nothing more"));
                last_failure.insert((i, index), why);
                queue.insert(0, (i, index));
            }
            other => {
                let why = match other {
                    Ok(PieceResponse::Refused { refusal, message }) => {
                        format!("{refusal:?}: {message}")
                    }
                    Ok(_) => "answered a piece request with a manifest".to_owned(),
                    Err(e) => e.to_string(),
                };
                if peers.failed(peer) {
                    progress.note(&format!(
                        "peer {peer} failed {STRIKES} requests in a row, last: {why}"
                    ));
                }
                last_failure.insert((i, index), format!("{peer}: {why}"));
                queue.insert(0, (i, index));
            }
        }
    }
    report.banned = peers.banned.into_iter().collect();
    write_manifest(out, &manifest.bytes)?;
    let _ = std::fs::remove_dir(out.join(PARTIAL_DIR));
    Ok(report)
}

/// What a fetch knows of its peers.
#[derive(Default)]
struct Peers {
    /// Requests in flight to each.
    load: HashMap<PeerId, usize>,
    /// Failed requests in a row (a piece that arrives clears them).
    strikes: HashMap<PeerId, u32>,
    /// Busy answers in a row.
    busy: HashMap<PeerId, u32>,
    /// (peer, file) it said it does not hold.
    lacking: HashSet<(PeerId, usize)>,
    /// Sent a bad piece or manifest: asked nothing more.
    banned: HashSet<PeerId>,
}

impl Peers {
    fn asked(&self, peer: &PeerId) -> bool {
        !self.banned.contains(peer) && self.strikes.get(peer).copied().unwrap_or(0) < STRIKES
    }

    /// The providers still asked for file `file` of `block`.
    fn usable<'a>(
        &'a self,
        providers: &'a [Provider],
        file: usize,
        block: Option<usize>,
    ) -> impl Iterator<Item = &'a Provider> + 'a {
        providers.iter().filter(move |p| {
            p.holds(block) && self.asked(&p.peer) && !self.lacking.contains(&(p.peer, file))
        })
    }

    fn free(&self, peer: &PeerId) -> bool {
        self.load.get(peer).copied().unwrap_or(0) < PER_PEER_IN_FLIGHT
    }

    /// Whether any peer still asked has a free slot (else no piece can be sent now).
    fn any_free(&self, providers: &[Provider]) -> bool {
        providers.iter().any(|p| self.asked(&p.peer) && self.free(&p.peer))
    }

    fn least_loaded<'a>(&self, usable: impl Iterator<Item = &'a Provider>) -> Option<PeerId> {
        let with_load = usable.map(|p| (self.load.get(&p.peer).copied().unwrap_or(0), p.peer));
        with_load.filter(|(load, _)| *load < PER_PEER_IN_FLIGHT).min().map(|(_, peer)| peer)
    }

    fn succeeded(&mut self, peer: PeerId) {
        self.strikes.remove(&peer);
        self.busy.remove(&peer);
    }

    /// Counts a failed request; true when it strikes the peer out.
    fn failed(&mut self, peer: PeerId) -> bool {
        let strikes = self.strikes.entry(peer).or_default();
        *strikes += 1;
        *strikes == STRIKES
    }

    /// Counts a Busy answer; [`BUSY_LIMIT`] in a row count as a failure.
    fn busy(&mut self, peer: PeerId) -> bool {
        let busy = self.busy.entry(peer).or_default();
        *busy += 1;
        if *busy < BUSY_LIMIT {
            return false;
        }
        self.busy.remove(&peer);
        self.failed(peer)
    }
}

impl Provider {
    /// Whether it is asked for the files of `block` (`None`: a file of the whole model).
    fn holds(&self, block: Option<usize>) -> bool {
        match (&self.blocks, block) {
            (Some(blocks), Some(block)) => {
                u16::try_from(block).is_ok_and(|block| blocks.contains(&block))
            }
            _ => true,
        }
    }
}

/// The manifest `out` already holds for `model` (a resumed fetch, or another span of the
/// same model), else the first one a provider sends that hashes to `model`. A provider that
/// sends another is banned. Nothing is written to `out`.
pub async fn fetch_manifest(
    net: &Network,
    model: B256,
    out: &Path,
    providers: &[Provider],
    banned: &mut HashSet<PeerId>,
    progress: &dyn FetchProgress,
) -> Result<ModelManifest, FetchError> {
    let wanted = model.to_string();
    let usable =
        |m: &ModelManifest| m.model_id == wanted && m.derived_id().is_ok_and(|id| id == wanted);
    if let Ok(held) = ModelManifest::load(out)
        && usable(&held)
    {
        return with_pieces(held, model);
    }
    let mut reasons = Vec::new();
    for provider in providers {
        let peer = provider.peer;
        match net.ask_pieces(peer, PieceRequest::Manifest { model: model.0 }).await {
            Ok(PieceResponse::Manifest(bytes)) => match ModelManifest::from_bytes(&bytes, out) {
                Ok(manifest) if usable(&manifest) => return with_pieces(manifest, model),
                Ok(manifest) => {
                    banned.insert(peer);
                    let derived = manifest.derived_id().unwrap_or_else(|why| why);
                    progress.note(&format!(
                        "peer {peer} sent a manifest that hashes to {derived}, not {wanted}: banned"
                    ));
                    reasons.push(format!("{peer}: a manifest of another model ({derived})"));
                }
                Err(e) => {
                    banned.insert(peer);
                    progress.note(&format!("peer {peer} sent a malformed manifest: banned"));
                    reasons.push(format!("{peer}: {e}"));
                }
            },
            Ok(PieceResponse::Refused { refusal, message }) => {
                reasons.push(format!("{peer}: {refusal:?}: {message}"))
            }
            Ok(PieceResponse::Piece(_)) => reasons.push(format!("{peer}: answered with a piece")),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    if reasons.is_empty() {
        reasons.push("no provider found".into());
    }
    Err(FetchError::NoManifest { model, reasons: reasons.join("; ") })
}

fn with_pieces(manifest: ModelManifest, model: B256) -> Result<ModelManifest, FetchError> {
    match manifest.pieces {
        Some(_) => Ok(manifest),
        None => Err(FetchError::NoPieces(model)),
    }
}

/// The files of blocks `first..=last` (with their block) and every file not of a block.
fn wanted_files(
    manifest: &ModelManifest,
    (first, last): (u16, u16),
) -> Vec<(String, Option<usize>)> {
    let block_of = |name: &str| {
        manifest.blocks.iter().find(|b| b.graph == name || b.weights == name).map(|b| b.index)
    };
    manifest
        .files
        .keys()
        .map(|name| (name.clone(), block_of(name)))
        .filter(|(_, block)| block.is_none_or(|b| (first as usize..=last as usize).contains(&b)))
        .collect()
}

/// One file being fetched: its partial copy and the pieces it still lacks.
struct FileState {
    name: String,
    block: Option<usize>,
    bytes: u64,
    pieces: usize,
    partial: PathBuf,
    /// The partial copy being written; `None`: the file was complete before this fetch.
    handle: Option<std::fs::File>,
    missing: std::collections::BTreeSet<u64>,
}

impl FileState {
    /// Opens the partial copy of `name` (or finds the file complete), checking each piece
    /// already there: only those that do not check out are missing.
    fn open(
        manifest: &ModelManifest,
        name: &str,
        block: Option<usize>,
    ) -> Result<Self, FetchError> {
        let listed = &manifest.pieces.as_ref().expect("checked by with_pieces").files[name];
        let complete = manifest.path(name);
        let partial = manifest.dir.join(PARTIAL_DIR).join(name);
        let done = std::fs::metadata(&complete).is_ok_and(|m| m.len() == listed.bytes)
            && file_sha3(&complete)? == manifest.files[name];
        let mut state = Self {
            name: name.to_owned(),
            block,
            bytes: listed.bytes,
            pieces: listed.hashes.len(),
            partial: partial.clone(),
            handle: None,
            missing: Default::default(),
        };
        if done {
            // A partial copy left beside a complete file is stale.
            let _ = std::fs::remove_file(&partial);
            return Ok(state);
        }
        // A partial copy from an earlier run is checked piece by piece; a new one lacks all.
        let earlier = partial.exists();
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .map_err(io(&partial))?;
        handle.set_len(listed.bytes).map_err(io(&partial))?;
        let pieces = manifest.pieces.as_ref().expect("checked");
        for index in 0..listed.hashes.len() as u64 {
            let mut have = false;
            if earlier {
                let range = pieces.range(name, index).expect("listed");
                let mut bytes = vec![0u8; (range.end - range.start) as usize];
                have = handle.read_exact_at(&mut bytes, range.start).is_ok()
                    && pieces.is_piece(name, index, &bytes);
            }
            if !have {
                state.missing.insert(index);
            }
        }
        state.handle = Some(handle);
        Ok(state)
    }

    fn is_piece(&self, manifest: &ModelManifest, index: u64, bytes: &[u8]) -> bool {
        manifest.pieces.as_ref().is_some_and(|p| p.is_piece(&self.name, index, bytes))
    }

    fn missing_bytes(&self, manifest: &ModelManifest) -> u64 {
        let pieces = manifest.pieces.as_ref().expect("checked");
        let length = |&index: &u64| pieces.range(&self.name, index).map_or(0, |r| r.end - r.start);
        self.missing.iter().map(length).sum()
    }
}

/// Every piece of `file` is in, each checked against the manifest, whose pieces cover the
/// file exactly and are under the model id: so is the file (a node checks its whole files
/// again when it loads them). Moves it into place.
fn finish_file(
    manifest: &ModelManifest,
    file: &FileState,
    progress: &dyn FetchProgress,
) -> Result<(), FetchError> {
    let Some(handle) = &file.handle else {
        return Ok(()); // complete before this fetch
    };
    handle.sync_all().map_err(io(&file.partial))?;
    let complete = manifest.path(&file.name);
    std::fs::rename(&file.partial, &complete).map_err(io(&complete))?;
    progress.note(&format!("{}: complete, every piece checked", file.name));
    Ok(())
}

/// Writes the manifest last (via a rename), so a folder with a manifest has its files.
fn write_manifest(out: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let (tmp, path) = (out.join("manifest.json.tmp"), out.join("manifest.json"));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(blocks: Option<&[u16]>) -> Provider {
        Provider { peer: PeerId::random(), blocks: blocks.map(|b| b.iter().copied().collect()) }
    }

    #[test]
    fn peers_are_asked_by_block_load_and_record() {
        let providers = [provider(Some(&[0])), provider(Some(&[1])), provider(None)];
        let (a, b, any) = (providers[0].peer, providers[1].peer, providers[2].peer);
        let mut peers = Peers::default();
        let asked = |peers: &Peers, file, block| -> Vec<PeerId> {
            peers.usable(&providers, file, block).map(|p| p.peer).collect()
        };
        assert_eq!(asked(&peers, 0, Some(0)), [a, any], "a block's holders and the unknown");
        assert_eq!(asked(&peers, 2, None), [a, b, any], "a file of no block: everyone");
        // The least loaded; none past its in-flight bound.
        peers.load.insert(a, PER_PEER_IN_FLIGHT);
        assert_eq!(peers.least_loaded(peers.usable(&providers, 0, Some(0))), Some(any));
        peers.load.insert(any, PER_PEER_IN_FLIGHT);
        assert_eq!(peers.least_loaded(peers.usable(&providers, 0, Some(0))), None);
        assert!(peers.any_free(&providers), "b is free");
        peers.load.clear();
        // A peer lacking a file is not asked for it, but for others.
        peers.lacking.insert((any, 0));
        assert_eq!(asked(&peers, 0, Some(0)), [a]);
        assert_eq!(asked(&peers, 1, Some(0)), [a, any]);
        // Strikes in a row strike out; a piece arriving clears them.
        assert!(!peers.failed(a) && !peers.failed(a));
        peers.succeeded(a);
        assert!(!peers.failed(a) && !peers.failed(a) && peers.failed(a));
        assert_eq!(asked(&peers, 1, Some(0)), [any]);
        // Busy answers count as one failure per BUSY_LIMIT in a row.
        for _ in 1..BUSY_LIMIT {
            assert!(!peers.busy(b));
        }
        assert_eq!(peers.strikes.get(&b), None);
        assert!(!peers.busy(b), "one strike, not out");
        assert_eq!(peers.strikes.get(&b), Some(&1));
        // A ban is for good.
        peers.banned.insert(any);
        assert!(asked(&peers, 1, Some(0)).is_empty());
        assert!(peers.any_free(&providers), "b is still asked");
    }
}
