//! A validator's challenge results, from the first judged answer to the reveal. Per (epoch,
//! node) it counts passed and failed challenges; after the epoch it commits each tally under
//! a fresh salt and, in the reveal window, reveals it. The book is a file written before
//! every commitment is sent (via a temporary file and a rename), so a validator restarted
//! between its commit and its reveal still reveals — a committed result never revealed in a
//! round that fails to finalize is penalized (`validation.md`, "Missed reveals").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use serde::{Deserialize, Serialize};

use crate::chain::{ChainError, Tally, ValidationClient};

/// Where a result stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Answers are still being judged.
    Counting,
    /// The tally is final and its salt drawn and saved; the commitment is being sent (it may
    /// have landed before a crash, or been refused and be due again).
    Sealed,
    /// The commitment is on-chain.
    Committed,
    Revealed,
}

/// One node's result in one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResult {
    pub epoch: u64,
    pub node: Address,
    pub passed: u32,
    pub failed: u32,
    /// Drawn when the result is committed.
    pub salt: B256,
    pub stage: Stage,
}

impl NodeResult {
    fn tally(&self) -> Tally {
        Tally { passed: self.passed, failed: self.failed, salt: self.salt }
    }
}

/// A result book that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ResultBookError {
    #[error("cannot read or write the result book {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a result book: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// What happened to one node's result in a commit or reveal pass.
#[derive(Debug)]
pub struct Sent {
    pub node: Address,
    pub outcome: Result<(), ChainError>,
}

/// The results of one validator, kept in a file.
#[derive(Debug)]
pub struct ResultBook {
    path: PathBuf,
    results: BTreeMap<(u64, Address), NodeResult>,
}

impl ResultBook {
    /// Opens the book at `path`, empty when the file does not exist yet.
    pub fn open(path: &Path) -> Result<Self, ResultBookError> {
        let io = |source| ResultBookError::Io { path: path.to_path_buf(), source };
        let results = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<Vec<NodeResult>>(&bytes)
                .map_err(|source| ResultBookError::Corrupt { path: path.to_path_buf(), source })?
                .into_iter()
                .map(|r| ((r.epoch, r.node), r))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(Self { path: path.to_path_buf(), results })
    }

    /// Counts one judged answer of `node` in `epoch`. Answers judged after the result was
    /// sealed for its commitment are not counted; returns whether it was.
    pub fn record(&mut self, epoch: u64, node: Address, passed: bool) -> bool {
        let result = self.results.entry((epoch, node)).or_insert(NodeResult {
            epoch,
            node,
            passed: 0,
            failed: 0,
            salt: B256::ZERO,
            stage: Stage::Counting,
        });
        if result.stage != Stage::Counting {
            return false;
        }
        if passed {
            result.passed = result.passed.saturating_add(1);
        } else {
            result.failed = result.failed.saturating_add(1);
        }
        true
    }

