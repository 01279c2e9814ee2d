use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ort::value::{DynValue, Tensor};

use super::EngineError;
use super::batch::{BatchCache, RowSpan, left_pad};

/// Where one session's cached keys and values are.
pub(crate) enum Cache {
    /// Its own `(key, value)` per layer, `[1, KV, L, D]`: the `present_*` tensors ORT returned
    /// for its last unbatched step, fed back as `past_*` without a copy.
    Own(Vec<(DynValue, DynValue)>),
    /// Row `row` of a batched call's present tensors, shared with the other rows' sessions.
    Row { batch: Arc<BatchCache>, row: usize },
}

/// One session's cache in one block.
pub(crate) struct KvEntry {
    pub cache: Cache,
    pub tokens: usize,
    last_used: u64,
}

impl KvEntry {
    /// The session's tokens in layer `layer`'s key (`value == false`) or value tensor; an
    /// error, not a panic, for a tensor of another shape than the cache's.
    pub(crate) fn span(&self, layer: usize, value: bool) -> Result<RowSpan<'_>, String> {
        let (layers, row, padding) = match &self.cache {
            Cache::Own(layers) => (layers, 0, 0),
            Cache::Row { batch, row } => {
                let padding = batch
                    .padding
                    .get(*row)
                    .ok_or_else(|| format!("no row {row} in a batch of {}", batch.padding.len()))?;
                (&batch.layers, *row, *padding)
            }
        };
        let pair = layers.get(layer).ok_or_else(|| format!("no cache for layer {layer}"))?;
        let tensor = if value { &pair.1 } else { &pair.0 };
        let (shape, data) = tensor.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
        let &[rows, heads, total, dim] = &shape[..] else {
            return Err(format!("a cache of shape {shape:?}, not [rows, heads, len, dim]"));
        };
        let [rows, heads, total, dim] = [rows, heads, total, dim].map(|d| d as usize);
        if row >= rows || data.len() != rows * heads * total * dim || padding + self.tokens != total
        {
            return Err(format!(
                "a cache of shape {shape:?} does not hold row {row}'s {} tokens after {padding} padding",
                self.tokens
            ));
        }
        Ok(RowSpan { data, heads, dim, row, total, start: padding, len: self.tokens })
    }

    /// The session's cache as tensors of its own, `[1, heads, L, dim]` per layer: the tensors
    /// themselves when they already are, else a copy of its row (a session leaving its batch).
    pub(crate) fn into_own(self) -> Result<Vec<(DynValue, DynValue)>, String> {
        match self.cache {
            Cache::Own(layers) => Ok(layers),
            Cache::Row { .. } => self.first_tokens(self.tokens),
        }
    }

    /// A copy of row `row` of `batch`, holding `tokens`, as caches of its own.
    pub(crate) fn copy_row(
        batch: &Arc<BatchCache>,
        row: usize,
        tokens: usize,
    ) -> Result<Vec<(DynValue, DynValue)>, String> {
        let view =
            KvEntry { cache: Cache::Row { batch: Arc::clone(batch), row }, tokens, last_used: 0 };
        view.first_tokens(tokens)
    }

    /// A copy of the session's first `keep` tokens, `[1, heads, keep, dim]` per layer.
    fn first_tokens(&self, keep: usize) -> Result<Vec<(DynValue, DynValue)>, String> {
        if keep > self.tokens {
            return Err(format!("cannot keep {keep} of {} cached tokens", self.tokens));
        }
        let count = match &self.cache {
            Cache::Own(layers) => layers.len(),
            Cache::Row { batch, .. } => batch.layers.len(),
        };
        let copy = |layer: usize, value: bool| -> Result<DynValue, String> {
            let span = RowSpan { len: keep, ..self.span(layer, value)? };
            let values = left_pad(&[Some(span)], span.heads, keep, span.dim);
            Tensor::from_array(([1, span.heads, keep, span.dim], values))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        };
        (0..count).map(|layer| Ok((copy(layer, false)?, copy(layer, true)?))).collect()
    }
}

/// The KV caches of every session a block serves, bounded in sessions and in tokens.
/// When full, the least recently used sessions are evicted, and a later request for one of
/// them gets [`EngineError::SessionEvicted`] instead of a wrong answer.
pub(crate) struct KvStore {
    entries: HashMap<u64, KvEntry>,
    evicted: VecDeque<u64>,
    max_sessions: usize,
    max_tokens: usize,
    clock: u64,
}

/// Evicted ids remembered for a clear error.
const EVICTED_MEMORY: usize = 1024;

