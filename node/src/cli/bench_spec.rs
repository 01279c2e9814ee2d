//! `infergrid bench spec`: speculative decoding over emulated wide-area hops. For each hop
//! delay (every node holds each answer that long: `node --testing-delay-ms`), a devnet of
//! one node process per block and a gateway serves the model twice, plain and with
//! `--speculate K`; the same greedy completions run through both, and the tokens/s of each,
//! their ratio, the drafts' acceptance rate and the mean drafts per verify step are printed.
//! Drafts come from prompt lookup, or a quantized draft model run by the gateway or (with
//! `--draft-node`) by a draft node, a hop like the others.
//! Both runs give the same tokens (checked), so the ratio is the speedup alone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use infergrid::model::ModelManifest;
use serde_json::{Value, json};

use super::bench_http::{post, start_devnet};

/// What users ask: text the answers quote (where prompt lookup drafts well), code that
/// repeats its own shape, and open prose (where it rarely does).
const PROMPTS: [&str; 4] = [
    "Repeat this sentence three times: the early bird catches the worm.",
    "def add(a, b):\n    return a + b\n\ndef subtract(a, b):\n    return a - b\n\ndef multiply(a, b):\n",
    "List the days of the week, one per line: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.\n1.",
    "Tell me about the history of the printing press.",
];

#[derive(Debug, Args)]
pub struct SpecBench {
    /// Where the benchmark models are generated and imported (cached).
    #[arg(long, default_value = "target/bench-models")]
    work: PathBuf,
    /// Serve this GGUF file's model (e.g. SmolLM2-135M-Instruct, which scripts/setup
    /// installs) in 3 blocks instead of the random 3-layer llama.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Milliseconds every node holds each answer, one devnet per value.
    #[arg(long, value_delimiter = ',', default_value = "0,5,20")]
    hop_delays_ms: Vec<u64>,
    /// Drafts verified per decode step at most (`gateway --speculate`).
    #[arg(long, default_value_t = 4)]
    speculate: u32,
    /// Tokens per completion.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Draft with a quantized copy of the model (imported whole, once) that the gateway runs,
    /// instead of prompt lookup.
    #[arg(long, value_enum)]
    draft: Option<super::model::Quantize>,
    /// With --draft: the draft model runs on a draft node (one more node process, holding its
    /// answers as long as the others, paid per token) instead of in the gateway.
    #[arg(long, requires = "draft")]
    draft_node: bool,
}

/// One configuration's run over every prompt.
#[derive(Debug, Default)]
struct Run {
    tokens: u64,
    seconds: f64,
    drafted: u64,
    accepted: u64,
    verify_steps: u64,
    /// Each completion's token ids, to check both runs gave the same.
    outputs: Vec<Value>,
}

pub fn run(args: SpecBench, root: &Path) -> anyhow::Result<()> {
    let (label, model) = super::bench::gguf_or_fixture(&args.work, root, args.gguf.as_deref())?;
    let manifest = ModelManifest::load(&model)?;
    let blocks = manifest.blocks.len();
    let draft = args
        .draft
        .map(|quantize| {
            super::bench::quantized_draft(&args.work, root, args.gguf.as_deref(), quantize)
        })
        .transpose()?;
    let drafts = match (args.draft, args.draft_node) {
        (Some(quantize), true) => {
            format!("drafts from a node serving the {} draft model", quantize.importer_name())
        }
        (Some(quantize), false) => {
            format!("drafts from the {} draft model in the gateway", quantize.importer_name())
        }
        (None, _) => "prompt-lookup drafts".to_owned(),
    };
    let mut rows = Vec::new();
    for &delay in &args.hop_delays_ms {
        let plain = completions(&args, &model, &manifest.name, blocks, delay, None)?;
        let speculating = Some((args.speculate, draft.as_deref()));
        let sped = completions(&args, &model, &manifest.name, blocks, delay, speculating)?;
        ensure!(
            plain.outputs == sped.outputs,
            "at {delay} ms per hop, speculation changed the output"
        );
        rows.push((delay, plain, sped));
    }
    println!(
        "bench spec: {label}, {blocks} node processes and a gateway on this machine, greedy, \
         {} completions of {} tokens, {drafts} (up to {})",
        PROMPTS.len(),
        args.max_tokens,
        args.speculate
    );
    println!(
        "  {:>9} {:>12} {:>12} {:>8} {:>10} {:>7}",
        "ms/hop", "plain tok/s", "spec tok/s", "spec ÷", "accepted", "mean k"
    );
    for (delay, plain, sped) in rows {
        let (plain_tps, sped_tps) =
            (plain.tokens as f64 / plain.seconds, sped.tokens as f64 / sped.seconds);
        println!(
            "  {delay:>9} {plain_tps:>12.1} {sped_tps:>12.1} {:>8.2} {:>9.0}% {:>7.2}",
            sped_tps / plain_tps,
            100.0 * sped.accepted as f64 / sped.drafted.max(1) as f64,
            sped.drafted as f64 / sped.verify_steps.max(1) as f64,
        );
    }
    Ok(())
}

/// Every prompt through a fresh devnet whose nodes hold answers `delay` ms and whose gateway,
/// when `speculating`, verifies up to that many drafts a step (from the draft model given, or
/// prompt lookup), after one warm-up completion (it opens the payment channels).
fn completions(
    args: &SpecBench,
    model: &Path,
    name: &str,
    nodes: usize,
    delay: u64,
    speculating: Option<(u32, Option<&Path>)>,
) -> anyhow::Result<Run> {
    let speculate = speculating.map_or(0, |(k, _)| k);
    let mut extra = vec!["--testing-delay-ms".to_owned(), delay.to_string()];
    extra.extend(["--speculate".to_owned(), speculate.to_string()]);
    if let Some((_, Some(draft))) = speculating {
        extra.extend(["--draft-model".to_owned(), draft.display().to_string()]);
        extra.extend(args.draft_node.then(|| "--draft-node".to_owned()));
    }
    let (devnet, address) = start_devnet(model, nodes, &extra, &args.work)?;
    let body = |prompt: &str| json!({"model": name, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0});
    post(&address, "/v1/completions", &body("warm up"))?;
    let mut run = Run::default();
    for prompt in PROMPTS {
        let started = Instant::now();
        let answer = post(&address, "/v1/completions", &body(prompt))?;
        run.seconds += started.elapsed().as_secs_f64();
        let usage = &answer["usage"];
        run.tokens += usage["completion_tokens"]
            .as_u64()
            .with_context(|| format!("unexpected completion: {answer}"))?;
        let speculation = &usage["speculation"];
        run.drafted += speculation["drafted_tokens"].as_u64().unwrap_or(0);
        run.accepted += speculation["accepted_tokens"].as_u64().unwrap_or(0);
        run.verify_steps += speculation["verify_steps"].as_u64().unwrap_or(0);
        run.outputs.push(answer["choices"][0]["token_ids"].clone());
    }
    eprintln!(
        "bench spec: {delay} ms/hop, speculate {speculate}: {} tokens in {:.1} s",
        run.tokens, run.seconds
    );
    drop(devnet);
    Ok(run)
}
