//! The wire path: real libp2p swarms on loopback, a node serving blocks, a client chaining
//! them. What crosses the network must equal the in-process pipeline, bit for bit.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy::primitives::B256;
use infergrid::eip712::Eip712Signer;
use infergrid::engine::{Device, Runtime};
use infergrid::model::ModelManifest;
use infergrid::net::codec::{
    ErrorCode, InferRequest, InferResponse, Payload, StepKind, payload_bytes,
};
use infergrid::net::{NetConfig, Network};
use infergrid::serve::Admission;
use infergrid::validate::{AnswerSeal, ResponseAttestation, validation_domain};
use infergrid_e2e::models::{LlamaFixture, import, llama_fixture, make_checkpoint};
use infergrid_e2e::nodes::{NODE_EPOCHS, Served, network, serve_blocks};
use libp2p::{PeerId, identity};

/// Starts a node serving `blocks` of the model, admitting only `clients`.
fn serve(
    manifest: &ModelManifest,
    runtime: &Runtime,
    blocks: std::ops::RangeInclusive<usize>,
    clients: &[PeerId],
    key: u8,
) -> anyhow::Result<Served> {
    let admission = Admission::Peers(clients.iter().copied().collect::<HashSet<_>>());
    serve_with(manifest, runtime, blocks, admission, key)
}

/// Starts a node serving `blocks` of the model with `admission`.
fn serve_with(
    manifest: &ModelManifest,
    runtime: &Runtime,
    blocks: std::ops::RangeInclusive<usize>,
    admission: Admission,
    key: u8,
) -> anyhow::Result<Served> {
    serve_blocks(manifest, runtime, blocks, admission, None, B256::repeat_byte(key))
}

/// A step of session 1 at position 0 through block 0 of a made-up model: for peers that only
/// carry or refuse messages, and never look the model up.
fn unrouted_step(kind: StepKind, payload: Payload) -> InferRequest {
    InferRequest {
        model_id: [3; 32],
        first_block: 0,
        last_block: 0,
        session: 1,
        position: 0,
        kind,
        payment: None,
        payload,
    }
}

fn step(
    manifest: &ModelManifest,
    blocks: (u16, u16),
    position: u32,
    kind: StepKind,
    payload: Payload,
) -> InferRequest {
    InferRequest {
        model_id: manifest.id().0,
        first_block: blocks.0,
        last_block: blocks.1,
        session: 42,
        position,
        kind,
        payment: None,
        payload,
    }
}

fn output(response: InferResponse) -> Payload {
    match response {
        InferResponse::Ok { output, .. } => output,
        InferResponse::Err(e) => panic!("node refused: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_over_libp2p_match_the_in_process_pipeline() -> anyhow::Result<()> {
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "5", "--seed", "4"], 3)?;

    let (client, _client_inbound) = network(None)?;
    let first = serve(&manifest, &runtime, 0..=0, &[client.local_peer()], 1)?;
    let rest = serve(&manifest, &runtime, 1..=2, &[client.local_peer()], 2)?;
    client.dial(first.peer, first.addr.clone()).await?;
    client.dial(rest.peer, rest.addr.clone()).await?;

    // Greedy decoding through node 1 (block 0) then node 2 (blocks 1-2).
    let mut tokens = vec![1i64, 5, 9, 13];
    let mut position = 0u32;
    for i in 0..8 {
        let kind = if i == 0 { StepKind::Prefill } else { StepKind::Decode };
        let request = step(&manifest, (0, 0), position, kind, Payload::Tokens(tokens.clone()));
        let response = client.request(first.peer, request.clone()).await?;
        let InferResponse::Ok { output: hidden, signature, .. } = response else {
            panic!("refused: {response:?}")
        };
        // The answer is signed by the node's operator key over (request, output, epoch).
        let attestation = ResponseAttestation {
            request_hash: request.request_hash(),
            output_hash: infergrid::eip712::keccak256(&payload_bytes(&hidden)),
            epoch: NODE_EPOCHS.epoch_at(0),
        };
        let domain = validation_domain(31337, alloy::primitives::Address::repeat_byte(7));
        assert_eq!(attestation.signer(&domain, &signature)?, first.operator.address());

        let logits = output(
            client.request(rest.peer, step(&manifest, (1, 2), position, kind, hidden)).await?,
        );
        let Payload::Tensor(logits) = logits else { panic!("expected logits") };
        let expected = local.step(42, position as usize, &tokens)?;
        assert_eq!(logits, expected, "step {i}: network and in-process logits differ");
        position += tokens.len() as u32;
        let next =
            expected.last_row().iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
                as i64;
        tokens = vec![next];
    }
    assert_eq!(
        rest.operator.address(),
        Eip712Signer::from_bytes(&alloy::primitives::B256::repeat_byte(2))?.address()
    );

    // Typed refusals: wrong model, blocks not served, bad shapes, a lost session, a stranger.
    let refusal = |r: InferResponse| match r {
        InferResponse::Err(e) => e.code,
        InferResponse::Ok { .. } => panic!("expected a refusal"),
    };
    let mut wrong_model = step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(vec![1]));
    wrong_model.model_id = [9; 32];
    assert_eq!(refusal(client.request(first.peer, wrong_model).await?), ErrorCode::UnknownModel);
    let wrong_span = step(&manifest, (1, 2), 0, StepKind::Prefill, Payload::Tokens(vec![1]));
    assert_eq!(refusal(client.request(first.peer, wrong_span).await?), ErrorCode::BlocksNotServed);
    let bad_shape = infergrid::engine::Activation::new(vec![1, 1, 7], vec![0.0; 7])?;
    let bad = step(&manifest, (1, 2), 0, StepKind::Prefill, Payload::Tensor(bad_shape));
    assert_eq!(refusal(client.request(rest.peer, bad).await?), ErrorCode::BadInput);
    let lost = step(&manifest, (0, 0), 99, StepKind::Decode, Payload::Tokens(vec![1]));
    assert_eq!(refusal(client.request(first.peer, lost).await?), ErrorCode::SessionLost);

    let (stranger, _inbound) = network(None)?;
    stranger.dial(first.peer, first.addr.clone()).await?;
    let request = step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(vec![1]));
    assert_eq!(refusal(stranger.request(first.peer, request).await?), ErrorCode::NotAdmitted);
    Ok(())
}

