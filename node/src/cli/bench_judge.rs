//! `infergrid bench judge`: calibrates the judge. Honest nodes differ from a validator in
//! the last bits (thread counts, graph optimization levels, kernels); cheats differ by far
//! more. This runs challenge sessions through the validator's engine (the reference, default
//! settings) and through node engines in child processes — ONNX Runtime's thread pool is
//! per process — at `--threads 1` and `2` and different optimization levels, judges every
//! honest answer against the reference, and reports the largest honest error and the
//! smallest cheat error (perturbed and lazy answers) as fractions of the tolerance.
//!
//! Every node configuration decodes the reference's own tokens and runs the whole chain of
//! blocks itself, so block `l`'s answer is the node's span `0..=l`: the span that accumulates
//! the most float noise. (A node serving a later span starts from the validator's exact
//! hidden states.)

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use infergrid::engine::{
    Activation, BlockInput, CacheLimits, Device, Optimization, Pipeline, Runtime,
};
use infergrid::net::codec::{InferResponse, Payload};
use infergrid::serve::Cheat;
use infergrid::validate::{ChallengeSession, DEFAULT_TOLERANCE, Judge, Verdict};

/// Node configurations compared with the reference (which runs with one thread per core and
/// every optimization).
const NODE_CONFIGS: [(usize, Optimization); 4] = [
    (1, Optimization::All),
    (2, Optimization::Disable),
    (1, Optimization::Basic),
    (2, Optimization::Extended),
];

#[derive(Debug, Args)]
pub struct JudgeBench {
    /// Where the benchmark models are generated and imported (cached).
    #[arg(long, default_value = "target/bench-models")]
    work: PathBuf,
    /// Also calibrate on this trained model's GGUF file (e.g. SmolLM2-135M-Instruct, which
    /// scripts/setup installs), imported in 3 blocks.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Honest answers judged per node configuration (4 configurations).
    #[arg(long, default_value_t = 2_600)]
    answers: usize,
    /// Greedy decode steps per session (after a prompt from the validators' corpus).
    #[arg(long, default_value_t = 31)]
    decode_steps: usize,
    /// The judge's tolerance.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE)]
    tolerance: f64,
}

/// Internal: one node configuration's answers, streamed to the parent `bench judge`.
#[derive(Debug, Args)]
pub struct JudgeWorker {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    threads: usize,
    #[arg(long)]
    optimization: Optimization,
    /// JSON: per session, per step, the token ids fed to block 0.
    #[arg(long)]
    tokens: PathBuf,
}

pub fn run(args: JudgeBench, root: &Path) -> anyhow::Result<()> {
    let mut models = vec![fixture(&args.work, root)?];
    if let Some(gguf) = &args.gguf {
        models.push(super::bench::imported(&args.work, root, gguf, 3)?);
    }
    for (label, dir) in models {
        calibrate(&args, &label, &dir)?;
    }
    Ok(())
}

/// The random llama fixture (3 layers in 3 blocks), generated once.
pub(super) fn fixture(work: &Path, root: &Path) -> anyhow::Result<(String, PathBuf)> {
    let flags = ["--layers", "3", "--seed", "21"];
    let model = super::bench::random_llama(work, root, "judge-llama", &flags)?;
    Ok(("random llama (3 layers)".to_owned(), model))
}

/// Errors of one model's honest and cheating answers.
#[derive(Debug, Default)]
struct Errors {
    answers: usize,
    faulty: usize,
    largest_honest: f64,
    smallest_perturbed: f64,
    smallest_lazy: f64,
}

