//! Speculative decoding gives exactly what plain decoding gives, in fewer steps: on the
//! random fixture and on SmolLM2, greedy and seeded sampling with prompt-lookup drafts
//! produce the very tokens of plain decoding, and so do drafts from a quantized draft model;
//! and a session rolled back past rejected drafts answers as if they had never run (its next
//! logits equal a fresh session's).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid::generate::{
    DraftError, Generation, ModelDrafter, Prompt, PromptLookup, Request, SamplingParams,
    Speculation, check_draft, generate_speculating,
};
use infergrid::model::ModelManifest;
use infergrid_e2e::models::{import, import_with, make_checkpoint, smollm2_imported};

/// Prompts whose continuations quote them, so that prompt lookup has something to propose,
/// and one that does not.
const PROMPTS: [&str; 3] = [
    "the quick brown fox jumps over the lazy dog. the quick brown fox jumps over",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a",
    "The capital of France is",
];
const TOKENS: usize = 40;

fn load(model: &Path) -> (Pipeline, tokenizers::Tokenizer) {
    let runtime = Runtime::new(Device::Cpu, None).expect("ONNX Runtime from scripts/setup");
    let pipeline = Pipeline::load(model, &runtime, CacheLimits::default()).expect("loads");
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    (pipeline, tokenizer)
}

fn run(
    pipeline: &Pipeline,
    tokenizer: &tokenizers::Tokenizer,
    prompt: &str,
    params: &SamplingParams,
    speculation: Option<&mut Speculation>,
) -> Generation {
    let request = Request {
        session: 9,
        prompt: Prompt::Text(prompt),
        max_tokens: TOKENS,
        stop: &[],
        params: params.clone(),
    };
    generate_speculating(&mut &*pipeline, tokenizer, request, speculation, |_| {
        ControlFlow::Continue(())
    })
    .expect("generates")
}

/// Every prompt decoded plainly and with prompt-lookup speculation: the same tokens, text
/// and finish; returns the drafts proposed and accepted over all prompts.
fn speculation_equals_plain(model: &Path, params: &SamplingParams) -> (usize, usize) {
    let (pipeline, tokenizer) = load(model);
    let mut speculation = Speculation::new(Box::new(PromptLookup::default()), 4);
    let (mut drafted, mut accepted) = (0, 0);
    for prompt in PROMPTS {
        let plain = run(&pipeline, &tokenizer, prompt, params, None);
        let sped = run(&pipeline, &tokenizer, prompt, params, Some(&mut speculation));
        let ids = |g: &Generation| g.tokens.iter().map(|t| t.choice.id).collect::<Vec<_>>();
        assert_eq!(ids(&sped), ids(&plain), "{prompt:?}");
        assert_eq!((&sped.text, sped.finish_reason), (&plain.text, plain.finish_reason));
        drafted += sped.drafted;
        accepted += sped.accepted;
    }
    (drafted, accepted)
}

fn fixture(dir: &Path) -> std::path::PathBuf {
    let hf = make_checkpoint(dir, "llama", &["--layers", "3", "--seed", "5"]).unwrap();
    import(&hf, &dir.join("model"), 3).unwrap()
}

#[test]
fn greedy_speculation_gives_the_plain_tokens_on_the_fixture_and_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    let greedy = SamplingParams::default();
    for (name, model) in [
        ("fixture", fixture(dir.path())),
        ("SmolLM2", smollm2_imported(env!("CARGO_TARGET_TMPDIR")).to_path_buf()),
    ] {
        let (drafted, accepted) = speculation_equals_plain(&model, &greedy);
        eprintln!("{name}, greedy: {accepted} of {drafted} drafted tokens accepted");
        assert!(drafted > 0, "{name}: prompt lookup never proposed anything");
    }
}