/// A node serving a whole model answers Draft steps with the in-process model's greedy
/// continuation, signed; a later draft step at an earlier position rolls the session back (as
/// a verify step's rejected drafts are); and every malformed draft step is refused with
/// BadInput before any compute (the session is untouched): no guesses, too many, no tokens,
/// guesses past the context, a draft payload in another kind of step, a draft step without
/// one, and a span that is not the whole model.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_model_node_drafts_the_greedy_continuation_and_refuses_bad_draft_steps()
-> anyhow::Result<()> {
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "3", "--seed", "8"], 3)?;
    let (client, _client_inbound) = network(None)?;
    let whole = serve(&manifest, &runtime, 0..=2, &[client.local_peer()], 1)?;
    let part = serve(&manifest, &runtime, 0..=0, &[client.local_peer()], 2)?;
    client.dial(whole.peer, whole.addr.clone()).await?;
    client.dial(part.peer, part.addr.clone()).await?;

    // What the model in one process continues greedily after `context`, `count` tokens.
    let greedy = |context: &[i64], count: usize| -> anyhow::Result<Vec<i64>> {
        let session = 7;
        let (mut input, mut position, mut out) = (context.to_vec(), 0, Vec::new());
        while out.len() < count {
            let logits = local.step(session, position, &input)?;
            position += input.len();
            let next = i64::from(infergrid::generate::argmax(logits.last_row()));
            out.push(next);
            input = vec![next];
        }
        local.close(session);
        Ok(out)
    };
    let draft = |position: u32, tokens: Vec<i64>, guesses: u16| {
        step(&manifest, (0, 2), position, StepKind::Draft, Payload::Draft { tokens, guesses })
    };
    let prompt = vec![1i64, 5, 9, 13, 2];
    let request = draft(0, prompt.clone(), 4);
    let response = client.request(whole.peer, request.clone()).await?;
    let InferResponse::Ok { output: answer, signature, .. } = response else {
        panic!("{response:?}")
    };
    let guesses = greedy(&prompt, 4)?;
    assert_eq!(answer, Payload::Tokens(guesses.clone()), "the node's guesses are not greedy");
    let attestation = ResponseAttestation {
        request_hash: request.request_hash(),
        output_hash: infergrid::eip712::keccak256(&payload_bytes(&answer)),
        epoch: NODE_EPOCHS.epoch_at(0),
    };
    let domain = validation_domain(31337, alloy::primitives::Address::repeat_byte(7));
    assert_eq!(attestation.signer(&domain, &signature)?, whole.operator.address());

    // Two guesses kept, then another token instead of the third: the session (holding the
    // prompt and three guesses) is rolled back to the prompt and two guesses.
    let mut context = [&prompt[..], &guesses[..2]].concat();
    let other = (guesses[2] + 1) % manifest.config.vocab_size as i64;
    let response = client.request(whole.peer, draft(context.len() as u32, vec![other], 3)).await?;
    context.push(other);
    let second = greedy(&context, 3)?;
    assert_eq!(output(response), Payload::Tokens(second.clone()), "after a rollback");

    let refusal = |r: InferResponse| match r {
        InferResponse::Err(e) => (e.code, e.message),
        InferResponse::Ok { .. } => panic!("expected a refusal"),
    };
    let decode_with_draft = step(
        &manifest,
        (0, 2),
        0,
        StepKind::Decode,
        Payload::Draft { tokens: vec![1], guesses: 2 },
    );
    let draft_with_tokens = step(&manifest, (0, 2), 0, StepKind::Draft, Payload::Tokens(vec![1]));
    let part_draft =
        step(&manifest, (0, 0), 0, StepKind::Draft, Payload::Draft { tokens: vec![1], guesses: 2 });
    // Up to the context's last position, but its guesses would go past it.
    let limit = manifest.config.max_positions;
    let too_long = draft(0, vec![1; limit - 1], 3);
    for (peer, bad) in [
        (whole.peer, draft(0, vec![1], 0)),
        (whole.peer, draft(0, vec![1], 17)),
        (whole.peer, draft(0, vec![1], u16::MAX)),
        (whole.peer, draft(0, vec![], 2)),
        (whole.peer, too_long),
        (whole.peer, decode_with_draft),
        (whole.peer, draft_with_tokens),
        (part.peer, part_draft),
    ] {
        let (code, message) = refusal(client.request(peer, bad.clone()).await?);
        assert_eq!(code, ErrorCode::BadInput, "{:?}: {message}", bad.payload);
        assert!(message.contains("draft"), "not refused by the draft checks: {message}");
    }
    // None of them ran: each was at position 0 of the same session, which would have
    // restarted it. It still holds the context and two guesses, and goes on from there.
    let held = context.len() as u32 + 2;
    let response = client.request(whole.peer, draft(held, vec![second[2]], 2)).await?;
    let continued = [&context[..], &second[..]].concat();
    assert_eq!(output(response), Payload::Tokens(greedy(&continued, 2)?), "after the refusals");
    Ok(())
}

fn candidate(served: &Served, blocks: (u16, u16), rtt_ms: f64) -> infergrid::route::Candidate {
    infergrid::route::Candidate {
        peer: served.peer,
        first_block: blocks.0,
        last_block: blocks.1,
        rtt_ms: Some(rtt_ms),
        compute_ms: Some(1.0),
        active_sessions: 0,
        free_cache_tokens: None,
        reputation_bps: None,
        price_wei_per_token: None,
        relayed: false,
    }
}

