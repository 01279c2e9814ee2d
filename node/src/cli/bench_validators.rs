//! `infergrid bench validators`: what validation costs the users. Greedy completions are
//! streamed back to back through a devnet's gateway with no validator, then with a validator
//! challenging a given share of the traffic (its challenge sessions paid and routed like the
//! users' requests, its expected answers computed on the same machine), in alternating
//! rounds; the user tokens/s of both are printed with their ratio.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use infergrid::model::ModelManifest;
use serde_json::json;

use super::bench_http::{post, start_devnet};

/// The users' prompt.
const PROMPT: &str = "Tell me about the history of the printing press";

#[derive(Debug, Args)]
pub struct ValidatorsBench {
    /// Where the benchmark models are generated and imported (cached).
    #[arg(long, default_value = "target/bench-models")]
    work: PathBuf,
    /// Serve this GGUF file's model (e.g. SmolLM2-135M-Instruct) in 3 blocks instead of the
    /// random 3-layer llama.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Share of the traffic (in tokens through the route) the validator's challenges make up.
    #[arg(long, default_value_t = 0.02, value_parser = super::swarm::parse_fraction)]
    challenge_share: f64,
    /// Seconds per validation epoch.
    #[arg(long, default_value_t = 30)]
    epoch_secs: u64,
    /// Seconds of user traffic timed per round.
    #[arg(long, default_value_t = 60)]
    round_secs: u64,
    /// Rounds of each kind, alternating (the best of each is compared).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Tokens per user completion.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
}

pub fn run(args: ValidatorsBench, root: &Path) -> anyhow::Result<()> {
    let (label, model) = super::bench::gguf_or_fixture(&args.work, root, args.gguf.as_deref())?;
    let manifest = ModelManifest::load(&model)?;
    let blocks = manifest.blocks.len();
    // A challenge session's tokens through the route: its prompt (the corpus through the
    // chat template) and its decode steps.
    let tokenizer = super::infer::load_tokenizer(&model, &manifest.tokenizer.file)?;
    let prompts = super::validator::corpus(&manifest, &tokenizer)?;
    let prompt_tokens = prompts.iter().map(Vec::len).sum::<usize>() as f64 / prompts.len() as f64;
    let decode_steps = 7.0;
    let session_tokens = prompt_tokens + decode_steps;

    let (mut without, mut with) = (0f64, 0f64);
    let mut sessions_per_epoch = 1usize;
    for round in 0..args.rounds {
        let tps = user_tokens_per_second(&args, &model, &manifest.name, blocks, &[])?;
        eprintln!("bench validators: round {round}: no validator: {tps:.1} user tokens/s");
        without = without.max(tps);
        // Challenge sessions per epoch for at least the asked share of this throughput.
        let wanted = args.challenge_share * tps * args.epoch_secs as f64 / session_tokens;
        sessions_per_epoch = (wanted.ceil() as usize).max(1);
        let validators = [
            "--validators".to_owned(),
            "1".to_owned(),
            "--epoch-secs".to_owned(),
            args.epoch_secs.to_string(),
            "--challenges-per-epoch".to_owned(),
            sessions_per_epoch.to_string(),
        ];
        let tps = user_tokens_per_second(&args, &model, &manifest.name, blocks, &validators)?;
        eprintln!(
            "bench validators: round {round}: a validator sending {sessions_per_epoch} sessions per \
             {} s epoch: {tps:.1} user tokens/s",
            args.epoch_secs
        );
        with = with.max(tps);
    }
    let share = sessions_per_epoch as f64 * session_tokens / args.epoch_secs as f64 / without;
    println!("bench validators: {label}, {blocks} node processes and a gateway on this machine");
    println!(
        "  challenges              {sessions_per_epoch} sessions of ~{session_tokens:.0} tokens per {} s epoch = {:.1}% of the traffic",
        args.epoch_secs,
        share * 100.0
    );
    println!("  user tokens/s, no validator       {without:.1}");
    println!("  user tokens/s, validator running  {with:.1}");
    println!("  with ÷ without                    {:.3}", with / without);
    Ok(())
}

/// Best-effort user throughput: a fresh devnet (with `extra` arguments), one warm-up
/// completion (it opens the payment channels), then completions back to back for
/// `round_secs` — after one epoch when validators run, so that they are challenging.
fn user_tokens_per_second(
    args: &ValidatorsBench,
    model: &Path,
    name: &str,
    nodes: usize,
    extra: &[String],
) -> anyhow::Result<f64> {
    let (devnet, address) = start_devnet(model, nodes, extra, &args.work)?;
    let body = json!({
        "model": name, "prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0,
    });
    post(&address, "/v1/completions", &body)?;
    if !extra.is_empty() {
        // Epoch 0 has no committed challenge set: challenges start with epoch 1.
        std::thread::sleep(Duration::from_secs(args.epoch_secs + 2));
    }
    let started = Instant::now();
    let mut tokens = 0u64;
    while started.elapsed() < Duration::from_secs(args.round_secs) {
        let answer = post(&address, "/v1/completions", &body)?;
        tokens += answer["usage"]["completion_tokens"]
            .as_u64()
            .with_context(|| format!("unexpected completion: {answer}"))?;
    }
    let tps = tokens as f64 / started.elapsed().as_secs_f64();
    drop(devnet);
    Ok(tps)
}