/// The fixture imported whole with `--quantize int8` drafts for the fixture served in 3
/// blocks: greedy output is plain decoding's, token for token, and most drafts are accepted
/// (the draft is the same model, quantized). A model with another vocabulary cannot draft.
#[test]
fn a_quantized_draft_model_drafts_and_the_output_stays_plain() {
    let dir = tempfile::tempdir().unwrap();
    let served = fixture(dir.path());
    let hf = dir.path().join("llama-hf");
    let draft_dir =
        import_with(&hf, &dir.path().join("draft"), 1, &["--quantize", "int8"]).unwrap();
    let manifest = |dir: &Path| ModelManifest::load(dir).unwrap();
    check_draft(&manifest(&draft_dir), &manifest(&served)).expect("same tokenizer and vocabulary");

    let (pipeline, tokenizer) = load(&served);
    let draft = Arc::new(load(&draft_dir).0);
    let greedy = SamplingParams::default();
    let (mut drafted, mut accepted) = (0, 0);
    for (session, prompt) in PROMPTS.iter().enumerate() {
        let plain = run(&pipeline, &tokenizer, prompt, &greedy, None);
        let drafter = ModelDrafter::new(draft.clone(), session as u64);
        let mut speculation = Speculation::new(Box::new(drafter), 4);
        let sped = run(&pipeline, &tokenizer, prompt, &greedy, Some(&mut speculation));
        let ids = |g: &Generation| g.tokens.iter().map(|t| t.choice.id).collect::<Vec<_>>();
        assert_eq!(ids(&sped), ids(&plain), "{prompt:?}");
        drafted += sped.drafted;
        accepted += sped.accepted;
    }
    eprintln!("int8 draft model, greedy: {accepted} of {drafted} drafted tokens accepted");
    assert!(drafted > 0 && accepted * 10 >= drafted * 8, "{accepted} of {drafted} accepted");

    let other = make_checkpoint(&dir.path().join("other"), "llama", &["--vocab", SMALL_VOCAB])
        .and_then(|hf| import(&hf, &dir.path().join("other-model"), 1))
        .unwrap();
    let refused = check_draft(&manifest(&other), &manifest(&served));
    assert!(
        matches!(refused, Err(DraftError::Tokenizer | DraftError::Vocabulary { .. })),
        "{refused:?}"
    );
}

#[test]
fn seeded_sampling_with_speculation_gives_the_plain_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture(dir.path());
    for seed in [1, 2, 3] {
        let params = SamplingParams { temperature: 0.9, top_p: 0.95, seed, ..Default::default() };
        let (drafted, accepted) = speculation_equals_plain(&model, &params);
        eprintln!("fixture, sampling seed {seed}: {accepted} of {drafted} drafts accepted");
    }
}

/// A verify step of four drafts at position `p`, then a step at `p + 1`: the session is rolled
/// back to `p + 1` first, and its logits equal those of a session that never saw the drafts;
/// so do the logits of a second verify step after the rollback.
#[test]
fn a_rolled_back_session_answers_as_if_the_drafts_never_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, _) = load(&fixture(dir.path()));
    let prompt = [1i64, 17, 42, 99, 7];
    let p = prompt.len();
    let (sped, plain) = (1, 2);
    pipeline.step(sped, 0, &prompt).unwrap();
    pipeline.step(plain, 0, &prompt).unwrap();
    let verify = pipeline.step(sped, p, &[5, 11, 12, 13, 14]).unwrap();
    assert_eq!(verify.rows(), 5, "a verify step answers for every position");
    let direct = pipeline.step(plain, p, &[5]).unwrap();
    let gap =
        |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(gap(verify.row(0), direct.row(0)) < 1e-4, "the first row is the plain step's");

    // Only the first draft kept: the next step starts at p + 2.
    let after = pipeline.step(sped, p + 2, &[21]).unwrap();
    pipeline.step(plain, p + 1, &[11]).unwrap();
    let expected = pipeline.step(plain, p + 2, &[21]).unwrap();
    let drift = gap(after.last_row(), expected.last_row());
    assert!(drift < 1e-4, "logits after the rollback drift by {drift}");

    // A second verify step on the rolled-back cache, then a rollback to its very start.
    let again = pipeline.step(sped, p + 3, &[3, 4, 8]).unwrap();
    let expected = pipeline.step(plain, p + 3, &[3, 4, 8]).unwrap();
    assert!(gap(again.data(), expected.data()) < 1e-4);
    let rewound = pipeline.step(sped, p, &[9]).unwrap();
    pipeline.step(plain, 0, &prompt).unwrap();
    let fresh = pipeline.step(plain, p, &[9]).unwrap();
    assert!(gap(rewound.last_row(), fresh.last_row()) < 1e-4);
    eprintln!("rollback: largest logit drift {drift:e}");
}