/// Greedy decoding through a remote model: the chosen ids.
fn greedy(
    model: &mut impl infergrid::generate::TextModel,
    session: u64,
    prompt: &[i64],
    steps: usize,
    mut before_step: impl FnMut(usize),
) -> Vec<i64> {
    let (mut input, mut position, mut ids) = (prompt.to_vec(), 0, Vec::new());
    for step in 0..steps {
        before_step(step);
        let logits = model.next_logits(session, position, &input).expect("step");
        position += input.len();
        let next = i64::from(infergrid::generate::argmax(&logits));
        ids.push(next);
        input = vec![next];
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_dying_mid_generation_fails_over_to_a_replica_with_identical_output()
-> anyhow::Result<()> {
    use infergrid::gateway::{RemoteModel, RemoteModelConfig};
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "5", "--seed", "6"], 3)?;

    let (client, _inbound) = network(None)?;
    let me = [client.local_peer()];
    let head = serve(&manifest, &runtime, 0..=0, &me, 1)?;
    let tail = serve(&manifest, &runtime, 1..=2, &me, 2)?;
    let replica = serve(&manifest, &runtime, 1..=2, &me, 3)?;
    for s in [&head, &tail, &replica] {
        client.dial(s.peer, s.addr.clone()).await?;
    }
    // The replica looks slower, so the route uses `tail` until it dies.
    let directory = Arc::new(std::sync::Mutex::new(vec![
        candidate(&head, (0, 0), 1.0),
        candidate(&tail, (1, 2), 1.0),
        candidate(&replica, (1, 2), 20.0),
    ]));
    let config =
        RemoteModelConfig { eos_ids: Vec::new(), ..RemoteModelConfig::for_model(&manifest, 3) };
    let mut remote = RemoteModel::new(client.clone(), config, directory);
    let tail_net = tail.net.clone();
    let handle = tokio::runtime::Handle::current();
    let prompt = [1i64, 8, 27, 64];
    let (clean, failed_over, failovers, reference) = tokio::task::spawn_blocking(move || {
        let clean = greedy(&mut remote, 1, &prompt, 16, |_| {});
        let failed_over = greedy(&mut remote, 2, &prompt, 16, |step| {
            if step == 6 {
                handle.block_on(tail_net.shutdown()).expect("shutdown");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let reference = greedy(&mut &local, 3, &prompt, 16, |_| {});
        (clean, failed_over, remote.failovers(), reference)
    })
    .await?;

    assert_eq!(clean, reference, "remote greedy output differs from the in-process pipeline");
    assert_eq!(failed_over, clean, "failover changed the output");
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    assert_eq!(failovers[0].failed_peer, tail.peer);
    assert!(failovers[0].replacement.iter().any(|h| h.peer == replica.peer));
    eprintln!(
        "failover: {} died at step 6, stall {:.1} ms (replay of 6 steps included)",
        tail.peer,
        failovers[0].stall.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Clients of the retired versions 1 and 2 get an answer they can decode — `Malformed` in
/// their own response format (`IGS1`), naming the version the node speaks — instead of a bare
/// negotiation failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_of_a_retired_version_is_told_which_version_to_speak() -> anyhow::Result<()> {
    let LlamaFixture { dir: _model_dir, manifest, runtime, .. } =
        llama_fixture(&["--layers", "2", "--seed", "4"], 1)?;
    // Nobody is admitted: the version is refused before admission is looked at.
    let node = serve(&manifest, &runtime, 0..=0, &[], 1)?;
    for (version, magic) in [("/infergrid/infer/1", b"IGQ1"), ("/infergrid/infer/2", b"IGQ2")] {
        let old = step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(vec![1, 2]));
        let mut bytes = old.encode();
        bytes[..4].copy_from_slice(magic);
        let answer =
            infergrid_e2e::versions::ask_over(version, node.peer, node.addr.clone(), bytes)
                .await?
                .expect("the node accepts the retired version's streams");
        // What an old client reads: `IGS1`, status 1, code u16, length u32, the message.
        assert_eq!(&answer[..7], b"IGS1\x01\x01\x00", "{version}: {answer:?}");
        let len = u32::from_le_bytes(answer[7..11].try_into()?) as usize;
        assert_eq!(answer.len(), 11 + len, "{version}: nothing after the message");
        let message = std::str::from_utf8(&answer[11..])?;
        assert!(
            message.contains(&format!("{version} is retired"))
                && message.contains("speaks /infergrid/infer/3"),
            "{message}"
        );
    }
    // A version this build never knew is refused at negotiation.
    let unknown = infergrid_e2e::versions::ask_over(
        "/infergrid/infer/9",
        node.peer,
        node.addr.clone(),
        Vec::new(),
    )
    .await?;
    assert!(unknown.is_err_and(|e| e.contains("protocol")), "an unknown version was accepted");
    Ok(())
}

/// Identify names the swarm (`/infergrid/id/1`): a peer of another network is let go (and
/// kept out of the DHT), not banned; a peer of this swarm stays connected.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_of_another_swarm_is_let_go() -> anyhow::Result<()> {
    use infergrid_e2e::versions::stays_connected_as;
    let LlamaFixture { dir: _model_dir, manifest, runtime, .. } =
        llama_fixture(&["--layers", "2", "--seed", "4"], 1)?;
    let node = serve(&manifest, &runtime, 0..=0, &[], 1)?;
    let after = Duration::from_secs(3);
    let ours = stays_connected_as(infergrid::net::SWARM_ID, node.peer, node.addr.clone(), after);
    assert!(ours.await?, "a peer of this swarm was disconnected");
    let theirs = stays_connected_as("/ipfs/0.1.0", node.peer, node.addr.clone(), after);
    assert!(!theirs.await?, "a peer of another swarm stayed connected");
    Ok(())
}

/// The cheapest route starts at a peer speaking another protocol version — one refusing ours
/// at negotiation, then a newer node refusing it as retired: each time the gateway fails over
/// to the node that speaks its own, with the in-process output, and leaves the other peer out
/// of routes without banning it.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_speaking_another_version_is_routed_around_not_banned() -> anyhow::Result<()> {
    use infergrid::gateway::{RemoteModel, RemoteModelConfig};
    use infergrid::net::codec::WireError;
    use infergrid_e2e::versions::speaking_only;
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "3", "--seed", "8"], 1)?;
    let local = Arc::new(local);
    let (client, _inbound) = network(None)?;
    let node = serve(&manifest, &runtime, 0..=0, &[client.local_peer()], 1)?;
    client.dial(node.peer, node.addr.clone()).await?;
    // A newer node refuses our version in our own response format.
    let retired = InferResponse::Err(WireError::new(
        ErrorCode::Malformed,
        "malformed request: /infergrid/infer/3 is retired: this node speaks /infergrid/infer/4 \
         (protocol-spec/wire.md, \"Versions\"); upgrade",
    ));
    let peers = [
        (speaking_only("/infergrid/infer/4", None).await?, "does not speak /infergrid/infer/3"),
        (speaking_only("/infergrid/infer/3", Some(retired.encode())).await?, "is retired"),
    ];
    for ((other, other_addr, task), reason) in peers {
        client.dial(other, other_addr).await?;
        let mut preferred = candidate(&node, (0, 0), 1.0);
        preferred.peer = other;
        let directory =
            Arc::new(std::sync::Mutex::new(vec![preferred, candidate(&node, (0, 0), 30.0)]));
        let config =
            RemoteModelConfig { eos_ids: Vec::new(), ..RemoteModelConfig::for_model(&manifest, 1) };
        let mut remote = RemoteModel::new(client.clone(), config, directory);
        let status = remote.open();
        let reference_model = local.clone();
        let prompt = [3i64, 1, 4, 1, 5];
        let (ids, again, reference, failovers) = tokio::task::spawn_blocking(move || {
            let ids = greedy(&mut remote, 1, &prompt, 6, |_| {});
            let again = greedy(&mut remote, 2, &prompt, 6, |_| {});
            let reference = greedy(&mut &*reference_model, 3, &prompt, 6, |_| {});
            (ids, again, reference, remote.failovers())
        })
        .await?;
        task.abort();
        assert_eq!(ids, reference, "{reason}");
        assert_eq!(again, ids, "{reason}");
        assert_eq!(failovers.len(), 1, "one failover, then routes leave it out: {failovers:?}");
        assert_eq!(failovers[0].failed_peer, other);
        assert!(failovers[0].reason.contains(reason), "{failovers:?}");
        assert_eq!(status.banned_peers(), 0, "a peer of another version is not banned ({reason})");
    }
    Ok(())
}