fn calibrate(args: &JudgeBench, label: &str, model: &Path) -> anyhow::Result<()> {
    let runtime = Runtime::new(Device::Cpu, None)?;
    let reference = Pipeline::load(model, &runtime, CacheLimits::default())?;
    let tokenizer = super::infer::load_tokenizer(model, &reference.manifest().tokenizer.file)?;
    let blocks = reference.blocks().len();
    let prompts = super::validator::corpus(reference.manifest(), &tokenizer)?;
    let sessions = args.answers.div_ceil((args.decode_steps + 1) * blocks).max(1);
    eprintln!(
        "bench judge: {label}: {sessions} sessions of {} steps through the reference",
        args.decode_steps + 1
    );
    let reference_sessions: Vec<ChallengeSession> = (0..sessions)
        .map(|i| {
            let prompt = &prompts[i % prompts.len()];
            ChallengeSession::run(&reference, i as u64 + 1, prompt, args.decode_steps)
        })
        .collect::<Result<_, _>>()?;
    let tokens: Vec<Vec<Vec<i64>>> = reference_sessions
        .iter()
        .map(|s| {
            s.steps
                .iter()
                .map(|step| match &step.inputs[0] {
                    Payload::Tokens(ids) => ids.clone(),
                    _ => unreachable!("block 0 takes tokens"),
                })
                .collect()
        })
        .collect();
    let tokens_file = args.work.join("judge-tokens.json");
    std::fs::write(&tokens_file, serde_json::to_vec(&tokens)?)?;

    let judge = Judge { tolerance: args.tolerance };
    let mut errors =
        Errors { smallest_perturbed: f64::MAX, smallest_lazy: f64::MAX, ..Default::default() };
    // Lazy answers: block l's input passed on as its output, for every block whose output
    // is hidden states and whose input is (block 0's input is token ids).
    for session in &reference_sessions {
        for step in &session.steps {
            for block in 1..blocks - 1 {
                let lazy = &step.outputs[block - 1];
                errors.smallest_lazy =
                    errors.smallest_lazy.min(error(judge.judge(&step.outputs[block], lazy)));
            }
        }
    }
    let cheat = Cheat::perturbing(1.0, 7);
    for (threads, optimization) in NODE_CONFIGS {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "judge-worker", "--model"])
            .arg(model)
            .args(["--threads", &threads.to_string(), "--optimization", &optimization.to_string()])
            .arg("--tokens")
            .arg(&tokens_file)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut answers = BufReader::new(child.stdout.take().expect("piped"));
        let (mut largest, mut count) = (0f64, 0usize);
        for session in &reference_sessions {
            for step in &session.steps {
                for expected in &step.outputs {
                    let answer = read_activation(&mut answers).with_context(|| {
                        format!("reading the answers of threads {threads}, {optimization}")
                    })?;
                    let verdict = judge.judge(expected, &answer);
                    if !verdict.passed() {
                        errors.faulty += 1;
                    }
                    largest = largest.max(error(verdict));
                    let mut perturbed = Payload::Tensor(answer);
                    cheat.apply(&mut perturbed);
                    let Payload::Tensor(perturbed) = perturbed else { unreachable!() };
                    errors.smallest_perturbed =
                        errors.smallest_perturbed.min(error(judge.judge(expected, &perturbed)));
                    count += 1;
                }
            }
        }
        if !child.wait()?.success() {
            bail!("the node configuration threads {threads}, {optimization} failed");
        }
        eprintln!(
            "bench judge: {label}: threads {threads}, optimization {optimization}: {count} answers, \
             largest error {largest:.2e} = {:.4} × tolerance",
            largest / args.tolerance
        );
        errors.answers += count;
        errors.largest_honest = errors.largest_honest.max(largest);
    }
    let t = args.tolerance;
    println!("bench judge: {label}, tolerance {t:.0e}");
    println!(
        "  honest answers          {} from {} node configurations (threads 1/2 × optimization levels), {} judged faulty",
        errors.answers,
        NODE_CONFIGS.len(),
        errors.faulty
    );
    println!(
        "  largest honest error    {:.3e} = {:.4} × tolerance",
        errors.largest_honest,
        errors.largest_honest / t
    );
    println!(
        "  smallest cheat error    perturbed {:.3e} = {:.1} × tolerance; lazy {:.3e} = {:.1} × tolerance",
        errors.smallest_perturbed,
        errors.smallest_perturbed / t,
        errors.smallest_lazy,
        errors.smallest_lazy / t
    );
    println!(
        "  safety margin           {:.0}× (smallest cheat error ÷ largest honest error)",
        errors.smallest_perturbed.min(errors.smallest_lazy)
            / errors.largest_honest.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// The relative error of a verdict (infinite for a malformed answer).
fn error(verdict: Verdict) -> f64 {
    match verdict {
        Verdict::Pass { error } | Verdict::Fail { error } => error,
        Verdict::Malformed => f64::INFINITY,
    }
}

/// Runs one node configuration over the reference's tokens and streams every block's output.
pub fn worker(args: JudgeWorker) -> anyhow::Result<()> {
    let runtime =
        Runtime::new(Device::Cpu, Some(args.threads))?.with_optimization(args.optimization);
    let pipeline = Pipeline::load(&args.model, &runtime, CacheLimits::default())?;
    let tokens: Vec<Vec<Vec<i64>>> = serde_json::from_reader(std::fs::File::open(&args.tokens)?)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (index, steps) in tokens.iter().enumerate() {
        let session = index as u64 + 1;
        let mut position = 0;
        for ids in steps {
            let mut input = BlockInput::Tokens(ids.clone());
            for block in pipeline.blocks() {
                let output = block.forward(session, position, input)?;
                write_activation(&mut out, &output)?;
                input = BlockInput::Hidden(output);
            }
            position += ids.len();
        }
        pipeline.close(session);
    }
    out.flush()?;
    Ok(())
}

fn write_activation(out: &mut impl Write, activation: &Activation) -> std::io::Result<()> {
    let bytes = InferResponse::Ok {
        output: Payload::Tensor(activation.clone()),
        signature: [0; 65],
        account: None,
    }
    .encode();
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(&bytes)
}

fn read_activation(input: &mut impl Read) -> anyhow::Result<Activation> {
    let mut len = [0u8; 8];
    input.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u64::from_le_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    match InferResponse::decode(&bytes)? {
        InferResponse::Ok { output: Payload::Tensor(activation), .. } => Ok(activation),
        other => bail!("not an activation: {other:?}"),
    }
}
