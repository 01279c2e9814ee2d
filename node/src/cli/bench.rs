use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid::tools;
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decode and prefill speed of a 3-block split model against one-process onnxruntime
    /// (Python) on the unsplit graph, block load time, and resident memory against weight bytes.
    Engine(EngineBench),
    /// Added latency per network hop against a raw TCP echo, and decode speed of a pipeline
    /// of 3 nodes over libp2p against the in-process split model.
    Swarm(super::bench_swarm::SwarmBench),
    /// Calibrates the validators' judge: the largest error of honest answers from node
    /// engines at --threads 1 and 2 and several graph optimization levels, and the smallest
    /// error of perturbed and lazy answers, both as fractions of the tolerance.
    Judge(super::bench_judge::JudgeBench),
    /// User tokens/s through a devnet's gateway with a validator challenging a share of the
    /// traffic (default 2%) against none, in alternating rounds.
    Validators(super::bench_validators::ValidatorsBench),
    /// Speculative decoding over emulated wide-area hops (0, 5 and 20 ms per hop by
    /// default): tokens/s with and without prompt-lookup drafts, their ratio, acceptance
    /// rate and mean drafts per verify step.
    Spec(super::bench_spec::SpecBench),
    /// Weights through the swarm: a model's files fetched over libp2p from two seeders
    /// (pieces checked) against a local copy of the same bytes, and each seeder's share.
    Fetch(super::bench_fetch::FetchBench),
    /// Internal: one node configuration of `bench judge`, run as a child process.
    #[command(hide = true)]
    JudgeWorker(super::bench_judge::JudgeWorker),
}

#[derive(Debug, Args)]
pub struct EngineBench {
    /// Where the generated benchmark model is cached.
    #[arg(long, default_value = "target/bench-models")]
    work: PathBuf,
    /// Benchmark this llama.cpp GGUF file, imported as float32, instead of a random 126 MB
    /// llama (e.g. the SmolLM2-135M-Instruct file scripts/setup installs; see README).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Also serve the split model from a devnet (one node process per block and a paying
    /// gateway) and time a greedy completion through its OpenAI HTTP API against this
    /// engine in-process.
    #[arg(long)]
    devnet: bool,
    /// Tokens of the greedy completion timed with --devnet.
    #[arg(long, default_value_t = 64)]
    http_tokens: usize,
    /// Prompt tokens for the prefill (with --batch: the longest prompt; the others are shorter, down to half).
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Decode steps timed.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Intra-op threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measurement rounds; the best of each side is reported (with --batch: the median of
    /// the rounds' ratios, each round timing both sides back to back).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Instead: this many sessions decoding together (one call per step through the model
    /// in one block) against the same sessions one at a time.
    #[arg(long)]
    batch: Option<usize>,
}

/// A llama with ~126 MB of float32 weights (31.4 M parameters).
const BENCH_MODEL: &[&str] = &[
    "--arch",
    "llama",
    "--hidden",
    "512",
    "--layers",
    "8",
    "--heads",
    "8",
    "--kv-heads",
    "4",
    "--intermediate",
    "1376",
    "--vocab",
    "8000",
    "--max-pos",
    "2048",
    "--seed",
    "11",
];

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(args) => tokio::task::block_in_place(|| engine(args)),
        BenchCommand::Swarm(args) => super::bench_swarm::run(args).await,
        BenchCommand::Judge(args) => {
            tokio::task::block_in_place(|| super::bench_judge::run(args, &repo_root()?))
        }
        BenchCommand::Validators(args) => {
            tokio::task::block_in_place(|| super::bench_validators::run(args, &repo_root()?))
        }
        BenchCommand::Spec(args) => {
            tokio::task::block_in_place(|| super::bench_spec::run(args, &repo_root()?))
        }
        BenchCommand::Fetch(args) => {
            tokio::task::block_in_place(|| super::bench_fetch::run(args, &repo_root()?))
        }
        BenchCommand::JudgeWorker(args) => {
            tokio::task::block_in_place(|| super::bench_judge::worker(args))
        }
    }
}