/// A peer that does not speak our protocol is told so at negotiation, whatever the request's
/// size: one position, or hidden states well past the stream's 256 KiB window. (Under lazy
/// negotiation, tried and dropped, the long request was still being written when the peer
/// reset the stream, and the refusal read as a failed peer that may have run the step.)
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_refusing_our_version_is_told_apart_whatever_the_request_size() -> anyhow::Result<()>
{
    use infergrid::net::NetError;
    use infergrid_e2e::versions::speaking_only;
    let (client, _inbound) = network(None)?;
    let (other, other_addr, task) = speaking_only("/infergrid/infer/4", None).await?;
    client.dial(other, other_addr).await?;
    for positions in [1usize, 4096] {
        let width = 64;
        let hidden = infergrid::engine::Activation::new(
            vec![1, positions, width],
            vec![0.5; positions * width],
        )?;
        let request = unrouted_step(StepKind::Prefill, Payload::Tensor(hidden));
        let result = client.request(other, request).await;
        assert!(
            matches!(&result, Err(e @ NetError::Unsupported { .. }) if !e.may_have_run()),
            "{positions} positions: {result:?}"
        );
    }
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_peers_staked_on_chain_are_admitted_and_routed_to() -> anyhow::Result<()> {
    use infergrid::chain::connect_reader;
    use infergrid::devnet::Role;
    use infergrid::gateway::Directory;
    use infergrid::identity::NodeIdentity;
    use infergrid_e2e::{Chain, btt, dev};

    let dir = tempfile::tempdir()?;
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "2"])?;
    let model_dir = import(&hf, &dir.path().join("m"), 1)?;
    let manifest = ModelManifest::load(&model_dir)?;
    let runtime = Runtime::new(Device::Cpu, None)?;

    // A staked operator whose node identity is registered for block 0 of the model.
    let chain = Chain::start().await?;
    let staked = dev(Role::Operator, 0);
    let operator = chain.register_node(&staked, manifest.id(), (0, 0), btt("0.000001")).await?;
    let staked_identity = NodeIdentity::derive(&staked.private_key);
    let staked_peer = staked_identity.peer_id();

    let reader_provider = connect_reader(chain.anvil.url()).await?;
    let reader = infergrid::chain::Registry::new(
        chain.deployment.contracts.registry,
        reader_provider.clone(),
    );
    let admission = Admission::Registry { allowed: HashSet::new(), registry: reader.clone() };
    let server = serve_with(&manifest, &runtime, 0..=0, admission, 5)?;

    let connect = |keypair: identity::Keypair| {
        Network::spawn(NetConfig {
            keypair,
            listen: vec![],
            bootstrap: vec![],
            request_timeout: Duration::from_secs(30),
            nat: Default::default(),
        })
    };
    let (staked_client, _a) = connect(staked_identity.keypair())?;
    let unstaked = NodeIdentity::derive(&dev(Role::Validator, 0).private_key);
    let (unstaked_client, _b) = connect(unstaked.keypair())?;
    for c in [&staked_client, &unstaked_client] {
        c.dial(server.peer, server.addr.clone()).await?;
    }
    let request = || step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(vec![1, 2]));
    assert!(matches!(
        staked_client.request(server.peer, request()).await?,
        InferResponse::Ok { .. }
    ));
    let refused =
        |r: InferResponse| matches!(r, InferResponse::Err(e) if e.code == ErrorCode::NotAdmitted);
    assert!(
        refused(unstaked_client.request(server.peer, request()).await?),
        "an unregistered peer was served"
    );

    // The gateway's directory lists exactly the registered, staked nodes...
    let validation = infergrid::chain::ValidationClient::new(
        chain.deployment.contracts.validation,
        reader_provider.clone(),
    );
    let directory = Directory::new(reader.clone(), validation, manifest.id(), 1);
    assert_eq!(directory.refresh(&unstaked_client).await?, 1);
    assert_eq!(directory.candidates().lock().unwrap()[0].peer, staked_peer);
    // ...and once the operator unbonds below the minimum stake, neither admits nor lists it.
    operator.registry.request_unbond(btt("9500")).await?;
    assert!(
        refused(staked_client.request(server.peer, request()).await?),
        "an unstaked peer was served"
    );
    assert_eq!(directory.refresh(&unstaked_client).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_cross_quic_as_well_as_tcp() -> anyhow::Result<()> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let keypair = identity::Keypair::generate_ed25519();
    let server_peer = keypair.public().to_peer_id();
    let (_server, mut inbound) = Network::spawn(NetConfig {
        keypair,
        listen: vec![format!("/ip4/127.0.0.1/udp/{port}/quic-v1").parse()?],
        bootstrap: vec![],
        request_timeout: Duration::from_secs(30),
        nat: Default::default(),
    })?;
    tokio::spawn(async move {
        while let Some(infergrid::net::Inbound::Request { request: Ok(request), reply, .. }) =
            inbound.recv().await
        {
            let _ = reply.send(InferResponse::Ok {
                output: request.payload,
                signature: [1; 65],
                account: None,
            });
        }
    });
    let (client, _rx) = network(None)?;
    client
        .dial(server_peer, format!("/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{server_peer}").parse()?)
        .await?;
    let payload = Payload::Tensor(infergrid::engine::Activation::new(
        vec![1, 1, 8],
        (0..8).map(|v| v as f32).collect(),
    )?);
    let request = unrouted_step(StepKind::Decode, payload.clone());
    assert_eq!(
        client.request(server_peer, request).await?,
        InferResponse::Ok { output: payload, signature: [1; 65], account: None }
    );
    Ok(())
}

/// A peer that answers every request with a tensor of width 0 — the answer that used to
/// panic the gateway's sampler — correctly signed by its operator `key`.
fn serve_empty_answers(key: u8) -> anyhow::Result<(PeerId, libp2p::Multiaddr, Eip712Signer)> {
    use infergrid::eip712::keccak256;
    use infergrid::engine::Activation;
    use infergrid::net::Inbound;
    use infergrid::net::steps::SealedAnswers;
    use infergrid::validate::seal_answers;
    let port = infergrid_e2e::procs::free_port();
    let (net, mut inbound) = network(Some(port))?;
    let peer = net.local_peer();
    let operator = Eip712Signer::from_bytes(&B256::repeat_byte(key))?;
    let signer = operator.clone();
    let domain = validation_domain(31337, alloy::primitives::Address::repeat_byte(7));
    tokio::spawn(async move {
        let _swarm = net; // keeps the swarm running as long as requests come
        let empty = |request: &InferRequest| {
            let output = Payload::Tensor(
                Activation::new(vec![1, request.payload.positions(), 0], vec![]).unwrap(),
            );
            ((request.request_hash(), keccak256(&payload_bytes(&output))), output)
        };
        while let Some(message) = inbound.recv().await {
            match message {
                Inbound::Request { request: Ok(request), reply, .. } => {
                    let ((request_hash, output_hash), output) = empty(&request);
                    let attestation = ResponseAttestation { request_hash, output_hash, epoch: 0 };
                    let signature = attestation.sign(&domain, &signer);
                    let _ = reply.send(InferResponse::Ok { output, signature, account: None });
                }
                // Signed once for the message, as a node does.
                Inbound::Steps { steps, reply, .. } => {
                    let (signed, answers): (Vec<_>, Vec<_>) = steps
                        .iter()
                        .map(|step| {
                            let (hashes, output) = empty(step.as_ref().expect("a step"));
                            let answer =
                                InferResponse::Ok { output, signature: [0; 65], account: None };
                            (hashes, answer)
                        })
                        .unzip();
                    let seal = seal_answers(&domain, &signer, 0, &signed).expect("answers");
                    let _ = reply.send(SealedAnswers { answers, seal });
                }
                _ => {}
            }
        }
    });
    Ok((peer, format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}").parse()?, operator))
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_forged_answers_are_refused_banned_and_routed_around() -> anyhow::Result<()> {
    use infergrid::gateway::{RemoteModel, RemoteModelConfig, SignatureCheck, TermsBook};
    use infergrid::pay::NodeTerms;
    use infergrid::pay::meter::Tariff;
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "4", "--seed", "8"], 2)?;

    let (client, _inbound) = network(None)?;
    let me = [client.local_peer()];
    let head = serve(&manifest, &runtime, 0..=0, &me, 1)?;
    // Computes honestly but signs with a key that is not its registered operator's.
    let forger = serve(&manifest, &runtime, 1..=1, &me, 2)?;
    let (empty, empty_addr, empty_operator) = serve_empty_answers(3)?;
    let honest = serve(&manifest, &runtime, 1..=1, &me, 4)?;
    for (peer, addr) in [
        (head.peer, head.addr.clone()),
        (forger.peer, forger.addr.clone()),
        (empty, empty_addr.clone()),
        (honest.peer, honest.addr.clone()),
    ] {
        client.dial(peer, addr).await?;
    }
    let registered = |operator: &Eip712Signer| NodeTerms {
        operator: operator.address(),
        tariff: Tariff { price_per_token: alloy::primitives::U256::from(1), span_blocks: 1 },
    };
    let claimed = Eip712Signer::from_bytes(&B256::repeat_byte(9))?;
    let operators: TermsBook = Arc::new(std::sync::Mutex::new(
        [
            (head.peer, registered(&head.operator)),
            (forger.peer, registered(&claimed)),
            (empty, registered(&empty_operator)),
            (honest.peer, registered(&honest.operator)),
        ]
        .into(),
    ));
    // The bad peers look closest, so they are tried first: the empty one, then the forger.
    let mut directory = vec![
        candidate(&head, (0, 0), 1.0),
        candidate(&forger, (1, 1), 2.0),
        candidate(&honest, (1, 1), 30.0),
    ];
    directory.push(infergrid::route::Candidate { peer: empty, ..candidate(&honest, (1, 1), 1.0) });
    let check = SignatureCheck {
        domain: validation_domain(31337, alloy::primitives::Address::repeat_byte(7)),
        clock: NODE_EPOCHS,
        time: infergrid::validate::ChainClock::default(),
        operators,
    };
    let config =
        RemoteModelConfig { eos_ids: Vec::new(), ..RemoteModelConfig::for_model(&manifest, 3) };
    let mut remote =
        RemoteModel::new(client.clone(), config, Arc::new(std::sync::Mutex::new(directory)))
            .verifying(check);
    let prompt = [3i64, 1, 4, 1, 5];
    let (ids, failovers, reference) = tokio::task::spawn_blocking(move || {
        let ids = greedy(&mut remote, 1, &prompt, 12, |_| {});
        // A second generation goes straight to the honest route: the bad peers stay banned.
        let again = greedy(&mut remote, 2, &prompt, 12, |_| {});
        assert_eq!(again, ids);
        let reference = greedy(&mut &local, 3, &prompt, 12, |_| {});
        (ids, remote.failovers(), reference)
    })
    .await?;
    assert_eq!(ids, reference, "output through the surviving route differs");
    assert_eq!(failovers.len(), 1, "one stalled step, two peers refused in it: {failovers:?}");
    let reason = &failovers[0].reason;
    assert_eq!(failovers[0].failed_peer, empty);
    assert!(reason.contains("invalid answer: answer shape [1, 5, 0]"), "{reason}");
    assert!(failovers[0].replacement.iter().any(|h| h.peer == honest.peer), "{failovers:?}");
    assert!(!failovers[0].replacement.iter().any(|h| h.peer == forger.peer), "{failovers:?}");
    Ok(())
}

