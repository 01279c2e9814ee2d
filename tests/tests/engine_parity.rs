//! The split model computes what the whole model computes: a 3-block split against a
//! 1-block import at every step of a 32-token greedy run, both against an independent
//! numpy forward pass from the safetensors; and MiniLM through 2 blocks against the
//! published sentence-transformers similarities.

use std::path::Path;

use infergrid::engine::{BatchStep, BlockInput, CacheLimits, Device, Pipeline, Runtime};
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

/// One session of the batching test: its prompt, when it joins, how many tokens it takes.
struct Session {
    prompt: Vec<i64>,
    joins_at: usize,
    tokens: usize,
    ids: Vec<i64>,
    position: usize,
}

fn argmax(row: &[f32]) -> i64 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as i64).unwrap()
}

/// 16 sessions with prompts of different lengths join at different steps and leave after
/// different numbers of tokens; every step, all sessions decoding run as one batch through
/// each block (`forward_batch`). Greedy ids equal each session run alone; logits agree within
/// float noise. Then the same for a gpt2 (learned positions) fixture.
#[test]
fn batched_decoding_matches_each_session_alone() -> anyhow::Result<()> {
    for (arch, flags) in [
        ("llama", &["--layers", "3", "--seed", "8", "--kv-heads", "2"][..]),
        ("gpt2", &["--layers", "3", "--seed", "8"][..]),
    ] {
        let dir = tempfile::tempdir()?;
        let hf = make_checkpoint(dir.path(), arch, flags)?;
        let model = import(&hf, &dir.path().join("m"), 3)?;
        let pipeline = Pipeline::load(&model, &runtime(), CacheLimits::default())?;
        assert!(
            pipeline.blocks().iter().all(|b| b.is_batched()),
            "{arch}: graphs take past_padding"
        );

        let mut sessions: Vec<Session> = (0..16)
            .map(|i| Session {
                prompt: (0..1 + i % 7).map(|t| (3 + 17 * i + 5 * t) as i64 % 200 + 1).collect(),
                joins_at: i / 2,
                tokens: 6 + i % 5,
                ids: Vec::new(),
                position: 0,
            })
            .collect();
        let mut largest_logit_gap = 0f64;
        let mut most_in_a_batch = 0;
        for step in 0.. {
            if sessions.iter().all(|s| s.ids.len() == s.tokens) {
                break;
            }
            // Joining sessions prefill alone; the others decode together.
            let mut decoding = Vec::new();
            for (i, s) in sessions.iter_mut().enumerate() {
                if s.joins_at == step && s.ids.is_empty() {
                    let logits = pipeline.step(i as u64, 0, &s.prompt)?;
                    s.ids.push(argmax(logits.last_row()));
                    s.position = s.prompt.len();
                } else if s.joins_at < step && !s.ids.is_empty() && s.ids.len() < s.tokens {
                    decoding.push(i);
                }
            }
            most_in_a_batch = most_in_a_batch.max(decoding.len());
            let mut inputs: Vec<BlockInput> = decoding
                .iter()
                .map(|&i| BlockInput::Tokens(vec![*sessions[i].ids.last().unwrap()]))
                .collect();
            for block in pipeline.blocks() {
                let steps = decoding
                    .iter()
                    .zip(inputs)
                    .map(|(&i, input)| BatchStep {
                        session: i as u64,
                        position: sessions[i].position,
                        input,
                    })
                    .collect();
                inputs = block
                    .forward_batch(steps)
                    .into_iter()
                    .map(|r| r.map(BlockInput::Hidden))
                    .collect::<Result<_, _>>()?;
            }
            for (&i, output) in decoding.iter().zip(inputs) {
                let BlockInput::Hidden(logits) = output else { unreachable!() };
                let s = &mut sessions[i];
                s.ids.push(argmax(logits.last_row()));
                s.position += 1;
                // The same step alone, on a session of its own replaying the same tokens.
                let alone = 1_000 + i as u64;
                let mut history = s.prompt.clone();
                history.extend(&s.ids[..s.ids.len() - 1]);
                let expected = pipeline.step(alone, 0, &history)?;
                pipeline.close(alone);
                largest_logit_gap =
                    largest_logit_gap.max(max_abs_diff(logits.last_row(), expected.last_row()));
            }
        }
        for (i, s) in sessions.iter().enumerate() {
            let alone = greedy_n(&pipeline, &s.prompt, s.tokens);
            assert_eq!(
                s.ids, alone,
                "{arch}: session {i}: batched greedy ids differ from its run alone"
            );
        }
        eprintln!(
            "{arch}: 16 sessions, up to {most_in_a_batch} per batch: greedy ids identical, largest logit gap {largest_logit_gap:.2e}"
        );
        assert!(most_in_a_batch >= 8, "the schedule never batched much: {most_in_a_batch}");
        assert!(largest_logit_gap < 1e-4, "{arch}: batched logits drift {largest_logit_gap}");
    }
    Ok(())
}