impl KvStore {
    pub(crate) fn new(limits: CacheLimits) -> Self {
        Self {
            entries: HashMap::new(),
            evicted: VecDeque::new(),
            max_sessions: limits.max_sessions.max(1),
            max_tokens: limits.max_tokens,
            clock: 0,
        }
    }

    /// Takes the cache of `session` for a step that starts at `position` and adds `new_tokens`.
    /// Position 0 starts (or restarts) the session; a position inside the cache rolls the
    /// session back to it first (the positions from there on are forgotten: speculative
    /// decoding discards the drafts the model rejected). Returns `None` for a fresh session.
    pub(crate) fn take(
        &mut self,
        session: u64,
        position: usize,
        new_tokens: usize,
    ) -> Result<Option<KvEntry>, EngineError> {
        let needed = position + new_tokens;
        if needed > self.max_tokens {
            return Err(EngineError::CacheFull { needed, limit: self.max_tokens });
        }
        let entry = if position == 0 {
            self.entries.remove(&session);
            None
        } else {
            let entry = self.entries.remove(&session).ok_or_else(|| {
                if self.evicted.contains(&session) {
                    EngineError::SessionEvicted(session)
                } else {
                    EngineError::UnknownSession(session)
                }
            })?;
            if entry.tokens < position {
                let cached = entry.tokens;
                self.entries.insert(session, entry);
                return Err(EngineError::PositionMismatch { session, cached, requested: position });
            }
            if entry.tokens > position {
                match entry.first_tokens(position) {
                    Ok(layers) => {
                        Some(KvEntry { cache: Cache::Own(layers), tokens: position, ..entry })
                    }
                    Err(reason) => {
                        self.entries.insert(session, entry);
                        return Err(EngineError::Rollback { session, reason });
                    }
                }
            } else {
                Some(entry)
            }
        };
        self.make_room(needed);
        Ok(entry)
    }

    /// Stores the cache after a step.
    pub(crate) fn put(&mut self, session: u64, cache: Cache, tokens: usize) {
        self.clock += 1;
        self.evicted.retain(|&id| id != session);
        self.entries.insert(session, KvEntry { cache, tokens, last_used: self.clock });
    }

    /// The sessions whose caches are rows of `batch`, as `(session, row, tokens)`.
    pub(crate) fn rows_of(&self, batch: &Arc<BatchCache>) -> Vec<(u64, usize, usize)> {
        let rows = self.entries.iter().filter_map(|(&session, entry)| match &entry.cache {
            Cache::Row { batch: of, row } if Arc::ptr_eq(of, batch) => {
                Some((session, *row, entry.tokens))
            }
            _ => None,
        });
        rows.collect()
    }

    /// Gives `session` `own`, a copy of its row `row` of `batch` holding `tokens`, if that is
    /// still its cache (it may have stepped since the copy was made); a row that could not be
    /// copied (`Err`) is evicted.
    pub(crate) fn detach(
        &mut self,
        session: u64,
        (batch, row, tokens): (&Arc<BatchCache>, usize, usize),
        own: Result<Vec<(DynValue, DynValue)>, String>,
    ) {
        let Some(entry) = self.entries.get_mut(&session) else { return };
        let Cache::Row { batch: of, row: at } = &entry.cache else { return };
        if !Arc::ptr_eq(of, batch) || *at != row || entry.tokens != tokens {
            return;
        }
        match own {
            Ok(layers) => entry.cache = Cache::Own(layers),
            Err(_) => self.evict(session),
        }
    }

    /// Drops a session's cache; returns whether it existed.
    pub(crate) fn close(&mut self, session: u64) -> bool {
        self.entries.remove(&session).is_some()
    }

    /// Sessions cached, and positions held: a session's own cache counts its tokens; a batch
    /// counts whole (every row, padding included) while any session holds a row of it, since
    /// that is what stays resident.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let mut batches: Vec<&Arc<BatchCache>> = Vec::new();
        let mut held = 0;
        for entry in self.entries.values() {
            match &entry.cache {
                Cache::Own(_) => held += entry.tokens,
                Cache::Row { batch, row } => {
                    if !batches.iter().any(|seen| Arc::ptr_eq(seen, batch)) {
                        batches.push(batch);
                        held += batch.padding.len() * (batch.padding[*row] + entry.tokens);
                    }
                }
            }
        }
        (self.entries.len(), held)
    }

    /// Tokens that can still be cached without evicting anyone.
    pub(crate) fn free_tokens(&self) -> usize {
        self.max_tokens.saturating_sub(self.usage().1)
    }

    /// Evicts least recently used sessions until one more session of `needed` tokens fits.
    fn make_room(&mut self, needed: usize) {
        while self.entries.len() >= self.max_sessions || self.usage().1 + needed > self.max_tokens {
            let Some((&oldest, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_used) else {
                break;
            };
            self.evict(oldest);
        }
    }

    /// Drops a session's cache, remembering it for [`EngineError::SessionEvicted`].
    fn evict(&mut self, session: u64) {
        self.entries.remove(&session);
        if self.evicted.len() == EVICTED_MEMORY {
            self.evicted.pop_front();
        }
        self.evicted.push_back(session);
    }
}