/// One peer opening sessions past its quota is refused `Overloaded` before any compute, while
/// another peer's session on the same node goes on untouched; a flood of steps beyond the
/// node's queue bound is shed with `Overloaded`, never answered wrong, and the node still
/// serves afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_over_its_quota_or_a_flood_is_refused_and_others_are_unaffected()
-> anyhow::Result<()> {
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "3", "--seed", "4"], 1)?;
    let (hog, _hog_inbound) = network(None)?;
    let (user, _user_inbound) = network(None)?;
    let limits = infergrid::serve::ServeLimits {
        max_queued_steps: 4,
        sessions_per_peer: 3,
        tokens_per_peer: 64,
        idle_ttl: Duration::from_secs(600),
    };
    let admission = Admission::Peers([hog.local_peer(), user.local_peer()].into_iter().collect());
    let node = infergrid_e2e::nodes::serve_limited(
        &manifest,
        &runtime,
        0..=0,
        admission,
        B256::repeat_byte(9),
        limits,
    )?;
    hog.dial(node.peer, node.addr.clone()).await?;
    user.dial(node.peer, node.addr.clone()).await?;
    let prefill = |session: u64, tokens: Vec<i64>| InferRequest {
        session,
        ..step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(tokens))
    };
    let code = |r: InferResponse| match r {
        InferResponse::Err(e) => (e.code, e.message),
        InferResponse::Ok { .. } => (ErrorCode::Internal, "answered".to_owned()),
    };

    // The user's session is open before the hog arrives.
    output(user.request(node.peer, prefill(7, vec![1, 2, 3])).await?);
    for session in 0..3 {
        output(hog.request(node.peer, prefill(session, vec![1, 2])).await?);
    }
    let (refused, why) = code(hog.request(node.peer, prefill(3, vec![1, 2])).await?);
    assert_eq!(refused, ErrorCode::Overloaded, "{why}");
    assert!(why.contains("3 sessions"), "{why}");
    let (refused, why) = code(hog.request(node.peer, prefill(0, vec![1; 70])).await?);
    assert_eq!(refused, ErrorCode::Overloaded, "{why}");
    assert!(why.contains("KV-cache tokens"), "{why}");
    // Closing frees the hog's room; its quota never touched the user.
    output(
        hog.request(node.peer, step(&manifest, (0, 0), 0, StepKind::Close, Payload::Empty)).await?,
    );
    let close =
        InferRequest { session: 1, ..step(&manifest, (0, 0), 0, StepKind::Close, Payload::Empty) };
    output(hog.request(node.peer, close).await?);
    output(hog.request(node.peer, prefill(3, vec![1, 2])).await?);
    let decode = InferRequest {
        session: 7,
        ..step(&manifest, (0, 0), 3, StepKind::Decode, Payload::Tokens(vec![4]))
    };
    let Payload::Tensor(logits) = output(user.request(node.peer, decode).await?) else {
        panic!("expected logits")
    };
    local.step(1, 0, &[1, 2, 3])?;
    assert_eq!(logits, local.step(1, 3, &[4])?, "the user's session continued exactly");

    // 1,000 prefills at once from the hog, each on a stream of its own: each is answered
    // within the quota, refused `Overloaded`, or refused by the transport (too many streams
    // on one connection) — never served past the quota — and the user is still served.
    let mut flood = tokio::task::JoinSet::new();
    for session in 1_000..2_000 {
        let (hog, peer, request) = (hog.clone(), node.peer, prefill(session, vec![1, 2]));
        flood.spawn(async move { hog.request(peer, request).await });
    }
    let (mut served, mut overloaded, mut transport) = (0, 0, 0);
    while let Some(answer) = flood.join_next().await {
        match answer? {
            Ok(InferResponse::Ok { .. }) => served += 1,
            Ok(InferResponse::Err(e)) => {
                assert_eq!(e.code, ErrorCode::Overloaded, "{e}");
                overloaded += 1;
            }
            Err(_) => transport += 1,
        }
    }
    eprintln!(
        "1,000 streams at once: {served} served, {overloaded} refused Overloaded, {transport} refused by the transport"
    );
    assert!(served <= 1, "the hog holds 2 of its 3 sessions; {served} more were served");
    assert!(overloaded > 0, "nothing was refused Overloaded");
    output(user.request(node.peer, prefill(8, vec![5])).await?);
    Ok(())
}

