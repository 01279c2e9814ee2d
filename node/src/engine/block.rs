use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::batch::{BatchCache, left_pad};
use super::kv::{Cache, CacheLimits, KvEntry, KvStore};
use super::{Activation, BlockInput, EngineError, Runtime};
use crate::model::{BlockSpec, ModelConfig, ModelManifest};

/// One layer block loaded once and kept resident: its ORT session over the block's
/// memory-mapped weights, and the KV caches of the sessions it serves.
///
/// ONNX Runtime maps the page-aligned external-data file itself and packs the matrix
/// weights into its kernels' layout once, releasing the mapped pages it packed; the
/// weights are never read into an intermediate heap copy (resident ≈ 1.1× weight bytes,
/// `infergrid bench engine`).
///
/// This is the unit a node serves; the in-process [`super::Pipeline`] and the network
/// layer both drive it through [`BlockRunner::forward`], which checks every input at the
/// edge because it may come from a peer.
pub struct BlockRunner {
    spec: BlockSpec,
    config: ModelConfig,
    is_decoder: bool,
    is_first: bool,
    is_last: bool,
    /// How the graph is told where each row's cached tokens are (only `past_padding` graphs
    /// are run batched).
    rows: RowInput,
    session: Mutex<Session>,
    kv: Mutex<KvStore>,
    /// Batched calls that ran on the previous call's present as it was (no copy).
    kept_batches: AtomicU64,
}

impl std::fmt::Debug for BlockRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockRunner").field("block", &self.spec.index).finish_non_exhaustive()
    }
}

/// One session's step in a batch ([`BlockRunner::forward_batch`]).
#[derive(Debug)]
pub struct BatchStep {
    pub session: u64,
    pub position: usize,
    pub input: BlockInput,
}

