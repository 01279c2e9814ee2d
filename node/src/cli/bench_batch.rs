//! `bench engine --batch N`: N sessions decoding together — one ONNX Runtime call per step
//! through the whole model in one block — against the same N sessions stepped one at a time,
//! in alternating rounds. The greedy ids of both must agree.

use std::path::Path;
use std::time::Instant;

use anyhow::ensure;
use infergrid::engine::{BatchStep, BlockInput, BlockRunner, CacheLimits, Pipeline, Runtime};
use infergrid::generate::argmax;

use super::bench_load::median;

pub fn run(
    model: &Path,
    runtime: &Runtime,
    sessions: usize,
    decode: usize,
    prompt_len: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let limits = CacheLimits { max_sessions: 4 * sessions, ..CacheLimits::default() };
    let pipeline = Pipeline::load(model, runtime, limits)?;
    let [block] = pipeline.blocks() else {
        anyhow::bail!(
            "--batch times the whole model in one block; {} has several",
            model.display()
        );
    };
    ensure!(
        block.is_batched(),
        "{} predates batch-capable graphs: delete it to re-import",
        model.display()
    );
    let vocab = pipeline.manifest().config.vocab_size as i64;
    // Each session its own prompt (ort-baseline's recipe, shifted), so rows differ, and of its
    // own length (from --prompt-len down to half of it), so the batch carries padding as a
    // real one does.
    let prompts: Vec<Vec<i64>> = (0..sessions)
        .map(|s| {
            let len = prompt_len - prompt_len * s / (2 * sessions);
            (0..len as i64).map(|i| (7 + 31 * i + 13 * s as i64) % vocab).collect()
        })
        .collect();
    // Each round times both sides back to back, the first side alternating, and gives one
    // ratio: this machine's speed drifts by tens of percent over a minute, which a ratio of
    // best-of speeds taken at different times would carry, and a ratio within a round cancels.
    ensure!(rounds > 0, "--rounds must be at least 1");
    let (mut alone, mut together, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut alone_ids, mut together_ids) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("bench: batch round {}/{rounds}", round + 1);
        for batched in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let (speed, ids) = decode_sessions(block, &prompts, decode, batched)?;
            if batched {
                together.push(speed);
                together_ids = ids;
            } else {
                alone.push(speed);
                alone_ids = ids;
            }
        }
        ratios.push(together[round] / alone[round]);
    }
    let same = alone_ids == together_ids;
    println!(
        "batched decoding, {} (one block, {sessions} sessions, {decode} steps, {rounds} rounds)",
        pipeline.manifest().name
    );
    println!(
        "  {sessions} sessions together {:.1} tok/s | one at a time {:.1} tok/s | ratio {:.2}x (median of the rounds' ratios, {:.2}-{:.2}) | greedy ids {}",
        median(together.clone()),
        median(alone.clone()),
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
        if same { "identical" } else { "DIFFER" }
    );
    ensure!(same, "batched and one-at-a-time greedy ids differ");
    Ok(())
}

/// Prefills every session, then times `decode` greedy steps of all of them, batched or one
/// at a time; returns tokens/s over all sessions and every session's ids.
fn decode_sessions(
    block: &BlockRunner,
    prompts: &[Vec<i64>],
    decode: usize,
    batched: bool,
) -> anyhow::Result<(f64, Vec<Vec<i64>>)> {
    let base = if batched { 1_000 } else { 2_000 };
    let mut ids: Vec<Vec<i64>> = Vec::new();
    for (s, prompt) in prompts.iter().enumerate() {
        let logits = block.forward(base + s as u64, 0, BlockInput::Tokens(prompt.clone()))?;
        ids.push(vec![i64::from(argmax(logits.last_row()))]);
    }
    let started = Instant::now();
    for step in 0..decode {
        let position = |s: usize| prompts[s].len() + step;
        let outputs = if batched {
            let steps = (0..prompts.len())
                .map(|s| BatchStep {
                    session: base + s as u64,
                    position: position(s),
                    input: BlockInput::Tokens(vec![*ids[s].last().expect("prefilled")]),
                })
                .collect();
            block.forward_batch(steps).into_iter().collect::<Result<Vec<_>, _>>()?
        } else {
            (0..prompts.len())
                .map(|s| {
                    let token = *ids[s].last().expect("prefilled");
                    block.forward(base + s as u64, position(s), BlockInput::Tokens(vec![token]))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        for (s, logits) in outputs.iter().enumerate() {
            ids[s].push(i64::from(argmax(logits.last_row())));
        }
    }
    let speed = (prompts.len() * decode) as f64 / started.elapsed().as_secs_f64();
    for s in 0..prompts.len() {
        block.close(base + s as u64);
    }
    Ok((speed, ids))
}