/// Decode steps of concurrent sessions reach one node together and run in shared engine
/// calls: every session's greedy ids equal its run alone, logits within float noise.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_decode_steps_are_batched_and_answered_as_alone() -> anyhow::Result<()> {
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "3", "--seed", "6"], 1)?;
    let (client, _inbound) = network(None)?;
    let node = serve(&manifest, &runtime, 0..=0, &[client.local_peer()], 4)?;
    client.dial(node.peer, node.addr.clone()).await?;
    let prompt = |s: i64| (0..2 + s).map(|t| 5 + 11 * s + t).collect();
    let sessions =
        greedy_sessions(&client, node.peer, Arc::new(manifest), prompt, 10, Send::Alone).await?;
    let largest_gap = largest_gap_to_alone(&local, &sessions)?;
    let (batches, steps, largest) = node.server.batcher.stats().read();
    eprintln!(
        "8 concurrent sessions: {steps} decode steps in {batches} engine calls (largest {largest}); largest logit gap {largest_gap:.2e}"
    );
    assert_eq!(steps, 8 * 9, "every decode step went through the batcher");
    assert!(largest >= 2, "no two sessions' steps ever shared an engine call");
    assert!(largest_gap < 1e-4, "batched logits drift {largest_gap}");
    Ok(())
}

/// How a session's steps go to the node.
#[derive(Debug, Clone)]
enum Send {
    /// A stream each (`Network::request`).
    Alone,
    /// With other sessions' steps to the node (`Network::step`), every answer's signature
    /// checked by `check` (alone, or the message's seal by the answer's proof), and the
    /// answers that came with a proof counted in `sealed`.
    Shared { check: infergrid::gateway::SignatureCheck, sealed: Arc<AtomicUsize> },
}

/// What one greedy session sent and got: its prompt, the ids it chose, each step's last row
/// of logits.
type GreedyRun = (Vec<i64>, Vec<i64>, Vec<Vec<f32>>);

/// Eight sessions (prompts from `prompt`) decoding greedily at once through block 0 of a
/// one-block node, `steps` steps each (the prefill first).
async fn greedy_sessions(
    client: &Network,
    peer: PeerId,
    manifest: Arc<ModelManifest>,
    prompt: fn(i64) -> Vec<i64>,
    steps: usize,
    send: Send,
) -> anyhow::Result<Vec<GreedyRun>> {
    let vocab = manifest.config.vocab_size;
    let mut sessions = tokio::task::JoinSet::new();
    for s in 0..8u64 {
        let (client, manifest, send) = (client.clone(), manifest.clone(), send.clone());
        sessions.spawn(async move {
            let prompt = prompt(s as i64);
            let mut position = 0u32;
            let (mut input, mut ids, mut rows) = (prompt.clone(), Vec::new(), Vec::new());
            for i in 0..steps {
                let kind = if i == 0 { StepKind::Prefill } else { StepKind::Decode };
                let request = InferRequest {
                    session: s,
                    ..step(&manifest, (0, 0), position, kind, Payload::Tokens(input.clone()))
                };
                let answer = match &send {
                    Send::Alone => client.request(peer, request).await?,
                    Send::Shared { check, sealed } => {
                        let request_hash = request.request_hash();
                        let answer_bytes = 512 + 4 * input.len() * vocab;
                        let answer = client.step(peer, request, request_hash, answer_bytes).await?;
                        if let InferResponse::Ok { output, signature, .. } = &answer.response {
                            let output_hash = infergrid::eip712::keccak256(&payload_bytes(output));
                            let (proof, memo) = match &answer.in_message {
                                Some(sealed_with_others) => {
                                    sealed.fetch_add(1, Ordering::Relaxed);
                                    assert_eq!(sealed_with_others.output_hash, output_hash);
                                    let memo = Some(&*sealed_with_others.memo);
                                    (sealed_with_others.proof.clone(), memo)
                                }
                                None => (Vec::new(), None),
                            };
                            let seal = AnswerSeal { signature: *signature, proof };
                            check.check(&peer, request_hash, output_hash, &seal, memo)?;
                        }
                        answer.response
                    }
                };
                let Payload::Tensor(logits) = output(answer) else { panic!("expected logits") };
                position += input.len() as u32;
                let next = argmax(logits.last_row());
                rows.push(logits.last_row().to_vec());
                ids.push(next);
                input = vec![next];
            }
            anyhow::Ok((prompt, ids, rows))
        });
    }
    let mut runs = Vec::new();
    while let Some(done) = sessions.join_next().await {
        runs.push(done??);
    }
    Ok(runs)
}

fn argmax(row: &[f32]) -> i64 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as i64
}

/// Checks each session's ids against the same session run alone in one process, and returns
/// the largest difference of a logit.
fn largest_gap_to_alone(
    local: &infergrid::engine::Pipeline,
    sessions: &[GreedyRun],
) -> anyhow::Result<f32> {
    let mut largest_gap = 0f32;
    for (prompt, ids, rows) in sessions {
        let alone = 9_000 + prompt.len() as u64;
        let mut logits = local.step(alone, 0, prompt)?;
        for (i, (&id, row)) in ids.iter().zip(rows).enumerate() {
            assert_eq!(argmax(logits.last_row()), id, "session with prompt {prompt:?}: step {i}");
            let gap =
                row.iter().zip(logits.last_row()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            largest_gap = largest_gap.max(gap);
            logits = local.step(alone, prompt.len() + i, &[id])?;
        }
    }
    Ok(largest_gap)
}

/// A stranger (not admitted, not paying) sends a frame near the wire's 64 MiB limit, then one
/// over it: each is refused with a clear error, nothing computed; a tensor header claiming
/// far more data than the frame carries fails to decode at the frame's end; and an admitted
/// peer's session on the same node goes on exactly.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_lying_frames_from_a_stranger_are_refused_and_others_unaffected()
-> anyhow::Result<()> {
    use infergrid::net::codec::MAX_MESSAGE_BYTES;
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "3", "--seed", "4"], 1)?;
    let (user, _user_inbound) = network(None)?;
    let (stranger, _stranger_inbound) = network(None)?;
    let node = serve(&manifest, &runtime, 0..=0, &[user.local_peer()], 5)?;
    user.dial(node.peer, node.addr.clone()).await?;
    stranger.dial(node.peer, node.addr.clone()).await?;
    output(
        user.request(
            node.peer,
            step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(vec![1, 2])),
        )
        .await?,
    );

    // A tensor filling a frame to within 64 KiB of the limit, then one over it.
    let fits = (MAX_MESSAGE_BYTES - (64 << 10)) / 4;
    let frame = |values: usize| -> anyhow::Result<InferRequest> {
        let tensor = infergrid::engine::Activation::new(vec![1, 1, values], vec![0.5; values])?;
        Ok(step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tensor(tensor)))
    };
    let refusal = |r: InferResponse| match r {
        InferResponse::Err(e) => (e.code, e.message),
        InferResponse::Ok { .. } => panic!("a stranger was served"),
    };
    let (code, why) = refusal(stranger.request(node.peer, frame(fits)?).await?);
    assert_eq!(code, ErrorCode::NotAdmitted, "{why}");
    let (code, why) = refusal(stranger.request(node.peer, frame(fits + (32 << 10))?).await?);
    assert_eq!(code, ErrorCode::Malformed, "{why}");
    assert!(why.contains("exceeds the limit"), "{why}");
    // A tensor header claiming 2^30 values over 16 bytes: the decoder takes values only from
    // the bytes present, so it stops at the end of the message, allocating nothing for the
    // claim.
    let mut lying = frame(4)?.encode();
    let dims_at = lying.len() - 4 * 4 - 3 * 4;
    lying[dims_at + 8..dims_at + 12].copy_from_slice(&(1u32 << 30).to_le_bytes());
    assert_eq!(
        InferRequest::decode(&lying).unwrap_err(),
        infergrid::net::codec::CodecError::Truncated
    );

    // The admitted peer's session continues exactly as in one process.
    let Payload::Tensor(logits) = output(
        user.request(
            node.peer,
            step(&manifest, (0, 0), 2, StepKind::Decode, Payload::Tokens(vec![3])),
        )
        .await?,
    ) else {
        panic!("expected logits")
    };
    local.step(1, 0, &[1, 2])?;
    assert_eq!(logits, local.step(1, 2, &[3])?);
    Ok(())
}