/// Bounds on a block's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    pub max_sessions: usize,
    /// Positions held over all sessions: own caches' tokens, and batches kept whole
    /// ([`KvStore::usage`]).
    pub max_tokens: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self { max_sessions: 256, max_tokens: 65_536 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_sessions_are_evicted_with_a_clear_error() {
        let mut store = KvStore::new(CacheLimits { max_sessions: 2, max_tokens: 100 });
        for session in 1..=3 {
            assert!(store.take(session, 0, 10).unwrap().is_none());
            store.put(session, Cache::Own(Vec::new()), 10);
        }
        assert_eq!(store.usage(), (2, 20));
        assert!(matches!(store.take(1, 10, 1), Err(EngineError::SessionEvicted(1))));
        assert!(matches!(store.take(9, 10, 1), Err(EngineError::UnknownSession(9))));
        assert!(matches!(
            store.take(3, 11, 1),
            Err(EngineError::PositionMismatch { cached: 10, .. })
        ));
        assert_eq!(store.take(3, 10, 1).unwrap().map(|e| e.tokens), Some(10));
        // A position inside the cache rolls the session back to it (the tensors' cut is
        // checked on real caches by the speculation tests).
        store.put(3, Cache::Own(Vec::new()), 10);
        assert_eq!(store.take(3, 4, 1).unwrap().map(|e| e.tokens), Some(4));
        assert!(matches!(
            store.take(4, 0, 101),
            Err(EngineError::CacheFull { needed: 101, limit: 100 })
        ));
    }

    #[test]
    fn batches_count_whole_while_held_and_detached_rows_let_them_go() {
        let mut store = KvStore::new(CacheLimits::default());
        // Two rows of 3 positions (row 1 has 1 padding position), and another batch of one.
        let batch = Arc::new(BatchCache { layers: Vec::new(), padding: vec![0, 1] });
        let other = Arc::new(BatchCache { layers: Vec::new(), padding: vec![0] });
        store.put(1, Cache::Row { batch: Arc::clone(&batch), row: 0 }, 3);
        store.put(2, Cache::Row { batch: Arc::clone(&batch), row: 1 }, 2);
        store.put(3, Cache::Row { batch: Arc::clone(&other), row: 0 }, 4);
        store.put(4, Cache::Own(Vec::new()), 5);
        assert_eq!(store.usage(), (4, 2 * 3 + 4 + 5));
        // Session 1 closed: its row stays resident, and counted, while session 2 holds the batch.
        store.close(1);
        assert_eq!(store.usage(), (3, 2 * 3 + 4 + 5));
        assert_eq!(store.rows_of(&batch), vec![(2, 1, 2)]);
        // A copy made for a row the session has since left is not taken.
        store.detach(2, (&batch, 1, 3), Ok(Vec::new()));
        assert_eq!(Arc::strong_count(&batch), 2);
        store.detach(2, (&batch, 1, 2), KvEntry::copy_row(&batch, 1, 2));
        assert_eq!(Arc::strong_count(&batch), 1, "no session holds the batch any more");
        assert_eq!(Arc::strong_count(&other), 2, "another batch's row is left alone");
        assert_eq!(store.usage(), (3, 2 + 4 + 5));
        assert!(matches!(
            store.take(2, 2, 1),
            Ok(Some(KvEntry { cache: Cache::Own(_), tokens: 2, .. }))
        ));
        // A row that cannot be copied is evicted, and said so.
        store.detach(3, (&other, 0, 4), Err("no such shape".into()));
        assert!(matches!(store.take(3, 4, 1), Err(EngineError::SessionEvicted(3))));
    }

    #[test]
    fn token_budget_evicts_until_the_new_session_fits() {
        let mut store = KvStore::new(CacheLimits { max_sessions: 10, max_tokens: 30 });
        for session in 1..=3 {
            store.take(session, 0, 10).unwrap();
            store.put(session, Cache::Own(Vec::new()), 10);
        }
        store.take(4, 0, 15).unwrap();
        store.put(4, Cache::Own(Vec::new()), 15);
        assert_eq!(store.usage(), (2, 25));
        assert!(matches!(store.take(1, 10, 1), Err(EngineError::SessionEvicted(1))));
    }
}
