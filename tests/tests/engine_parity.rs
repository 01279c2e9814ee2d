//! The split model computes what the whole model computes: a 3-block split against a
//! 1-block import at every step of a 32-token greedy run, both against an independent
//! numpy forward pass from the safetensors; and MiniLM through 2 blocks against the
//! published sentence-transformers similarities.

use std::path::Path;

use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid::generate::{cosine, embed_texts};
use infergrid_e2e::models::{
    import, make_checkpoint, minilm_checkpoint, reference_decode, reference_embeddings,
};

const STEPS: usize = 32;

fn runtime() -> Runtime {
    Runtime::new(Device::Cpu, None).expect("ONNX Runtime from scripts/setup")
}

/// Greedy decoding with the KV cache; per-step last-position logits and the chosen ids.
fn greedy(pipeline: &Pipeline, prompt: &[i64]) -> (Vec<i64>, Vec<Vec<f32>>) {
    let (mut ids, mut all_logits) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    let mut position = 0;
    for _ in 0..STEPS {
        let logits = pipeline.step(7, position, &input).expect("step").last_row().to_vec();
        position += input.len();
        let next = i64::from(infergrid::generate::argmax(&logits));
        ids.push(next);
        all_logits.push(logits);
        input = vec![next];
    }
    (ids, all_logits)
}

fn max_abs_diff<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| (x.into() - y.into()).abs()).fold(0.0, f64::max)
}

fn check_decoder(arch: &str, flags: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hf = make_checkpoint(dir.path(), arch, flags)?;
    let runtime = runtime();
    let whole = Pipeline::load(
        &import(&hf, &dir.path().join("one"), 1)?,
        &runtime,
        CacheLimits::default(),
    )?;
    let split = Pipeline::load(
        &import(&hf, &dir.path().join("three"), 3)?,
        &runtime,
        CacheLimits::default(),
    )?;
    assert_eq!(split.blocks().len(), 3);

    let prompt = [1i64, 17, 42, 99, 7];
    let (whole_ids, whole_logits) = greedy(&whole, &prompt);
    let (split_ids, split_logits) = greedy(&split, &prompt);
    let (ref_ids, ref_logits) = reference_decode(&hf, &prompt, STEPS, dir.path())?;

    assert_eq!(split_ids, whole_ids, "{arch}: split and whole model chose different tokens");
    assert_eq!(split_ids, ref_ids, "{arch}: engine and numpy reference chose different tokens");
    let distinct: std::collections::HashSet<_> = split_ids.iter().collect();
    assert!(distinct.len() > 3, "{arch}: degenerate fixture, greedy output {split_ids:?}");
    let (mut worst_split, mut worst_ref) = (0f64, 0f64);
    for step in 0..STEPS {
        let d_split = max_abs_diff(&split_logits[step], &whole_logits[step]);
        let d_ref = max_abs_diff(&split_logits[step], &ref_logits[step]);
        assert!(d_split <= 1e-4, "{arch} step {step}: split vs whole max |Δ| = {d_split}");
        assert!(d_ref <= 1e-3, "{arch} step {step}: engine vs numpy max |Δ| = {d_ref}");
        worst_split = worst_split.max(d_split);
        worst_ref = worst_ref.max(d_ref);
    }
    eprintln!(
        "{arch}: max |Δlogits| split vs whole {worst_split:.2e}, vs numpy {worst_ref:.2e}, {STEPS} identical tokens"
    );
    Ok(())
}

#[test]
fn llama_gqa_odd_layers_untied_split_matches_whole_and_numpy() -> anyhow::Result<()> {
    check_decoder(
        "llama",
        &["--layers", "5", "--heads", "4", "--kv-heads", "2", "--untied", "--seed", "3"],
    )
}

#[test]
fn llama_bfloat16_tied_split_matches_whole_and_numpy() -> anyhow::Result<()> {
    check_decoder(
        "llama",
        &["--layers", "3", "--dtype", "bfloat16", "--tied", "--head-dim", "32", "--shards", "2"],
    )
}