/// Extra inputs an encoder block takes besides ids or hidden states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderMask {
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl BlockRunner {
    /// Loads block `index` of `manifest` on `runtime`'s device.
    pub fn load(
        manifest: &ModelManifest,
        index: usize,
        runtime: &Runtime,
        limits: CacheLimits,
    ) -> Result<Self, EngineError> {
        let spec = manifest
            .block(index)
            .ok_or(EngineError::NoSuchBlock { index, count: manifest.blocks.len() })?
            .clone();
        let graph = manifest.path(&spec.graph);
        let weights = manifest.path(&spec.weights);
        let size = std::fs::metadata(&weights)
            .map_err(|source| EngineError::MapWeights { path: weights.clone(), source })?
            .len();
        if size != spec.weight_bytes {
            return Err(EngineError::WeightsSize {
                path: weights,
                expected: spec.weight_bytes,
                actual: size,
            });
        }
        let mut builder = runtime.session_builder().map_err(|e| EngineError::load(&graph, e))?;
        let session = builder.commit_from_file(&graph).map_err(|e| EngineError::load(&graph, e))?;
        let has = |name: &str| session.inputs().iter().any(|input| input.name() == name);
        let rows = if has(PAST_PADDING) {
            RowInput::Padding
        } else if has(PAST_LENGTHS) {
            RowInput::Lengths
        } else {
            RowInput::None
        };
        Ok(Self {
            rows,
            is_first: index == 0,
            is_last: index + 1 == manifest.blocks.len(),
            is_decoder: manifest.architecture.is_decoder(),
            config: manifest.config.clone(),
            spec,
            session: Mutex::new(session),
            kv: Mutex::new(KvStore::new(limits)),
            kept_batches: AtomicU64::new(0),
        })
    }

    pub fn spec(&self) -> &BlockSpec {
        &self.spec
    }

    /// Whether this is the model's first block (its input is token ids).
    pub fn is_first(&self) -> bool {
        self.is_first
    }

    /// Whether this is the model's last block (its output is the logits or the encoder's
    /// token embeddings, not hidden states for another block).
    pub fn is_last(&self) -> bool {
        self.is_last
    }

    /// The values per position of this block's output: the vocabulary for a decoder's last
    /// block (logits), the hidden size otherwise (hidden states, an encoder's embeddings).
    pub fn output_width(&self) -> usize {
        if self.is_last && self.is_decoder {
            self.config.vocab_size
        } else {
            self.config.hidden_size
        }
    }

    /// The longest sequence the model takes (manifest `config.max_positions`).
    pub fn max_positions(&self) -> usize {
        self.config.max_positions
    }

    /// Whether steps of several sessions can run in one call ([`BlockRunner::forward_batch`]).
    pub fn is_batched(&self) -> bool {
        self.rows == RowInput::Padding
    }

    /// Batched calls so far that ran on the previous batch's present as it was: the same
    /// sessions stepping together, no cache copied.
    pub fn kept_batches(&self) -> u64 {
        self.kept_batches.load(Ordering::Relaxed)
    }

    /// Bytes of weights of this block.
    pub fn weight_bytes(&self) -> usize {
        self.spec.weight_bytes as usize
    }

    /// Sessions cached and KV tokens held.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.kv.lock().expect("kv lock").usage()
    }

    /// KV tokens free before eviction starts.
    pub fn free_cache_tokens(&self) -> usize {
        self.kv.lock().expect("kv lock").free_tokens()
    }

    /// Forgets a session's KV cache.
    pub fn close(&self, session: u64) -> bool {
        self.kv.lock().expect("kv lock").close(session)
    }

    /// Runs one decoder step for `session`: `input` holds the positions
    /// `position..position + len`; the block's KV cache for the session must hold exactly
    /// `position` tokens (0 starts the session). Returns `hidden_out`, or `logits` for the
    /// last block, shaped `[1, len, N]`.
    pub fn forward(
        &self,
        session: u64,
        position: usize,
        input: BlockInput,
    ) -> Result<Activation, EngineError> {
        if !self.is_decoder {
            return Err(EngineError::WrongKind {
                found: "encoder",
                wanted: "use encode() for embeddings",
            });
        }
        let steps = self.check_input(&input)?;
        let needed = position + steps;
        if needed > self.config.max_positions {
            return Err(EngineError::ContextOverflow { needed, limit: self.config.max_positions });
        }
        let block = self.spec.index;
        let cached = self.kv.lock().expect("kv lock").take(session, position, steps)?;
        // A session leaving its batch gets a copy of its row, outside the cache's lock.
        let cached =
            cached.map(KvEntry::into_own).transpose().map_err(|e| EngineError::run(block, e))?;

        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::new();
        inputs.push(self.main_input(input)?);
        // One unpadded row.
        match self.rows {
            RowInput::Padding => inputs.push((PAST_PADDING.into(), int64s(block, &[0])?)),
            RowInput::Lengths => {
                inputs.push((PAST_LENGTHS.into(), int64s(block, &[position as i64])?))
            }
            RowInput::None => {}
        }
        let mut past = cached.map(Vec::into_iter);
        for layer in self.spec.layers() {
            let (key, value) = match past.as_mut().and_then(Iterator::next) {
                Some(kv) => kv,
                None => (self.empty_past()?, self.empty_past()?),
            };
            inputs.push((format!("past_key.{layer}").into(), key.into()));
            inputs.push((format!("past_value.{layer}").into(), value.into()));
        }

        let mut ort_session = self.session.lock().expect("session lock");
        let mut outputs = ort_session.run(inputs).map_err(|e| EngineError::run(block, e))?;
        let (out, present) = self.decoder_outputs(&mut outputs)?;
        drop(outputs);
        drop(ort_session);
        let activation = to_activation(block, &out)?;
        self.kv.lock().expect("kv lock").put(session, Cache::Own(present), needed);
        Ok(activation)
    }

    /// Runs one step of each of several sessions in one call, every step with the same
    /// number of new positions (decode steps: one each). Each row's result is what
    /// [`BlockRunner::forward`] gives for it alone, within float noise (the padded attention
    /// sums the same terms, in a differently blocked order); a row that fails its checks gets
    /// its error and the others run. Graphs that are not batch-capable, a single step, and
    /// steps of another width than the first run one by one.
    pub fn forward_batch(&self, steps: Vec<BatchStep>) -> Vec<Result<Activation, EngineError>> {
        let width = steps.first().map(|s| s.input.len()).unwrap_or(0);
        if !self.is_batched() || steps.len() < 2 || steps.iter().any(|s| s.input.len() != width) {
            return steps
                .into_iter()
                .map(|s| self.forward(s.session, s.position, s.input))
                .collect();
        }
        let mut results: Vec<Option<Result<Activation, EngineError>>> =
            steps.iter().map(|_| None).collect();
        let mut rows = Vec::new();
        // A second step of a session already in the batch runs alone after it, as it would
        // have one after the other.
        let mut later = Vec::new();
        let mut sessions = std::collections::HashSet::new();
        for (index, step) in steps.into_iter().enumerate() {
            if !sessions.insert(step.session) {
                later.push((index, step));
                continue;
            }
            match self.admit_row(&step) {
                Ok(cached) => rows.push((index, step, cached)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        match rows.len() {
            0 => {}
            1 => {
                // Its cache was taken for the batch: run it alone, with the cache put back.
                let (index, step, cached) = rows.pop().expect("one row");
                if let Some(entry) = cached {
                    self.kv.lock().expect("kv lock").put(step.session, entry.cache, entry.tokens);
                }
                results[index] = Some(self.forward(step.session, step.position, step.input));
            }
            _ => {
                let indices: Vec<usize> = rows.iter().map(|(i, _, _)| *i).collect();
                match self.run_rows(rows, width) {
                    Ok(outputs) => {
                        for (index, output) in outputs {
                            results[index] = Some(Ok(output));
                        }
                    }
                    Err(e) => {
                        for index in indices {
                            let reason = match &e {
                                EngineError::Run { reason, .. } => reason.clone(),
                                other => other.to_string(),
                            };
                            results[index] =
                                Some(Err(EngineError::Run { block: self.spec.index, reason }));
                        }
                    }
                }
            }
        }
        for (index, step) in later {
            results[index] = Some(self.forward(step.session, step.position, step.input));
        }
        results.into_iter().map(|r| r.expect("every row answered")).collect()
    }

    /// Checks one row of a batch and takes its cache.
    fn admit_row(&self, step: &BatchStep) -> Result<Option<KvEntry>, EngineError> {
        if !self.is_decoder {
            return Err(EngineError::WrongKind {
                found: "encoder",
                wanted: "use encode() for embeddings",
            });
        }
        let steps = self.check_input(&step.input)?;
        let needed = step.position + steps;
        if needed > self.config.max_positions {
            return Err(EngineError::ContextOverflow { needed, limit: self.config.max_positions });
        }
        self.kv.lock().expect("kv lock").take(step.session, step.position, steps)
    }

    /// The batched call proper: runs the rows on their batch's kept present, or on a new
    /// padded past of their caches, and keeps the call's present as the rows' caches; returns
    /// each row's output `[1, S, W]` with the row's index (`rows[_].0`).
    fn run_rows(
        &self,
        mut rows: Vec<(usize, BatchStep, Option<KvEntry>)>,
        steps: usize,
    ) -> Result<Vec<(usize, Activation)>, EngineError> {
        let block = self.spec.index;
        let batch = rows.len();
        let past = match kept_batch(&mut rows) {
            Some(kept) => {
                self.kept_batches.fetch_add(1, Ordering::Relaxed);
                kept
            }
            None => Arc::new(self.padded_past(&rows)?),
        };
        let padding = past.padding.clone();
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'_>)> = Vec::new();
        inputs.push(self.batch_input(rows.iter().map(|(_, step, _)| &step.input), batch, steps)?);
        let padding_values: Vec<i64> = padding.iter().map(|&z| z as i64).collect();
        inputs.push((PAST_PADDING.into(), int64s(block, &padding_values)?));
        for (layer, (key, value)) in self.spec.layers().zip(&past.layers) {
            inputs.push((format!("past_key.{layer}").into(), key.into()));
            inputs.push((format!("past_value.{layer}").into(), value.into()));
        }
        let mut ort_session = self.session.lock().expect("session lock");
        let mut outputs = ort_session.run(inputs).map_err(|e| EngineError::run(block, e))?;
        let (out, presents) = self.decoder_outputs(&mut outputs)?;
        drop(outputs);
        drop(ort_session);
        let out = to_activation(block, &out)?;
        let width = match out.shape() {
            [b, s, w] if *b == batch && *s == steps => *w,
            shape => {
                let main = self.main_output();
                let reason =
                    format!("graph returned {main} {shape:?} for a batch of {batch} × {steps}");
                return Err(EngineError::run(block, reason));
            }
        };
        // A graph that returned presents of another shape fails the batch, not later steps.
        let (heads, dim) = (self.config.num_kv_heads, self.config.head_dim);
        let total = padding[0] + rows[0].1.position + steps;
        let expected = [batch, heads, total, dim].map(|d| d as i64);
        for (key, value) in &presents {
            for v in [key, value] {
                let (shape, _) =
                    v.try_extract_tensor::<f32>().map_err(|e| EngineError::run(block, e))?;
                if shape[..] != expected {
                    let reason =
                        format!("graph returned a present cache {shape:?}, not {expected:?}");
                    return Err(EngineError::run(block, reason));
                }
            }
        }
        let kept = Arc::new(BatchCache { layers: presents, padding });
        let mut results = Vec::with_capacity(batch);
        let mut grown = Vec::with_capacity(batch);
        for (b, (index, step, _)) in rows.iter().enumerate() {
            let row = out.data()[b * steps * width..(b + 1) * steps * width].to_vec();
            let output = Activation::new(vec![1, steps, width], row)
                .map_err(|e| EngineError::run(block, e))?;
            results.push((*index, output));
            let entry = Cache::Row { batch: Arc::clone(&kept), row: b };
            grown.push((step.session, entry, step.position + steps));
        }
        let left = batches_left(rows);
        drop(past);
        let stragglers = {
            let mut store = self.kv.lock().expect("kv lock");
            for (session, cache, tokens) in grown {
                store.put(session, cache, tokens);
            }
            left.into_iter()
                .filter(|batch| Arc::strong_count(batch) > 1)
                .map(|batch| (store.rows_of(&batch), batch))
                .collect::<Vec<_>>()
        };
        for (rows, batch) in stragglers {
            self.detach(&batch, rows);
        }
        Ok(results)
    }

    /// Gives the sessions left behind by `batch` (`(session, row, tokens)` of each) copies
    /// of their rows, so that the batch's tensors are freed: a session that is not in the
    /// batch which replaced it (it paused) would keep all its rows resident, and counted
    /// against the cache's bound, for its own. Copied outside the cache's lock; a session
    /// that stepped meanwhile keeps its new cache.
    fn detach(&self, batch: &Arc<BatchCache>, rows: Vec<(u64, usize, usize)>) {
        for (session, row, tokens) in rows {
            let own = KvEntry::copy_row(batch, row, tokens);
            self.kv.lock().expect("kv lock").detach(session, (batch, row, tokens), own);
        }
    }

    /// The name of a decoder block's main output.
    fn main_output(&self) -> &'static str {
        if self.is_last { "logits" } else { "hidden_out" }
    }

    /// A decoder call's main output and its `(present_key, present_value)` per layer.
    fn decoder_outputs(
        &self,
        outputs: &mut ort::session::SessionOutputs<'_>,
    ) -> Result<(DynValue, Vec<(DynValue, DynValue)>), EngineError> {
        let block = self.spec.index;
        let mut present = Vec::with_capacity(self.spec.layers().count());
        for layer in self.spec.layers() {
            let key = outputs.remove(format!("present_key.{layer}"));
            let value = outputs.remove(format!("present_value.{layer}"));
            let (Some(key), Some(value)) = (key, value) else {
                let reason = format!("graph returned no present cache for layer {layer}");
                return Err(EngineError::run(block, reason));
            };
            present.push((key, value));
        }
        let main = self.main_output();
        let out = outputs
            .remove(main)
            .ok_or_else(|| EngineError::run(block, format!("graph returned no {main}")))?;
        Ok((out, present))
    }

    /// A new left-padded past for `rows` (`[B, KV, P, D]` per layer, P the most tokens any row
    /// has cached) copied from their caches, and each row's padding.
    fn padded_past(
        &self,
        rows: &[(usize, BatchStep, Option<KvEntry>)],
    ) -> Result<BatchCache, EngineError> {
        let block = self.spec.index;
        let (batch, heads, dim) = (rows.len(), self.config.num_kv_heads, self.config.head_dim);
        let padded = rows.iter().map(|(_, step, _)| step.position).max().unwrap_or(0);
        let padding = rows.iter().map(|(_, step, _)| padded - step.position).collect();
        let layer_past = |j: usize, value: bool| -> Result<DynValue, EngineError> {
            let spans = rows
                .iter()
                .map(|(_, _, cached)| cached.as_ref().map(|entry| entry.span(j, value)).transpose())
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| EngineError::run(block, e))?;
            let past = left_pad(&spans, heads, padded, dim);
            Tensor::from_array(([batch, heads, padded, dim], past))
                .map(|t| t.into_dyn())
                .map_err(|e| EngineError::run(block, e))
        };
        let layers = (0..self.spec.layers().count())
            .map(|j| Ok((layer_past(j, false)?, layer_past(j, true)?)))
            .collect::<Result<_, EngineError>>()?;
        Ok(BatchCache { layers, padding })
    }

    /// The rows' token ids `[B, S]` or hidden states `[B, S, H]` as the block's main input.
    fn batch_input<'a>(
        &self,
        inputs: impl Iterator<Item = &'a BlockInput>,
        batch: usize,
        steps: usize,
    ) -> Result<(Cow<'static, str>, SessionInputValue<'static>), EngineError> {
        let block = self.spec.index;
        let (mut ids, mut hidden) = (Vec::new(), Vec::new());
        for input in inputs {
            match input {
                BlockInput::Tokens(row) => ids.extend_from_slice(row),
                BlockInput::Hidden(a) => hidden.extend_from_slice(a.data()),
            }
        }
        let value: SessionInputValue<'static> = if self.is_first {
            Tensor::from_array(([batch, steps], ids))
                .map_err(|e| EngineError::run(block, e))?
                .into()
        } else {
            Tensor::from_array(([batch, steps, self.config.hidden_size], hidden))
                .map_err(|e| EngineError::run(block, e))?
                .into()
        };
        Ok((if self.is_first { "input_ids" } else { "hidden_in" }.into(), value))
    }

    /// Runs an encoder block (stateless). Returns `hidden_out`, or `token_embeddings` for
    /// the last block, shaped `[1, S, hidden]`.
    pub fn encode(&self, input: BlockInput, mask: &EncoderMask) -> Result<Activation, EngineError> {
        if self.is_decoder {
            return Err(EngineError::WrongKind {
                found: "decoder",
                wanted: "use forward() to generate",
            });
        }
        let steps = self.check_input(&input)?;
        if steps > self.config.max_positions {
            return Err(EngineError::ContextOverflow {
                needed: steps,
                limit: self.config.max_positions,
            });
        }
        let block = self.spec.index;
        if mask.attention_mask.len() != steps
            || (self.is_first && mask.token_type_ids.len() != steps)
        {
            return Err(EngineError::input(
                block,
                "attention_mask/token_type_ids length differs from the input",
            ));
        }
        let mut inputs = vec![self.main_input(input)?];
        inputs.push(("attention_mask".into(), int_tensor(block, &mask.attention_mask)?));
        if self.is_first {
            inputs.push(("token_type_ids".into(), int_tensor(block, &mask.token_type_ids)?));
        }
        let mut ort_session = self.session.lock().expect("session lock");
        let mut outputs = ort_session.run(inputs).map_err(|e| EngineError::run(block, e))?;
        let main = if self.is_last { "token_embeddings" } else { "hidden_out" };
        let out = outputs
            .remove(main)
            .ok_or_else(|| EngineError::run(block, format!("graph returned no {main}")))?;
        to_activation(block, &out)
    }

    /// Checks that `input` is what this block takes (ids for the first block, `[1, S, hidden]`
    /// for the others) with ids inside the vocabulary; returns S.
    fn check_input(&self, input: &BlockInput) -> Result<usize, EngineError> {
        let block = self.spec.index;
        match (self.is_first, input) {
            (true, BlockInput::Tokens(ids)) => {
                let vocab = self.config.vocab_size as i64;
                if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= vocab) {
                    return Err(EngineError::input(
                        block,
                        format!("token id {bad} is outside the vocabulary of {vocab}"),
                    ));
                }
            }
            (false, BlockInput::Hidden(a)) => {
                let shape = a.shape();
                if shape.len() != 3 || shape[0] != 1 || shape[2] != self.config.hidden_size {
                    return Err(EngineError::input(
                        block,
                        format!(
                            "hidden states must be [1, S, {}], got {shape:?}",
                            self.config.hidden_size
                        ),
                    ));
                }
            }
            (true, _) => return Err(EngineError::input(block, "the first block takes token ids")),
            (false, _) => {
                return Err(EngineError::input(
                    block,
                    "this block takes hidden states, not token ids",
                ));
            }
        }
        match input.len() {
            0 => Err(EngineError::input(block, "empty input")),
            n => Ok(n),
        }
    }

    fn main_input(
        &self,
        input: BlockInput,
    ) -> Result<(Cow<'static, str>, SessionInputValue<'static>), EngineError> {
        let block = self.spec.index;
        Ok(match input {
            BlockInput::Tokens(ids) => ("input_ids".into(), int_tensor(block, &ids)?),
            BlockInput::Hidden(activation) => {
                let (shape, data) = activation.into_parts();
                let tensor =
                    Tensor::from_array((shape, data)).map_err(|e| EngineError::run(block, e))?;
                ("hidden_in".into(), tensor.into())
            }
        })
    }

    fn empty_past(&self) -> Result<DynValue, EngineError> {
        let shape = [1, self.config.num_kv_heads, 0, self.config.head_dim];
        Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
            .map(|t| t.into_dyn())
            .map_err(|e| EngineError::run(self.spec.index, e))
    }
}

