//! A real trained model through the GGUF import: SmolLM2-135M-Instruct (Q4_1) imported with
//! `infergrid model import --gguf` into 3 blocks decodes greedily, with the KV cache, the
//! same tokens as an independent numpy forward pass over the GGUF tensors (which keeps
//! llama.cpp's permuted q/k rows and interleaved rotary), and `infergrid infer` knows
//! the capital of France.

use std::process::Command;
use std::time::Instant;

use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid_e2e::models::{gguf_reference_decode, smollm2_gguf};
use infergrid_e2e::procs::binary;

const STEPS: usize = 16;
/// The engine runs float32, the reference float64 over 30 layers: the winning logits agree
/// to about 2e-5 (observed), a wrong weight layout moves them by whole units.
const LOGIT_TOL: f64 = 1e-2;
const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
];

/// Greedy decoding with the KV cache: the chosen ids and their logits.
fn greedy(pipeline: &Pipeline, session: u64, prompt: &[i64]) -> (Vec<i64>, Vec<f32>) {
    let (mut ids, mut best) = (Vec::new(), Vec::new());
    let (mut input, mut position) = (prompt.to_vec(), 0);
    for _ in 0..STEPS {
        let logits = pipeline.step(session, position, &input).expect("step").last_row().to_vec();
        position += input.len();
        let next = infergrid::generate::argmax(&logits);
        best.push(logits[next as usize]);
        ids.push(i64::from(next));
        input = vec![i64::from(next)];
    }
    (ids, best)
}

#[test]
fn smollm2_gguf_three_blocks_match_numpy_and_know_paris() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gguf = smollm2_gguf()?;
    let model = dir.path().join("smollm2");
    let started = Instant::now();
    let import = Command::new(binary())
        .arg("model")
        .arg("import")
        .arg("--gguf")
        .arg(&gguf)
        .arg("--out")
        .arg(&model)
        .args(["--blocks", "3"])
        .output()?;
    anyhow::ensure!(
        import.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    eprintln!("import --gguf: {:.1} s", started.elapsed().as_secs_f64());

    let pipeline = Pipeline::load(
        &model,
        &Runtime::new(Device::Cpu, None).expect("ONNX Runtime from scripts/setup"),
        CacheLimits::default(),
    )?;
    assert_eq!(pipeline.blocks().len(), 3);
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .map_err(anyhow::Error::msg)?;
    let prompts = PROMPTS
        .iter()
        .map(|p| {
            let encoding = tokenizer.encode(*p, false).map_err(anyhow::Error::msg)?;
            Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
        })
        .collect::<anyhow::Result<Vec<Vec<i64>>>>()?;

    let started = Instant::now();
    let reference = gguf_reference_decode(&gguf, &prompts, STEPS, dir.path())?;
    eprintln!("numpy reference: {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    for (session, ((text, prompt), (ref_ids, ref_best))) in
        PROMPTS.iter().zip(&prompts).zip(&reference).enumerate()
    {
        let (ids, best) = greedy(&pipeline, session as u64 + 1, prompt);
        assert_eq!(&ids, ref_ids, "{text:?}: engine and numpy reference chose different tokens");
        let worst =
            best.iter().zip(ref_best).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
        assert!(worst <= LOGIT_TOL, "{text:?}: winning logits differ by {worst}");
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        eprintln!(
            "{text:?} → {:?} ({STEPS} identical tokens, max |Δlogit| {worst:.1e})",
            tokenizer.decode(&ids, false).map_err(anyhow::Error::msg)?
        );
    }
    eprintln!("engine decode: {:.1} s", started.elapsed().as_secs_f64());

    let infer = Command::new(binary())
        .arg("infer")
        .arg("--model")
        .arg(&model)
        .args(["--prompt", PROMPTS[0], "--max-tokens", "4", "--temperature", "0"])
        .output()?;
    assert!(infer.status.success(), "infer: {}", String::from_utf8_lossy(&infer.stderr));
    let text = String::from_utf8(infer.stdout)?;
    assert!(text.starts_with(" Paris"), "infer wrote {text:?}");
    Ok(())
}