    /// The results of `epoch`.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = &NodeResult> {
        self.results
            .range((epoch, Address::ZERO)..=(epoch, Address::repeat_byte(0xff)))
            .map(|(_, r)| r)
    }

    /// Commits every result of `epoch` not committed yet: first each tally is sealed under a
    /// fresh salt and the book saved, then one `commitResult` per node. A commitment refused
    /// because the epoch has not ended yet unseals its tally (counting goes on); any other
    /// refusal leaves it sealed, to be sent again with the same salt by the next call. Call
    /// inside the epoch's commit window.
    pub async fn commit(
        &mut self,
        validation: &ValidationClient,
        validator: Address,
        epoch: u64,
    ) -> Result<Vec<Sent>, ResultBookError> {
        let due: Vec<(u64, Address)> = self
            .epoch(epoch)
            .filter(|r| matches!(r.stage, Stage::Counting | Stage::Sealed))
            .map(|r| (r.epoch, r.node))
            .collect();
        for key in &due {
            let result = self.results.get_mut(key).expect("listed above");
            if result.stage == Stage::Counting {
                result.salt = B256::from(rand::random::<[u8; 32]>());
                result.stage = Stage::Sealed;
            }
        }
        self.save()?;
        // Sent all at once: a round's windows are short, and each commitment waits on its
        // own receipt.
        let outcomes = futures::future::join_all(due.iter().map(|key| {
            let tally = self.results[key].tally();
            async move {
                let commitment =
                    validation.result_commitment(key.1, epoch, tally, validator).await?;
                validation.commit_result(key.1, epoch, commitment).await.map(|_| ())
            }
        }))
        .await;
        let mut sent = Vec::with_capacity(due.len());
        for (key, outcome) in due.into_iter().zip(outcomes) {
            let result = self.results.get_mut(&key).expect("listed");
            match &outcome {
                Ok(()) => result.stage = Stage::Committed,
                // Too early: nothing can have landed, so the tally goes back to counting.
                Err(ChainError::Reverted(reason)) if reason.contains("EpochNotEnded") => {
                    result.stage = Stage::Counting
                }
                Err(_) => {}
            }
            sent.push(Sent { node: key.1, outcome });
        }
        self.save()?;
        Ok(sent)
    }

    /// Reveals every committed result of `epoch`, and every sealed one (its commitment may
    /// have landed before a crash; if it did not, the contract refuses the reveal). Call inside
    /// the epoch's reveal window. A result whose reveal fails stays as it was, to be retried.
    pub async fn reveal(
        &mut self,
        validation: &ValidationClient,
        epoch: u64,
    ) -> Result<Vec<Sent>, ResultBookError> {
        let due: Vec<NodeResult> = self
            .epoch(epoch)
            .filter(|r| matches!(r.stage, Stage::Sealed | Stage::Committed))
            .cloned()
            .collect();
        let outcomes = futures::future::join_all(due.iter().map(|result| async move {
            validation.reveal_result(result.node, epoch, result.tally()).await.map(|_| ())
        }))
        .await;
        let mut sent = Vec::with_capacity(due.len());
        for (result, outcome) in due.into_iter().zip(outcomes) {
            if outcome.is_ok() {
                self.results.get_mut(&(epoch, result.node)).expect("listed").stage =
                    Stage::Revealed;
            }
            sent.push(Sent { node: result.node, outcome });
        }
        self.save()?;
        Ok(sent)
    }

    /// Writes the book (atomically: a temporary file, synced, then renamed). `commit` and
    /// `reveal` save by themselves; a running validator also saves its counts now and then.
    pub fn save(&self) -> Result<(), ResultBookError> {
        let io = |source| ResultBookError::Io { path: self.path.clone(), source };
        let results: Vec<&NodeResult> = self.results.values().collect();
        let bytes = serde_json::to_vec_pretty(&results).expect("results serialize");
        let tmp = self.path.with_extension("tmp");
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // The rename itself must reach the disk before a commitment is sent: a salt lost to a
        // power cut after the commitment landed would be a missed reveal.
        let dir =
            self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_survive_reopening_and_stop_counting_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        let mut book = ResultBook::open(&path).unwrap();
        let (a, b) = (Address::repeat_byte(1), Address::repeat_byte(2));
        for passed in [true, true, false] {
            assert!(book.record(7, a, passed));
        }
        book.record(7, b, true);
        book.record(8, a, false);
        let seven: Vec<(Address, u32, u32)> =
            book.epoch(7).map(|r| (r.node, r.passed, r.failed)).collect();
        assert_eq!(seven, vec![(a, 2, 1), (b, 1, 0)]);
        assert_eq!(book.epoch(8).count(), 1);
        // Saved results come back as they were; a sealed one counts no more answers.
        book.results.get_mut(&(7, a)).unwrap().stage = Stage::Sealed;
        book.save().unwrap();
        let mut again = ResultBook::open(&path).unwrap();
        assert_eq!(again.results, book.results);
        assert!(!again.record(7, a, true));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(ResultBook::open(&path), Err(ResultBookError::Corrupt { .. })));
    }
}