/// The fixture's smallest vocabulary (256 bytes and the specials); sampling keeps the 16 most
/// likely tokens, so that every token kept is drawn often enough to count.
const SMALL_VOCAB: &str = "259";
const TOP_K: usize = 16;
/// Draws per distribution.
const SAMPLES: u64 = 20_000;

/// Sampling with speculation draws from exactly the model's distribution: on real logits of a
/// small-vocabulary fixture (top-16 sampling), the first two tokens a verify step emits (its draw for the draft's
/// position, and the one after when the draft was accepted) are distributed as plain
/// sampling's, by a chi-square test over 20,000 draws each; and a classic wrong rule —
/// accept the draft with probability p(draft), else draw again from p without taking the
/// draft out — fails the same test.
#[test]
fn speculative_sampling_has_the_plain_distribution_and_a_wrong_rule_does_not() {
    use infergrid::generate::{Sampler, verify};

    let dir = tempfile::tempdir().unwrap();
    let flags = ["--layers", "2", "--seed", "11", "--vocab", SMALL_VOCAB];
    let hf = make_checkpoint(dir.path(), "llama", &flags).unwrap();
    let (pipeline, _) = load(&import(&hf, &dir.path().join("model"), 1).unwrap());
    let prompt = [1i64, 5, 9, 2];
    pipeline.step(1, 0, &prompt).unwrap();
    // The draft: the second most likely token after 7, so that it is often rejected too.
    let after_seven = pipeline.step(2, 0, &[1, 5, 9, 2, 7]).unwrap();
    let mut order: Vec<u32> = (0..after_seven.last_row().len() as u32).collect();
    order.sort_by(|&a, &b| {
        after_seven.last_row()[b as usize].total_cmp(&after_seven.last_row()[a as usize])
    });
    let draft = order[1];
    let verify_step = pipeline.step(1, prompt.len(), &[7, i64::from(draft)]).unwrap();
    let rows = [verify_step.row(0), verify_step.row(1)];
    let params =
        |seed| SamplingParams { temperature: 0.8, top_k: TOP_K, seed, ..Default::default() };

    // What a step emits, as (first token, the next one when the first was the draft).
    type Outcome = (u32, Option<u32>);
    let plain = |seed: u64| -> Outcome {
        let mut sampler = Sampler::new(params(seed));
        let first = sampler.choose(rows[0]).id;
        (first, (first == draft).then(|| sampler.choose(rows[1]).id))
    };
    let speculative = |seed: u64| -> Outcome {
        let draws = verify(&mut Sampler::new(params(seed)), &rows, &[draft]);
        (draws[0].id, draws.get(1).map(|c| c.id))
    };
    let p_draft = top_k_softmax(rows[0], 0.8)[draft as usize];
    let wrong = |seed: u64| -> Outcome {
        let mut sampler = Sampler::new(params(seed));
        let first = if uniform(seed) < p_draft { draft } else { sampler.choose(rows[0]).id };
        (first, (first == draft).then(|| sampler.choose(rows[1]).id))
    };
    let counts = |draw: &dyn Fn(u64) -> Outcome, seeds: std::ops::Range<u64>| {
        let mut counts = std::collections::BTreeMap::<Outcome, u64>::new();
        for seed in seeds {
            *counts.entry(draw(seed)).or_default() += 1;
        }
        counts
    };
    let reference = counts(&plain, 0..SAMPLES);
    let exact = homogeneity(&reference, &counts(&speculative, SAMPLES..2 * SAMPLES));
    let broken = homogeneity(&reference, &counts(&wrong, SAMPLES..2 * SAMPLES));
    eprintln!(
        "draft accepted with p = {p_draft:.3}; chi-square against plain sampling over {SAMPLES} \
         draws: speculative p-value {exact:.3}, wrong rule p-value {broken:.2e}"
    );
    assert!(exact > 0.01, "speculative sampling differs from plain sampling: p = {exact}");
    assert!(broken < 0.01, "the test cannot tell a wrong acceptance rule: p = {broken}");
}