/// The repository, whose scripts/ generate and import the benchmark models.
fn repo_root() -> anyhow::Result<PathBuf> {
    tools::repo_root()
        .context("the benchmark uses scripts/: run it inside the repository after scripts/setup")
}

/// The benchmark model imported whole and as 3 blocks (cached in `--work`); its label.
fn bench_models(args: &EngineBench, root: &Path) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let (source, label) = match &args.gguf {
        Some(gguf) => (vec!["--gguf".to_owned(), path(gguf)], gguf_label(gguf)?),
        None => {
            let hf = args.work.join("llama-126mb-hf");
            if !hf.join("config.json").is_file() {
                eprintln!("bench: generating the benchmark checkpoint in {}", hf.display());
                let out = ["--out".into(), path(&hf)];
                script(root, "make-fixture", BENCH_MODEL.iter().map(|s| s.to_string()).chain(out))?;
            }
            (vec!["--hf".to_owned(), path(&hf)], "llama-126mb".to_owned())
        }
    };
    let whole = import_once(root, &source, &args.work.join(format!("{label}-1block")), 1)?;
    let split = import_once(root, &source, &args.work.join(format!("{label}-3blocks")), 3)?;
    Ok((whole, split, label))
}

/// A GGUF file imported in `blocks` blocks into `work` (cached); its label and folder.
pub fn imported(
    work: &Path,
    root: &Path,
    gguf: &Path,
    blocks: usize,
) -> anyhow::Result<(String, PathBuf)> {
    let label = gguf_label(gguf)?;
    let dir = work.join(format!("{label}-{blocks}block{}", if blocks == 1 { "" } else { "s" }));
    let source = ["--gguf".to_owned(), path(gguf)];
    Ok((label, import_once(root, &source, &dir, blocks)?))
}

/// `gguf` imported in 3 blocks, or else the random 3-layer llama of `bench judge`: the model
/// of a benchmark that runs a 3-node devnet.
pub fn gguf_or_fixture(
    work: &Path,
    root: &Path,
    gguf: Option<&Path>,
) -> anyhow::Result<(String, PathBuf)> {
    match gguf {
        Some(gguf) => imported(work, root, gguf, 3),
        None => super::bench_judge::fixture(work, root),
    }
}

/// The model of [`gguf_or_fixture`] imported whole (one block) with its layers' matrices
/// quantized, once: a draft model for it.
pub fn quantized_draft(
    work: &Path,
    root: &Path,
    gguf: Option<&Path>,
    quantize: super::model::Quantize,
) -> anyhow::Result<PathBuf> {
    let bits = quantize.importer_name();
    let (label, source) = match gguf {
        Some(gguf) => (gguf_label(gguf)?, ["--gguf".to_owned(), path(gguf)]),
        None => {
            super::bench_judge::fixture(work, root)?;
            ("judge-llama".to_owned(), ["--hf".to_owned(), path(&work.join("judge-llama-hf"))])
        }
    };
    let source: Vec<String> =
        source.into_iter().chain(["--quantize".to_owned(), bits.to_owned()]).collect();
    import_once(root, &source, &work.join(format!("{label}-{bits}-draft")), 1)
}

fn gguf_label(gguf: &Path) -> anyhow::Result<String> {
    let stem = gguf.file_stem().map(|s| s.to_string_lossy().into_owned());
    stem.context("--gguf names no file")
}

/// A random llama made by `make-fixture --arch llama FLAGS` and imported in 3 blocks into
/// `work/NAME-3blocks`, once (again when that import has no piece list).
pub fn random_llama(
    work: &Path,
    root: &Path,
    name: &str,
    flags: &[&str],
) -> anyhow::Result<PathBuf> {
    let (hf, model) = (work.join(format!("{name}-hf")), work.join(format!("{name}-3blocks")));
    if infergrid::model::ModelManifest::load(&model).is_ok_and(|m| m.pieces.is_some()) {
        return Ok(model);
    }
    eprintln!("bench: generating a random llama in {}", model.display());
    let hf_arg = path(&hf);
    let make = ["--arch", "llama", "--out", &hf_arg].into_iter().chain(flags.iter().copied());
    script(root, "make-fixture", make.map(String::from))?;
    let out = path(&model);
    script(
        root,
        "import-model",
        ["--hf", &hf_arg, "--out", &out, "--blocks", "3"].map(String::from),
    )?;
    Ok(model)
}