/// Eight sessions stepping at once through `Network::step`: their steps to the node travel
/// together (`/infergrid/steps/2`), and every session's greedy ids and logits equal an
/// unbatched run of its own in one process.
#[tokio::test(flavor = "multi_thread")]
async fn steps_of_many_sessions_travel_together_and_are_answered_as_alone() -> anyhow::Result<()> {
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "3", "--seed", "7"], 1)?;
    let (client, _inbound) = network(None)?;
    let node = serve(&manifest, &runtime, 0..=0, &[client.local_peer()], 6)?;
    client.dial(node.peer, node.addr.clone()).await?;
    until_steps_go_together(&client, node.peer, &manifest).await?;
    let before = client.steps_sent();
    let prompt = |s: i64| (0..1 + s).map(|t| 3 + 7 * s + t).collect();
    let check = checking(node.peer, node.operator.address());
    let sealed = Arc::new(AtomicUsize::new(0));
    let send = Send::Shared { check, sealed: sealed.clone() };
    let sessions =
        greedy_sessions(&client, node.peer, Arc::new(manifest), prompt, 12, send).await?;
    let largest_gap = largest_gap_to_alone(&local, &sessions)?;
    let (messages, steps) = (client.steps_sent().0 - before.0, client.steps_sent().1 - before.1);
    eprintln!(
        "8 sessions × 12 steps: {steps} steps in {messages} messages of steps; largest logit gap {largest_gap:.2e}"
    );
    assert_eq!(steps, 8 * 12, "every step went in a message of steps, once");
    assert!(steps > messages, "no two sessions' steps ever shared a message");
    // Every answer checked: those that shared a message by its seal and their proof.
    let sealed = sealed.load(Ordering::Relaxed);
    eprintln!("{sealed} answers signed with others of their message");
    assert!(sealed >= 2, "no answer was signed with another's");
    assert!(largest_gap < 1e-4, "batched logits drift {largest_gap}");
    Ok(())
}

/// Steps go in messages of steps once the node's identify says it speaks the protocol: until
/// then, Close steps of a session never opened.
async fn until_steps_go_together(
    client: &Network,
    node: PeerId,
    manifest: &ModelManifest,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.steps_sent().0 == 0 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no identify from the node in 10 s");
        let close = step(manifest, (0, 0), 0, StepKind::Close, Payload::Empty);
        let close = InferRequest { session: 99, ..close };
        let request_hash = close.request_hash();
        output(client.step(node, close, request_hash, 512).await?.response);
    }
    Ok(())
}

/// A gateway's check of answers from `node`, whose registered operator is `operator`.
fn checking(
    node: PeerId,
    operator: alloy::primitives::Address,
) -> infergrid::gateway::SignatureCheck {
    use infergrid::pay::NodeTerms;
    use infergrid::pay::meter::Tariff;
    let tariff = Tariff { price_per_token: alloy::primitives::U256::from(1), span_blocks: 1 };
    infergrid::gateway::SignatureCheck {
        domain: validation_domain(31337, alloy::primitives::Address::repeat_byte(7)),
        clock: NODE_EPOCHS,
        time: infergrid::validate::ChainClock::default(),
        operators: Arc::new(std::sync::Mutex::new([(node, NodeTerms { operator, tariff })].into())),
    }
}

/// A node whose messages are sealed by a key other than its registered operator's: every
/// answer is refused, those signed with others of their message included, while the same
/// answers check against the key that did sign them.
#[tokio::test(flavor = "multi_thread")]
async fn answers_sealed_by_another_key_than_the_operator_s_are_refused() -> anyhow::Result<()> {
    use infergrid::gateway::BadAnswer;
    let LlamaFixture { dir: _model_dir, manifest, runtime, local: _local } =
        llama_fixture(&["--layers", "2", "--seed", "9"], 1)?;
    let (client, _inbound) = network(None)?;
    let node = serve(&manifest, &runtime, 0..=0, &[client.local_peer()], 5)?;
    client.dial(node.peer, node.addr.clone()).await?;
    until_steps_go_together(&client, node.peer, &manifest).await?;

    // Eight sessions' prompts at once: they share messages, each sealed once.
    let mut asked = tokio::task::JoinSet::new();
    for session in 0..8u64 {
        let client = client.clone();
        let prompt = Payload::Tokens((0..3).map(|t| 5 + session as i64 + t).collect());
        let request =
            InferRequest { session, ..step(&manifest, (0, 0), 0, StepKind::Prefill, prompt) };
        let peer = node.peer;
        asked.spawn(async move {
            let request_hash = request.request_hash();
            anyhow::Ok((request_hash, client.step(peer, request, request_hash, 1 << 16).await?))
        });
    }
    let registered =
        checking(node.peer, Eip712Signer::from_bytes(&B256::repeat_byte(9))?.address());
    let signer = checking(node.peer, node.operator.address());
    let (mut with_others, mut answers) = (0, 0);
    while let Some(done) = asked.join_next().await {
        let (request_hash, answer) = done??;
        let InferResponse::Ok { output, signature, .. } = answer.response else {
            panic!("the node refused a step")
        };
        answers += 1;
        let output_hash = infergrid::eip712::keccak256(&payload_bytes(&output));
        let (proof, memo) = match &answer.in_message {
            Some(in_message) => {
                with_others += 1;
                (in_message.proof.clone(), Some(&*in_message.memo))
            }
            None => (Vec::new(), None),
        };
        let seal = AnswerSeal { signature, proof };
        let refused = registered.check(&node.peer, request_hash, output_hash, &seal, memo);
        assert!(matches!(refused, Err(BadAnswer::Signature { .. })), "{refused:?}");
        // The refused checks left the message's memo empty: this one recovers for itself.
        signer.check(&node.peer, request_hash, output_hash, &seal, memo)?;
    }
    eprintln!(
        "{answers} answers refused, {with_others} of them signed with others of their message"
    );
    assert_eq!(answers, 8);
    assert!(with_others >= 2, "no two answers shared a message");
    Ok(())
}