/// Greedy ids of `tokens` tokens after `prompt`, run alone on a fresh session.
fn greedy_n(pipeline: &Pipeline, prompt: &[i64], tokens: usize) -> Vec<i64> {
    let session = 77_777;
    let mut ids = Vec::new();
    let mut logits = pipeline.step(session, 0, prompt).unwrap();
    let mut position = prompt.len();
    while ids.len() < tokens {
        let next = argmax(logits.last_row());
        ids.push(next);
        if ids.len() < tokens {
            logits = pipeline.step(session, position, &[next]).unwrap();
            position += 1;
        }
    }
    pipeline.close(session);
    ids
}

/// One batch holding a cached decode row, a fresh row (position 0), a row with a token outside
/// the vocabulary and a second step of a session already in the batch: the bad row alone is
/// refused, the repeated session's second step runs after its first, and every answer is the
/// step run alone.
#[test]
fn a_batch_mixes_fresh_cached_bad_and_repeated_rows() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "2", "--seed", "3"])?;
    let model = import(&hf, &dir.path().join("m"), 1)?;
    let pipeline = Pipeline::load(&model, &runtime(), CacheLimits::default())?;
    let block = &pipeline.blocks()[0];
    let tokens = |ids: &[i64]| BlockInput::Tokens(ids.to_vec());
    // References, one step at a time on sessions of their own.
    block.forward(11, 0, tokens(&[1, 2, 3]))?;
    let cached = block.forward(11, 3, tokens(&[4]))?;
    let repeated = block.forward(11, 4, tokens(&[6]))?;
    let fresh = block.forward(12, 0, tokens(&[5]))?;

    block.forward(1, 0, tokens(&[1, 2, 3]))?;
    let out = block.forward_batch(vec![
        BatchStep { session: 1, position: 3, input: tokens(&[4]) },
        BatchStep { session: 2, position: 0, input: tokens(&[5]) },
        BatchStep { session: 3, position: 0, input: tokens(&[1_000_000]) },
        BatchStep { session: 1, position: 4, input: tokens(&[6]) },
    ]);
    let close = |a: &infergrid::engine::Activation, b: &infergrid::engine::Activation| {
        a.shape() == b.shape() && max_abs_diff(a.data(), b.data()) < 1e-4
    };
    let [first, second, third, fourth] = <[_; 4]>::try_from(out).expect("four answers");
    assert!(close(&first?, &cached), "the cached row");
    assert!(close(&second?, &fresh), "the fresh row");
    assert!(matches!(third, Err(infergrid::engine::EngineError::BadInput { .. })), "{third:?}");
    assert!(close(&fourth?, &repeated), "the repeated session's next step");
    Ok(())
}