/// Whether the import in `dir` is a decoder from before batch-capable graphs (its blocks
/// lack `past_padding`): its nodes would run every session's steps one at a time.
pub fn predates_batching(dir: &Path) -> bool {
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap_or_default();
    manifest.contains("past_key") && !manifest.contains("past_padding")
}

/// Imports `source` (`--hf DIR` or `--gguf FILE`) in `blocks` blocks into `dir`, unless an
/// import is already there (and batch-capable).
fn import_once(
    root: &Path,
    source: &[String],
    dir: &Path,
    blocks: usize,
) -> anyhow::Result<PathBuf> {
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap_or_default();
    if !manifest.is_empty() && !predates_batching(dir) && manifest.contains("\"pieces\"") {
        eprintln!("bench: using the import in {} (delete it to re-import)", dir.display());
    } else {
        eprintln!("bench: importing {blocks} block(s) into {}", dir.display());
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        let out = ["--out".to_owned(), path(dir), "--blocks".to_owned(), blocks.to_string()];
        script(root, "import-model", source.iter().cloned().chain(out))?;
    }
    Ok(dir.to_path_buf())
}

fn engine(args: EngineBench) -> anyhow::Result<()> {
    let root = repo_root()?;
    let (whole, split, label) = bench_models(&args, &root)?;

    let runtime = Runtime::new(args.device, Some(args.threads))?;
    if let Some(reason) = runtime.fallback() {
        eprintln!("warning: {reason}");
    }
    if let Some(sessions) = args.batch {
        let (decode, prompt) = (args.decode, args.prompt_len);
        return super::bench_batch::run(&whole, &runtime, sessions, decode, prompt, args.rounds);
    }
    let rss_before = resident_bytes()?;
    let started = Instant::now();
    let pipeline = Pipeline::load(&split, &runtime, CacheLimits::default())?;
    let load_s = started.elapsed().as_secs_f64();
    let rss_loaded = resident_bytes()? - rss_before;
    let weights = pipeline.weight_bytes() as f64;
    // ort-baseline's default prompt: ids[i] = (7 + 31 i) mod vocab.
    let vocab = pipeline.manifest().config.vocab_size as i64;
    let prompt: Vec<i64> = (0..args.prompt_len as i64).map(|i| (7 + 31 * i) % vocab).collect();
    let prompt_arg = prompt.iter().map(i64::to_string).collect::<Vec<_>>().join(",");

    // One split run before the unsplit model is loaded: the resident memory after decoding
    // is the split model's alone.
    let (mut ours, mut our_ids) = decode_run(&pipeline, &prompt, args.decode)?;
    let rss_decoded = resident_bytes()? - rss_before;
    // The same engine on the unsplit model: what splitting itself costs. The rounds alternate
    // split, unsplit and the Python baseline, so a noisy spell of the machine hits them alike.
    let unsplit = Pipeline::load(&whole, &runtime, CacheLimits::default())?;
    let (mut ours_unsplit, mut theirs) = (Speed::default(), Speed::default());
    let mut baseline = Value::Null;
    for round in 0..args.rounds {
        eprintln!("bench: round {}/{}", round + 1, args.rounds);
        let (speed, ids) = decode_run(&pipeline, &prompt, args.decode)?;
        ours = ours.best(speed);
        our_ids = ids;
        ours_unsplit = ours_unsplit.best(decode_run(&unsplit, &prompt, args.decode)?.0);
        baseline = serde_json::from_str(&script(
            &root,
            "ort-baseline",
            [
                "--model",
                &path(&whole),
                "--prompt-len",
                &args.prompt_len.to_string(),
                "--decode",
                &args.decode.to_string(),
            ]
            .map(String::from)
            .into_iter()
            .chain([
                "--threads".into(),
                args.threads.to_string(),
                "--prompt-ids".into(),
                prompt_arg.clone(),
            ]),
        )?)?;
        theirs = theirs.best(Speed {
            prefill: baseline["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
            decode: baseline["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
        });
    }
    let same_tokens = baseline["token_ids"]
        .as_array()
        .is_some_and(|ids| ids.iter().filter_map(Value::as_i64).collect::<Vec<_>>() == our_ids);

    println!(
        "engine benchmark: {label}, {:.1} MB of float32 weights, 3 blocks vs 1, device {}",
        weights / 1e6,
        runtime.device()
    );
    println!(
        "  prompt {} tokens, decode {} tokens, {} threads, best of {} rounds",
        args.prompt_len, args.decode, args.threads, args.rounds
    );
    println!(
        "  decode   split (this engine) {:8.1} tok/s | onnxruntime python unsplit {:8.1} tok/s | ratio {:.2}x",
        ours.decode,
        theirs.decode,
        ours.decode / theirs.decode
    );
    println!(
        "  decode   unsplit (this engine) {:7.1} tok/s | split/unsplit in this engine {:.2}x",
        ours_unsplit.decode,
        ours.decode / ours_unsplit.decode
    );
    println!(
        "  prefill  split (this engine) {:8.1} tok/s | onnxruntime python unsplit {:8.1} tok/s | ratio {:.2}x",
        ours.prefill,
        theirs.prefill,
        ours.prefill / theirs.prefill
    );
    println!(
        "  load     3 blocks {:.2} s (python unsplit {:.2} s)",
        load_s,
        baseline["load_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  resident after load   {:7.1} MB = {:.2}x weight bytes",
        rss_loaded / 1e6,
        rss_loaded / weights
    );
    println!(
        "  resident after decode {:7.1} MB = {:.2}x weight bytes",
        rss_decoded / 1e6,
        rss_decoded / weights
    );
    println!("  greedy tokens identical to the baseline: {same_tokens}");
    if !same_tokens {
        bail!("the split model's greedy tokens differ from the baseline's");
    }
    drop(unsplit);
    if args.devnet {
        let tokenizer = super::infer::load_tokenizer(&split, &pipeline.manifest().tokenizer.file)?;
        let served = super::bench_http::compare(
            &split,
            &pipeline,
            &tokenizer,
            args.http_tokens,
            &args.work,
        )?;
        println!(
            "  completion ({} greedy tokens)  devnet, {} node processes, HTTP API {:6.1} tok/s | in-process {:6.1} tok/s | ratio {:.2}x",
            served.tokens,
            served.nodes,
            served.devnet_http,
            served.in_process,
            served.devnet_http / served.in_process
        );
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct Speed {
    prefill: f64,
    decode: f64,
}

impl Speed {
    fn best(self, other: Speed) -> Speed {
        Speed { prefill: self.prefill.max(other.prefill), decode: self.decode.max(other.decode) }
    }
}

/// One warm-up then one timed greedy run: prefill of `prompt`, then `decode` steps.
fn decode_run(
    pipeline: &Pipeline,
    prompt: &[i64],
    decode: usize,
) -> anyhow::Result<(Speed, Vec<i64>)> {
    let mut result = (Speed::default(), Vec::new());
    for session in 0..2 {
        let started = Instant::now();
        let logits = pipeline.step(session, 0, prompt)?;
        let prefill = prompt.len() as f64 / started.elapsed().as_secs_f64();
        let mut token = i64::from(infergrid::generate::argmax(logits.last_row()));
        let mut ids = vec![token];
        let started = Instant::now();
        for step in 0..decode {
            token = i64::from(infergrid::generate::argmax(
                pipeline.step(session, prompt.len() + step, &[token])?.last_row(),
            ));
            ids.push(token);
        }
        let speed = Speed { prefill, decode: decode as f64 / started.elapsed().as_secs_f64() };
        pipeline.close(session);
        result = (speed, ids);
    }
    Ok(result)
}

fn resident_bytes() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024.0)
}

pub fn script(
    root: &Path,
    name: &str,
    args: impl IntoIterator<Item = String>,
) -> anyhow::Result<String> {
    let out = Command::new("bash").arg(root.join("scripts").join(name)).args(args).output()?;
    if !out.status.success() {
        bail!("scripts/{name} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