/// How a decoder graph is told where each row's cached tokens are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowInput {
    /// `past_padding`: the padding positions in front of each row's tokens (batch-capable).
    Padding,
    /// `past_lengths`: each row's tokens, at the start of its axis (graphs imported
    /// 2026-12-01 to 12-02). Run one session per call, where the two agree.
    Lengths,
    /// No such input: graphs from before batching, one session per call.
    None,
}

const PAST_PADDING: &str = "past_padding";
const PAST_LENGTHS: &str = "past_lengths";

/// The batches the rows' caches were rows of, each once.
fn batches_left(rows: Vec<(usize, BatchStep, Option<KvEntry>)>) -> Vec<Arc<BatchCache>> {
    let mut left: Vec<Arc<BatchCache>> = Vec::new();
    for (_, _, cached) in rows {
        if let Some(KvEntry { cache: Cache::Row { batch, .. }, .. }) = cached
            && !left.iter().any(|seen| Arc::ptr_eq(seen, &batch))
        {
            left.push(batch);
        }
    }
    left
}

/// The batch whose present every row's cache is a row of, when `rows` are exactly that
/// batch's rows (sorted here into its row order): its present tensors are this step's past as
/// they are. `None` for any other set of rows.
fn kept_batch(rows: &mut [(usize, BatchStep, Option<KvEntry>)]) -> Option<Arc<BatchCache>> {
    let batch_row = |cached: &Option<KvEntry>| match cached.as_ref().map(|entry| &entry.cache) {
        Some(Cache::Row { batch, row }) => Some((Arc::clone(batch), *row)),
        _ => None,
    };
    let (first, _) = batch_row(&rows.first()?.2)?;
    if first.padding.len() != rows.len() {
        return None;
    }
    let mut seen = vec![false; rows.len()];
    for (_, _, cached) in rows.iter() {
        let (batch, row) = batch_row(cached)?;
        if !Arc::ptr_eq(&batch, &first) || std::mem::replace(&mut seen[row], true) {
            return None;
        }
    }
    rows.sort_by_key(|(_, _, cached)| batch_row(cached).map(|(_, row)| row));
    Some(first)
}

fn int64s(block: usize, values: &[i64]) -> Result<SessionInputValue<'static>, EngineError> {
    Tensor::from_array(([values.len()], values.to_vec()))
        .map(Into::into)
        .map_err(|e| EngineError::run(block, e))
}

fn int_tensor(block: usize, values: &[i64]) -> Result<SessionInputValue<'static>, EngineError> {
    Tensor::from_array(([1, values.len()], values.to_vec()))
        .map(Into::into)
        .map_err(|e| EngineError::run(block, e))
}

fn to_activation(block: usize, value: &DynValue) -> Result<Activation, EngineError> {
    let (shape, data) =
        value.try_extract_tensor::<f32>().map_err(|e| EngineError::run(block, e))?;
    let shape = shape.iter().map(|&d| d as usize).collect();
    Activation::new(shape, data.to_vec()).map_err(|e| EngineError::run(block, e))
}