/// Sessions of different lengths stepping together run on their batch's kept present (left
/// padded, fed back as it is), then leave it: one closes (the others' rows are copied into a
/// new batch), one pauses while the others go on (its row copied out) and then runs alone, one
/// rolls back into its row (speculative decoding). Every answer is the same step on a session
/// run alone.
#[test]
fn sessions_in_lockstep_run_on_their_kept_batch_and_leave_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hf =
        make_checkpoint(dir.path(), "llama", &["--layers", "2", "--seed", "4", "--kv-heads", "2"])?;
    let model = import(&hf, &dir.path().join("m"), 1)?;
    let pipeline = Pipeline::load(&model, &runtime(), CacheLimits::default())?;
    let block = &pipeline.blocks()[0];
    let tokens = |ids: &[i64]| BlockInput::Tokens(ids.to_vec());
    let alone = |session: u64| session + 100;
    let mut position = std::collections::BTreeMap::new();
    let mut next = std::collections::BTreeMap::new();
    for (session, prompt) in
        [(1u64, &[4i64][..]), (2, &[9, 8, 7]), (3, &[1, 2, 3, 4, 5]), (4, &[6, 5])]
    {
        let logits = block.forward(session, 0, tokens(prompt))?;
        block.forward(alone(session), 0, tokens(prompt))?;
        position.insert(session, prompt.len());
        next.insert(session, argmax(logits.last_row()));
    }
    let mut largest_gap = 0f64;
    let mut step_together = |sessions: &[u64]| -> anyhow::Result<()> {
        let steps = sessions
            .iter()
            .map(|&s| BatchStep { session: s, position: position[&s], input: tokens(&[next[&s]]) })
            .collect();
        for (&s, out) in sessions.iter().zip(block.forward_batch(steps)) {
            let out = out?;
            let expected = block.forward(alone(s), position[&s], tokens(&[next[&s]]))?;
            largest_gap = largest_gap.max(max_abs_diff(out.data(), expected.data()));
            *position.get_mut(&s).unwrap() += 1;
            next.insert(s, argmax(out.last_row()));
        }
        Ok(())
    };
    for _ in 0..6 {
        step_together(&[1, 2, 3, 4])?;
    }
    assert_eq!(
        block.kept_batches(),
        5,
        "after the first, each lockstep call ran on the kept batch"
    );
    // The same sessions in another order are still the kept batch.
    step_together(&[4, 2, 1, 3])?;
    assert_eq!(block.kept_batches(), 6);
    block.close(2);
    step_together(&[1, 3, 4])?; // copied out of the old batch into a new one
    step_together(&[1, 3, 4])?; // kept again
    assert_eq!(block.kept_batches(), 7);
    // Sessions 3 and 4 go on without 1, which is given a copy of its row of the batch they left:
    // the cache then holds session 1's own tokens, the 2 rows of the new batch, and the
    // reference sessions, instead of keeping the old batch of 3 rows resident too.
    step_together(&[3, 4])?;
    assert_eq!(block.kept_batches(), 7);
    let references: usize = position.values().sum();
    let new_batch = 2 * position[&3].max(position[&4]);
    assert_eq!(block.cache_usage(), (3 + 4, position[&1] + new_batch + references));
    assert!(largest_gap < 1e-4, "batched logits drift {largest_gap}");
    // Session 1 runs alone on that copy.
    let out = block.forward(1, position[&1], tokens(&[next[&1]]))?;
    let expected = block.forward(alone(1), position[&1], tokens(&[next[&1]]))?;
    assert!(max_abs_diff(out.data(), expected.data()) < 1e-4, "session 1 alone after its batch");
    // Sessions 3 and 4 roll back two positions inside their rows of the last batch (4's is
    // padded), as after rejected drafts.
    for session in [3, 4] {
        let back = position[&session] - 2;
        let out = block.forward(session, back, tokens(&[42]))?;
        let expected = block.forward(alone(session), back, tokens(&[42]))?;
        let gap = max_abs_diff(out.data(), expected.data());
        assert!(gap < 1e-4, "session {session} rolled back in its row: {gap}");
    }
    Ok(())
}