#[test]
fn gpt2_split_matches_whole_and_numpy() -> anyhow::Result<()> {
    check_decoder("gpt2", &["--layers", "4", "--dtype", "float16", "--seed", "5"])
}

#[test]
fn minilm_two_blocks_reproduce_published_similarities() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hf = minilm_checkpoint()?;
    let model = import(&hf, &dir.path().join("minilm"), 2)?;
    let pipeline = Pipeline::load(&model, &runtime(), CacheLimits::default())?;
    let tokenizer = tokenizers::Tokenizer::from_file(Path::new(&model).join("tokenizer.json"))
        .map_err(anyhow::Error::msg)?;
    let texts =
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."];
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let embeddings = embed_texts(&pipeline, &tokenizer, &owned)?;
    for ((i, j), published) in [((0, 1), 0.6660), ((0, 2), 0.1046), ((1, 2), 0.1411)] {
        let got = cosine(&embeddings[i], &embeddings[j]);
        eprintln!("minilm cosine({i}, {j}) = {got:.4} (published {published})");
        assert!((got - published).abs() <= 1e-3, "cosine({i}, {j}) = {got}, published {published}");
    }
    let reference = reference_embeddings(&hf, &texts, dir.path())?;
    for (ours, theirs) in embeddings.iter().zip(&reference) {
        assert!(max_abs_diff(ours, theirs) < 1e-4);
    }
    Ok(())
}

#[test]
fn blocks_refuse_malformed_inputs_with_typed_errors() -> anyhow::Result<()> {
    use infergrid::engine::{Activation, BlockInput, EngineError};
    let dir = tempfile::tempdir()?;
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "3", "--max-pos", "64"])?;
    let model = Pipeline::load(
        &import(&hf, &dir.path().join("m"), 3)?,
        &runtime(),
        CacheLimits::default(),
    )?;
    let (first, second) = (&model.blocks()[0], &model.blocks()[1]);
    let hidden = model.manifest().config.hidden_size;

    let bad = |r: Result<Activation, EngineError>| matches!(r, Err(EngineError::BadInput { .. }));
    // Hidden states of the wrong width, rank or batch, as a confused or hostile peer might send.
    assert!(bad(second.forward(
        1,
        0,
        BlockInput::Hidden(Activation::new(vec![1, 2, hidden + 1], vec![0.0; 2 * (hidden + 1)])?)
    )));
    assert!(bad(second.forward(
        1,
        0,
        BlockInput::Hidden(Activation::new(vec![2, hidden], vec![0.0; 2 * hidden])?)
    )));
    assert!(bad(second.forward(
        1,
        0,
        BlockInput::Hidden(Activation::new(vec![2, 1, hidden], vec![0.0; 2 * hidden])?)
    )));
    assert!(bad(second.forward(1, 0, BlockInput::Tokens(vec![1, 2]))));
    assert!(bad(first.forward(1, 0, BlockInput::Tokens(vec![1, 1_000_000]))));
    assert!(bad(first.forward(1, 0, BlockInput::Tokens(vec![-3]))));
    assert!(bad(first.forward(1, 0, BlockInput::Tokens(Vec::new()))));

    // Positions must continue the session's cache; the context length is enforced.
    first.forward(2, 0, BlockInput::Tokens(vec![1, 2, 3]))?;
    assert!(matches!(
        first.forward(2, 5, BlockInput::Tokens(vec![4])),
        Err(EngineError::PositionMismatch { cached: 3, requested: 5, .. })
    ));
    assert!(matches!(
        first.forward(3, 2, BlockInput::Tokens(vec![4])),
        Err(EngineError::UnknownSession(3))
    ));
    assert!(matches!(
        first.forward(4, 0, BlockInput::Tokens(vec![1; 65])),
        Err(EngineError::ContextOverflow { needed: 65, limit: 64 })
    ));
    // The cache still serves the session after the refused requests.
    first.forward(2, 3, BlockInput::Tokens(vec![4]))?;
    Ok(())
}
