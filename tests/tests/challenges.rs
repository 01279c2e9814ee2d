//! A validator's challenge set against real nodes: the validator runs sessions through its own
//! engine, and nodes serving any span of blocks, sent the validator's own inputs over libp2p,
//! answer requests whose signed hashes are leaves of the committed Merkle tree, with outputs
//! the judge accepts; a perturbed answer is judged wrong.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use infergrid::engine::Activation;
use infergrid::net::codec::{InferResponse, Payload, payload_bytes};
use infergrid::serve::Admission;
use infergrid::serve::Cheat;
use infergrid::validate::{
    ChallengeSet, Judge, ResponseAttestation, Verdict, challenge_leaf, fold_proof,
    validation_domain,
};
use infergrid_e2e::models::{LlamaFixture, llama_fixture};
use infergrid_e2e::nodes::{Served, network, serve_blocks, serve_cheating};

const DECODE_STEPS: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn nodes_answer_challenges_the_set_committed_to() -> anyhow::Result<()> {
    let LlamaFixture { dir: _model_dir, manifest, runtime, local: own } =
        llama_fixture(&["--layers", "4", "--seed", "13"], 3)?;

    let prompts = vec![vec![1i64, 17, 42, 99, 7], vec![1i64, 300, 5]];
    let mut next_session = 0x5eed_u64;
    let set = ChallengeSet::build(&own, &prompts, DECODE_STEPS, || {
        next_session = next_session.wrapping_mul(6364136223846793005).wrapping_add(1);
        next_session
    })?
    .expect("two prompts make a set");
    // 2 sessions × 6 steps × 6 spans of 3 blocks.
    assert_eq!(set.len(), 2 * (DECODE_STEPS + 1) * 6);

    let (client, _inbound) = network(None)?;
    let admission = || Admission::Peers(HashSet::from([client.local_peer()]));
    let serve = |blocks, key| {
        serve_blocks(
            &manifest,
            &runtime,
            blocks,
            admission(),
            None,
            alloy::primitives::B256::repeat_byte(key),
        )
    };
    let (head, tail) = (serve(0..=0, 1)?, serve(1..=2, 2)?);
    for node in [&head, &tail] {
        client.dial(node.peer, node.addr.clone()).await?;
    }
    let domain = validation_domain(31337, alloy::primitives::Address::repeat_byte(7));
    let judge = Judge::default();
    // Session 0 over spans 0 | 1..=2; session 1 over 0 | 1 | 2, the tail answering two spans.
    let routes: [&[(&Served, u16, u16)]; 2] =
        [&[(&head, 0, 0), (&tail, 1, 2)], &[(&head, 0, 0), (&tail, 1, 1), (&tail, 2, 2)]];
    let mut worst: f64 = 0.0;
    for (index, route) in routes.iter().enumerate() {
        let session = &set.sessions[index];
        for step in 0..session.steps.len() {
            for &(node, first, last) in route.iter() {
                let request = session.request(set.model_id, step, first, last);
                let request_hash = request.request_hash();
                let InferResponse::Ok { output, signature, .. } =
                    client.request(node.peer, request).await?
                else {
                    anyhow::bail!("node refused challenge step {step} of session {index}");
                };
                let at = set.find(&request_hash).expect("every request sent is in the set");
                assert_eq!((at.session, at.step, at.last_block), (index, step, last));
                let Payload::Tensor(answer) = &output else { anyhow::bail!("no tensor") };
                let verdict = judge.judge(set.expected(at), answer);
                let Verdict::Pass { error } = verdict else {
                    anyhow::bail!("honest answer judged {verdict:?}")
                };
                worst = worst.max(error);
                // The evidence a report would carry checks out against the committed root.
                let leaf = challenge_leaf(request_hash, at.expected_output_hash);
                assert_eq!(fold_proof(leaf, &set.proof(at)), set.root());
                let output_hash = infergrid::eip712::keccak256(&payload_bytes(&output));
                let attestation = ResponseAttestation { request_hash, output_hash, epoch: 0 };
                assert_eq!(attestation.signer(&domain, &signature)?, node.operator.address());
                // A cheat: the same answer with 1% noise on every value.
                let perturbed = Activation::new(
                    answer.shape().to_vec(),
                    answer
                        .data()
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * (1.0 + 0.01 * ((i % 7) as f32 - 3.0) / 3.0))
                        .collect(),
                )?;
                assert!(
                    !judge.judge(set.expected(at), &perturbed).passed(),
                    "a perturbed answer passed at step {step}"
                );
            }
        }
    }
    eprintln!(
        "{} challenge answers judged honest; largest relative error {worst:.1e}",
        2 * 6 + 3 * 6
    );
    // A node that perturbs its answers (1% per value) before signing them: every answer is
    // judged wrong, and each is reportable evidence — a signed output other than the one
    // committed to.
    let cheater = serve_cheating(
        &manifest,
        &runtime,
        1..=2,
        admission(),
        None,
        alloy::primitives::B256::repeat_byte(3),
        Some(Cheat::perturbing(1.0, 11)),
    )?;
    client.dial(cheater.peer, cheater.addr.clone()).await?;
    let session = &set.sessions[1];
    let mut least: f64 = f64::INFINITY;
    for step in 0..session.steps.len() {
        let request = session.request(set.model_id, step, 1, 2);
        let request_hash = request.request_hash();
        let InferResponse::Ok { output, signature, .. } =
            client.request(cheater.peer, request).await?
        else {
            anyhow::bail!("the cheater refused step {step}");
        };
        let at = set.find(&request_hash).expect("a challenge");
        let Payload::Tensor(answer) = &output else { anyhow::bail!("no tensor") };
        let Verdict::Fail { error } = judge.judge(set.expected(at), answer) else {
            anyhow::bail!("a perturbed answer passed at step {step}")
        };
        least = least.min(error);
        let output_hash = infergrid::eip712::keccak256(&payload_bytes(&output));
        assert_ne!(output_hash, at.expected_output_hash);
        let attestation = ResponseAttestation { request_hash, output_hash, epoch: 0 };
        assert_eq!(attestation.signer(&domain, &signature)?, cheater.operator.address());
    }
    eprintln!(
        "{} perturbed answers judged wrong; smallest error {least:.1e} = {:.0}x the tolerance",
        session.steps.len(),
        least / judge.tolerance
    );
    // Requests outside the set are not challenges.
    let stray = set.sessions[0].request(set.model_id, 0, 0, 0);
    let stray = infergrid::net::codec::InferRequest { session: stray.session ^ 1, ..stray };
    assert!(set.find(&stray.request_hash()).is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_challenger_counts_each_hop_and_keeps_a_cheats_signed_answers() -> anyhow::Result<()> {
    use infergrid::gateway::{HopClient, RemoteModelConfig, SignatureCheck, TermsBook};
    use infergrid::pay::NodeTerms;
    use infergrid::pay::meter::Tariff;
    use infergrid::route::Hop;
    use infergrid::validate::{ChainClock, ReportedFault, ResultBook};
    use infergrid::validator::Challenger;
    use infergrid_e2e::nodes::NODE_EPOCHS;

    let LlamaFixture { dir: _model_dir, manifest, runtime, local: own } =
        llama_fixture(&["--layers", "3", "--seed", "21"], 3)?;
    let mut next_session = 77u64;
    let set = ChallengeSet::build(&own, &[vec![1i64, 9, 4], vec![1i64, 2, 3, 4]], 3, || {
        next_session += 1;
        next_session
    })?
    .expect("a set");
    let steps = set.sessions[0].steps.len();

    let (client, _inbound) = network(None)?;
    let admission = || Admission::Peers(HashSet::from([client.local_peer()]));
    let key = alloy::primitives::B256::repeat_byte;
    let head = serve_blocks(&manifest, &runtime, 0..=0, admission(), None, key(1))?;
    let honest = serve_blocks(&manifest, &runtime, 1..=2, admission(), None, key(2))?;
    let cheat = Some(Cheat::perturbing(1.0, 5));
    let cheater = serve_cheating(&manifest, &runtime, 1..=2, admission(), None, key(3), cheat)?;
    let tariff = Tariff { price_per_token: alloy::primitives::U256::from(1), span_blocks: 1 };
    let operators: TermsBook = Arc::new(std::sync::Mutex::new(HashMap::new()));
    for node in [&head, &honest, &cheater] {
        client.dial(node.peer, node.addr.clone()).await?;
        let terms = NodeTerms { operator: node.operator.address(), tariff };
        operators.lock().unwrap().insert(node.peer, terms);
    }
    let check = SignatureCheck {
        domain: validation_domain(31337, alloy::primitives::Address::repeat_byte(7)),
        clock: NODE_EPOCHS,
        time: ChainClock::default(),
        operators: operators.clone(),
    };
    let config = RemoteModelConfig::for_model(&manifest, 0);
    let hops = HopClient::new(client.clone(), &config).verifying(check.clone());
    let books = tempfile::tempdir()?;
    let mut book = ResultBook::open(&books.path().join("results.json"))?;
    let hop =
        |node: &Served, first, last| Hop { peer: node.peer, first_block: first, last_block: last };
    let routes = [[hop(&head, 0, 0), hop(&honest, 1, 2)], [hop(&head, 0, 0), hop(&cheater, 1, 2)]];
    let (outcomes, book) = tokio::task::spawn_blocking(move || {
        let challenger = Challenger { hops: &hops, judge: Judge::default(), operators };
        let outcomes: Vec<_> = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                challenger.run(&set, i, route, 0, |node, passed| {
                    book.record(0, node, passed);
                })
            })
            .collect();
        (outcomes, book)
    })
    .await?;

    assert!(outcomes.iter().all(|o| o.stopped.is_none() && o.unsigned.is_empty()), "{outcomes:?}");
    assert_eq!((outcomes[0].passed, outcomes[0].failures.len()), (2 * steps, 0));
    assert_eq!((outcomes[1].passed, outcomes[1].failures.len()), (steps, steps));
    for failure in &outcomes[1].failures {
        assert_eq!(failure.peer, cheater.peer);
        assert!(matches!(failure.verdict, Verdict::Fail { .. }), "{:?}", failure.verdict);
        // The evidence: the cheater's operator signed this wrong output for this request,
        // and every step of the session before it on the cheater's span.
        let reported = failure.evidence.reported();
        let output_hash = infergrid::eip712::keccak256(&payload_bytes(&reported.output));
        assert_ne!(output_hash, failure.challenge.expected_output_hash);
        let request_hash = reported.request.request_hash();
        let attestation = ResponseAttestation { request_hash, output_hash, epoch: 0 };
        assert_eq!(
            attestation.sealed_by(&check.domain, &reported.seal)?,
            cheater.operator.address()
        );
        assert!(failure.reportable, "signed for the challenge set's epoch");
        assert_eq!(failure.evidence.steps.len(), failure.challenge.step + 1);
        let report =
            ReportedFault { node: cheater.operator.address(), epoch: 0, request_hash, output_hash };
        failure.evidence.check(&check.domain, &report)?;
        // A voter re-executing the evidence on its own blocks finds the same wrong answer.
        let recomputed = failure.evidence.reexecute(&own, 999)?;
        let Payload::Tensor(answer) = &reported.output else { panic!("a tensor answer") };
        assert!(!Judge::default().judge(&recomputed, answer).passed());
    }
    let counted: HashMap<_, _> = book.epoch(0).map(|r| (r.node, (r.passed, r.failed))).collect();
    let steps = steps as u32;
    assert_eq!(counted[&head.operator.address()], (2 * steps, 0));
    assert_eq!(counted[&honest.operator.address()], (steps, 0));
    assert_eq!(counted[&cheater.operator.address()], (0, steps));
    Ok(())
}
