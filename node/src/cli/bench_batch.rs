//! `bench engine --batch N`: N sessions decoding together — one ONNX Runtime call per step
//! through the whole model in one block — against the same N sessions stepped one at a time,
//! in alternating rounds. The greedy ids of both must agree.

use std::path::Path;
use std::time::Instant;

use anyhow::ensure;
use infergrid::engine::{BatchStep, BlockInput, BlockRunner, CacheLimits, Pipeline, Runtime};
use infergrid::generate::argmax;

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
    // Each session its own prompt (ort-baseline's recipe, shifted), so rows differ.
    let prompts: Vec<Vec<i64>> = (0..sessions as i64)
        .map(|s| (0..prompt_len as i64).map(|i| (7 + 31 * i + 13 * s) % vocab).collect())
        .collect();
    let (mut alone, mut together) = (0f64, 0f64);
    let (mut alone_ids, mut together_ids) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("bench: batch round {}/{rounds}", round + 1);
        let (speed, ids) = decode_sessions(block, &prompts, decode, false)?;
        (alone, alone_ids) = (alone.max(speed), ids);
        let (speed, ids) = decode_sessions(block, &prompts, decode, true)?;
        (together, together_ids) = (together.max(speed), ids);
    }
    let same = alone_ids == together_ids;
    println!(
        "batched decoding, {} (one block, {sessions} sessions, {decode} steps, best of {rounds})",
        pipeline.manifest().name
    );
    println!(
        "  {sessions} sessions together {together:.1} tok/s | one at a time {alone:.1} tok/s | ratio {:.2}x | greedy ids {}",
        together / alone,
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
