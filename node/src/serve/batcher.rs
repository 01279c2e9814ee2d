//! Continuous batching (iteration-level scheduling, as Orca and vLLM do): decode steps of all
//! sessions wait in one queue; a worker thread takes everything queued — up to a batch
//! bound — runs it through the blocks of its span in one ONNX Runtime call per block, answers
//! each step, and goes again. Sessions join and leave between iterations simply by sending
//! steps or not; a step that arrives while a batch runs goes in the next one. Prefill steps
//! (many positions) do not come here: they run on their own and interleave with the batches
//! at each block.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use tokio::sync::oneshot;

use crate::engine::{Activation, BatchStep, BlockInput, BlockRunner, EngineError};
use crate::telemetry::NodeMetrics;

/// One decode step waiting for a batch: its session (cache key), position, the blocks it runs
/// (indices into the server's blocks), its input and where its answer goes.
struct Pending {
    session: u64,
    position: usize,
    span: (usize, usize),
    input: BlockInput,
    reply: oneshot::Sender<Result<Activation, EngineError>>,
}

/// The queue of decode steps and the worker batching them.
#[derive(Debug)]
pub struct Batcher {
    queue: Sender<Pending>,
    stats: Arc<BatchStats>,
}

/// How much batching happened: engine calls made and the steps they carried.
#[derive(Debug, Default)]
pub struct BatchStats {
    batches: AtomicU64,
    steps: AtomicU64,
    largest: AtomicU64,
}

impl BatchStats {
    /// (batches run, steps run, most steps in one batch).
    pub fn read(&self) -> (u64, u64, u64) {
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (read(&self.batches), read(&self.steps), read(&self.largest))
    }

    fn count(&self, steps: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.steps.fetch_add(steps as u64, Ordering::Relaxed);
        self.largest.fetch_max(steps as u64, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("session", &self.session).finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the worker over `blocks`, running at most `max_batch` steps per call, each
    /// call's size counted in `metrics`. The worker ends when the batcher is dropped.
    pub fn start(blocks: Vec<Arc<BlockRunner>>, max_batch: usize, metrics: NodeMetrics) -> Self {
        let (queue, steps) = std::sync::mpsc::channel();
        let max_batch = max_batch.max(1);
        let stats = Arc::new(BatchStats::default());
        let counted = stats.clone();
        std::thread::Builder::new()
            .name("decode-batcher".into())
            .spawn(move || work(&blocks, &steps, max_batch, &counted, &metrics))
            .expect("spawning the decode batcher");
        Self { queue, stats }
    }

    /// How much batching happened so far.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Runs one decode step of `session` through `blocks[span.0..=span.1]` in the next batch.
    pub async fn step(
        &self,
        session: u64,
        position: usize,
        span: (usize, usize),
        input: BlockInput,
    ) -> Result<Activation, EngineError> {
        let (reply, answer) = oneshot::channel();
        let stopped =
            || EngineError::Run { block: span.0, reason: "the decode batcher stopped".into() };
        self.queue
            .send(Pending { session, position, span, input, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn work(
    blocks: &[Arc<BlockRunner>],
    steps: &Receiver<Pending>,
    max_batch: usize,
    stats: &BatchStats,
    metrics: &NodeMetrics,
) {
    while let Ok(first) = steps.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match steps.try_recv() {
                Ok(step) => batch.push(step),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // Steps over the same span run together; spans differ only when peers ask for parts.
        let mut by_span: BTreeMap<(usize, usize), Vec<Pending>> = BTreeMap::new();
        for step in batch {
            by_span.entry(step.span).or_default().push(step);
        }
        for ((first, last), group) in by_span {
            stats.count(group.len());
            metrics.batch(group.len());
            // A panic in a batch (a poisoned lock, a malformed graph) fails that batch's steps,
            // not the batcher: every later step still runs.
            // (Its steps' reply channels drop with it: each waiting step gets an error.)
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_group(&blocks[first..=last], group)
            }));
            if outcome.is_err() {
                tracing::error!(
                    "a decode batch over blocks {first}-{last} panicked; its steps failed"
                );
            }
        }
    }
}

/// Runs `group` through `span` block by block; a step that fails at a block is answered with
/// its error and goes no further.
fn run_group(span: &[Arc<BlockRunner>], group: Vec<Pending>) {
    let mut live: Vec<(Pending, BlockInput)> = Vec::with_capacity(group.len());
    for mut step in group {
        let input = std::mem::replace(&mut step.input, BlockInput::Tokens(Vec::new()));
        live.push((step, input));
    }
    for (index, block) in span.iter().enumerate() {
        let (pending, inputs): (Vec<Pending>, Vec<BlockInput>) = live.into_iter().unzip();
        let rows = pending
            .iter()
            .zip(inputs)
            .map(|(p, input)| BatchStep { session: p.session, position: p.position, input })
            .collect();
        let outputs = block.forward_batch(rows);
        live = Vec::with_capacity(pending.len());
        let last = index + 1 == span.len();
        for (step, output) in pending.into_iter().zip(outputs) {
            match output {
                Ok(activation) if last => {
                    let _ = step.reply.send(Ok(activation));
                }
                Ok(activation) => live.push((step, BlockInput::Hidden(activation))),
                Err(e) => {
                    let _ = step.reply.send(Err(e));
                }
            }
        }
    }
}