/// A uniform draw in [0, 1) from `seed` (splitmix64), independent of the sampler's.
fn uniform(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / 2f64.powi(64)
}

/// The sampler's distribution: softmax at `temperature` over the `TOP_K` largest logits.
fn top_k_softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let mut sorted = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let (max, floor) = (sorted[0] as f64, sorted[TOP_K - 1]);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| if l >= floor { ((l as f64 - max) / temperature).exp() } else { 0.0 })
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// The p-value of a chi-square test that two equally large samples come from one
/// distribution (categories seen fewer than 10 times in both together are pooled).
fn homogeneity<K: Ord + Clone>(
    a: &std::collections::BTreeMap<K, u64>,
    b: &std::collections::BTreeMap<K, u64>,
) -> f64 {
    let keys: std::collections::BTreeSet<K> = a.keys().chain(b.keys()).cloned().collect();
    let (mut statistic, mut categories, mut pooled) = (0.0, 0, (0.0, 0.0));
    for key in keys {
        let (x, y) = (*a.get(&key).unwrap_or(&0) as f64, *b.get(&key).unwrap_or(&0) as f64);
        if x + y < 10.0 {
            pooled = (pooled.0 + x, pooled.1 + y);
            continue;
        }
        statistic += (x - y).powi(2) / (x + y);
        categories += 1;
    }
    if pooled.0 + pooled.1 > 0.0 {
        statistic += (pooled.0 - pooled.1).powi(2) / (pooled.0 + pooled.1);
        categories += 1;
    }
    upper_regularized_gamma((categories - 1) as f64 / 2.0, statistic / 2.0)
}

/// Q(s, x) = Γ(s, x) / Γ(s): the chi-square survival function at 2x with 2s degrees of
/// freedom (Numerical Recipes' series below s + 1, continued fraction above).
fn upper_regularized_gamma(s: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefix = s * x.ln() - x - ln_gamma(s);
    if x < s + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / s, 1.0 / s, s);
        while term.abs() > sum.abs() * 1e-15 {
            n += 1.0;
            term *= x / n;
            sum += term;
        }
        return 1.0 - sum * log_prefix.exp();
    }
    let tiny = 1e-300;
    let (mut b, mut c, mut d) = (x + 1.0 - s, 1.0 / tiny, 1.0 / (x + 1.0 - s));
    let mut h = d;
    for i in 1..1000 {
        let an = -(i as f64) * (i as f64 - s);
        b += 2.0;
        d = an * d + b;
        d = if d.abs() < tiny { tiny } else { d };
        c = b + an / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    log_prefix.exp() * h
}

/// ln Γ(x), Lanczos approximation (g = 7, 9 terms).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + 7.5;
    let series: f64 = G[0] + (1..9).map(|i| G[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[test]
fn the_chi_square_survival_function_matches_published_values() {
    // scipy.stats.chi2.sf(x, df): (x, df, p).
    for (x, df, p) in [(3.841_458_8, 1.0, 0.05), (15.507_313, 8.0, 0.05), (30.577_914, 15.0, 0.01)]
    {
        let q = upper_regularized_gamma(df / 2.0, x / 2.0);
        assert!((q - p).abs() < 1e-6, "chi2.sf({x}, {df}) = {q}, not {p}");
    }
}