/// No peer can make a node compute answers it could not send (a few thousand token ids ask
/// for gigabytes of logits): a step whose answer alone would not fit in a message, and the
/// steps of a message whose answers together would not, are refused before payment and
/// compute; the largest prompt chunk a gateway sends is still answered, and so is every step
/// of the message that fits, and a draft step feeding more tokens than an answer's logits may
/// hold (the node feeds them in parts).
#[tokio::test(flavor = "multi_thread")]
async fn answers_too_large_to_send_are_refused_before_they_are_computed() -> anyhow::Result<()> {
    use infergrid::gateway::RemoteModelConfig;
    use infergrid::net::steps::{
        MAX_MESSAGE_ANSWER_VALUE_BYTES, MAX_STEPS_PER_MESSAGE, decode_answers, encode_steps,
    };
    const VOCAB: usize = 32_768;
    // 512 positions of its logits are more than a message holds.
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } = llama_fixture(
        &["--layers", "1", "--vocab", "32768", "--max-pos", "1024", "--seed", "8"],
        1,
    )?;
    let sender = identity::Keypair::generate_ed25519();
    let (user, _user_inbound) = network(None)?;
    let clients = [user.local_peer(), sender.public().to_peer_id()];
    let node = serve(&manifest, &runtime, 0..=0, &clients, 7)?;
    user.dial(node.peer, node.addr.clone()).await?;
    let tokens = |positions: usize| (0..positions as i64).map(|i| i % 500 + 1).collect::<Vec<_>>();
    let prefill = |session, positions| InferRequest {
        session,
        ..step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(tokens(positions)))
    };
    let refusal = |answer: InferResponse| match answer {
        InferResponse::Err(e) => (e.code, e.message),
        InferResponse::Ok { output, .. } => panic!("answered with {:?}", output.positions()),
    };

    let chunk = RemoteModelConfig::for_model(&manifest, 0).prefill_chunk();
    let Payload::Tensor(logits) = output(user.request(node.peer, prefill(1, chunk)).await?) else {
        panic!("expected logits")
    };
    assert_eq!(logits.shape(), [1, chunk, VOCAB]);
    let (code, message) = refusal(user.request(node.peer, prefill(2, 600)).await?);
    assert_eq!(code, ErrorCode::BadInput, "{message}");
    assert!(message.contains("600 positions") && message.contains("fewer positions"), "{message}");
    // A draft step answers a few ids whatever it feeds: the node runs 600 tokens in parts of
    // what one answer's logits may hold, and guesses what the whole context gives.
    let (mut guesses, mut fed, mut position) = (Vec::new(), tokens(600), 0);
    for _ in 0..3 {
        let logits = local.step(99, position, &fed)?;
        let next = i64::from(infergrid::generate::argmax(logits.last_row()));
        (position, fed) = (position + fed.len(), vec![next]);
        guesses.push(next);
    }
    let draft = Payload::Draft { tokens: tokens(600), guesses: 3 };
    let draft = InferRequest { session: 3, ..step(&manifest, (0, 0), 0, StepKind::Draft, draft) };
    assert_eq!(output(user.request(node.peer, draft).await?), Payload::Tokens(guesses));

    // 64 steps of 9 positions, 1.1 MiB of logits each: 56 fit in one message's answers.
    let each = 9 * VOCAB * 4;
    let fit = MAX_MESSAGE_ANSWER_VALUE_BYTES / each;
    assert!(fit < MAX_STEPS_PER_MESSAGE);
    let steps: Vec<InferRequest> =
        (0..MAX_STEPS_PER_MESSAGE as u64).map(|session| prefill(10 + session, 9)).collect();
    const STEPS: &str = "/infergrid/steps/2";
    let bytes = infergrid_e2e::versions::ask_over_as(
        sender,
        STEPS,
        node.peer,
        node.addr.clone(),
        encode_steps(&steps),
    )
    .await?
    .expect("the node speaks it");
    let answers = decode_answers(&bytes)?.answers;
    assert_eq!(answers.len(), MAX_STEPS_PER_MESSAGE);
    let reference = local.step(10, 0, &tokens(9))?;
    for (index, answer) in answers.into_iter().enumerate() {
        if index < fit {
            let Payload::Tensor(logits) = output(answer) else { panic!("expected logits") };
            assert_eq!(logits.shape(), [1, 9, VOCAB]);
            if index == 0 {
                assert_eq!(logits, reference);
            }
        } else {
            let (code, message) = refusal(answer);
            assert_eq!(code, ErrorCode::BadInput, "{message}");
            assert!(message.contains("send it in another message"), "{message}");
        }
    }
    Ok(())
}

/// What a stranger can put in a message of steps: too many steps, or bytes that are no
/// envelope, are refused whole with one `Malformed` answer; a step that does not decode is
/// refused on its own while the others are answered (here `NotAdmitted`); the node goes on
/// serving its admitted peer.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_message_of_steps_is_refused_and_spoils_no_other_step() -> anyhow::Result<()> {
    use infergrid::net::steps::{MAX_STEPS_PER_MESSAGE, decode_answers, encode_steps};
    let LlamaFixture { dir: _model_dir, manifest, runtime, local } =
        llama_fixture(&["--layers", "2", "--seed", "8"], 1)?;
    let (user, _user_inbound) = network(None)?;
    let node = serve(&manifest, &runtime, 0..=0, &[user.local_peer()], 7)?;
    user.dial(node.peer, node.addr.clone()).await?;
    let prefill = |session| InferRequest {
        session,
        ..step(&manifest, (0, 0), 0, StepKind::Prefill, Payload::Tokens(vec![1, 2]))
    };
    let ask = |bytes: Vec<u8>| {
        infergrid_e2e::versions::ask_over(STEPS, node.peer, node.addr.clone(), bytes)
    };
    const STEPS: &str = "/infergrid/steps/2";
    let refusals = |bytes: Vec<u8>| -> anyhow::Result<Vec<(ErrorCode, String)>> {
        Ok(decode_answers(&bytes)?
            .answers
            .into_iter()
            .map(|answer| match answer {
                InferResponse::Err(e) => (e.code, e.message),
                InferResponse::Ok { .. } => panic!("a stranger was served"),
            })
            .collect())
    };

    let too_many: Vec<InferRequest> = (0..=MAX_STEPS_PER_MESSAGE as u64).map(prefill).collect();
    let answers = refusals(ask(encode_steps(&too_many)).await?.expect("the node speaks it"))?;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, ErrorCode::Malformed);
    assert!(answers[0].1.contains("65 steps in one message"), "{}", answers[0].1);

    let mut one_spoiled = encode_steps(&[prefill(1), prefill(2)]);
    let second = 6 + 4 + prefill(1).encoded_len() + 4;
    one_spoiled[second] = b'X';
    let answers = refusals(ask(one_spoiled).await?.expect("the node speaks it"))?;
    let codes: Vec<ErrorCode> = answers.iter().map(|(code, _)| *code).collect();
    assert_eq!(codes, [ErrorCode::NotAdmitted, ErrorCode::Malformed], "{answers:?}");

    let answers = refusals(ask(b"not a message of steps".to_vec()).await?.expect("speaks it"))?;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, ErrorCode::Malformed, "{answers:?}");

    // The admitted peer is served, exactly.
    let request_hash = prefill(5).request_hash();
    let Payload::Tensor(logits) =
        output(user.step(node.peer, prefill(5), request_hash, 1 << 16).await?.response)
    else {
        panic!("expected logits")
    };
    assert_eq!(logits, local.step(5, 0, &[1, 2])?);
    Ok(())
}
