//! The money and validation paths on a real anvil with the real contracts: staking and
//! registration (a peer id only its key's holder can register), 1,000 vouchers signed in
//! Rust and redeemed, batch redemption skipping what cannot pay, replays, close and refund,
//! and a validator quorum that slashes and jails a cheating node.

use alloy::primitives::{B256, Bytes, U256};
use infergrid::chain::bindings::Validation;
use infergrid::chain::{ChainError, SkipReason, SkippedVoucher, Tally};
use infergrid::devnet::Role;
use infergrid::eip712::Eip712Signer;
use infergrid::identity::{NodeIdentity, peer_id_ownership_digest};
use infergrid::pay::{SignedVoucher, Voucher, channels_domain};
use infergrid::validate::{
    ChainClock, MerkleTree, ResponseAttestation, answer_proofs, challenge_leaf, seal_answers,
    validation_domain,
};
use infergrid_e2e::{Chain, btt, dev, word};

/// What the test nodes charge per token (10^-6 BTT).
const PRICE: u64 = 1_000_000_000_000;

fn reverted_with(result: Result<impl std::fmt::Debug, ChainError>, error: &str) {
    match result {
        Err(ChainError::Reverted(reason)) => {
            assert!(reason.contains(error), "expected {error}, got {reason}")
        }
        other => panic!("expected a revert with {error}, got {other:?}"),
    }
}

/// The devnet's three validator accounts, each registered with 10,000 BTT of stake, and
/// their contract clients.
async fn three_validators(
    chain: &Chain,
) -> anyhow::Result<(Vec<infergrid::devnet::DevAccount>, Vec<infergrid::chain::Contracts>)> {
    let validators: Vec<_> = (0..3).map(|i| dev(Role::Validator, i)).collect();
    let mut clients = Vec::new();
    for v in &validators {
        chain.fund(v.address, "20000").await?;
        let c = chain.as_account(v).await?;
        c.token.approve(chain.deployment.contracts.validation, btt("20000")).await?;
        c.validation.register_validator(btt("10000")).await?;
        clients.push(c);
    }
    Ok((validators, clients))
}

/// Registers `operator`'s node for block `block` of the test model.
async fn register_node(
    chain: &Chain,
    operator: &infergrid::devnet::DevAccount,
    block: u32,
) -> anyhow::Result<()> {
    chain.register_node(operator, word("model"), (block, block), U256::from(PRICE)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn vouchers_batches_replays_and_refunds() -> anyhow::Result<()> {
    let chain = Chain::start().await?;
    let (operator, payer, other_payer) =
        (dev(Role::Operator, 0), dev(Role::Payer, 0), dev(Role::Payer, 1));

    // The operator's node identity signs that the operator may register it; the Rust digest
    // is byte-identical to the contract's own.
    let registry = chain.deployment.contracts.registry;
    let thief = dev(Role::Operator, 1);
    chain.fund(thief.address, "20000").await?;
    let stealing = chain.as_account(&thief).await?;
    stealing.token.approve(registry, btt("10000")).await?;
    for account in [operator.address, thief.address] {
        assert_eq!(
            peer_id_ownership_digest(chain.chain_id(), registry, account),
            stealing.registry.peer_id_ownership_digest(account).await?
        );
    }
    // Nobody else can register that peer id: neither with the signature copied from the
    // operator's registration (it names the operator), nor with one by another key.
    let mut stolen = chain.registration(&operator, word("model"), (0, 0), U256::from(PRICE));
    reverted_with(stealing.registry.register(&stolen).await, "InvalidPeerIdSignature");
    let thief_signature = NodeIdentity::derive(&thief.private_key).peer_id_ownership_signature(
        chain.chain_id(),
        registry,
        thief.address,
    );
    stolen.peer_id_signature = Bytes::copy_from_slice(&thief_signature);
    reverted_with(stealing.registry.register(&stolen).await, "InvalidPeerIdSignature");
    // A peer id of another key type carries no key the registry can check a signature with.
    let ed25519 = libp2p::identity::Keypair::ed25519_from_bytes([7; 32])?;
    stolen.peer_id = Bytes::from(ed25519.public().to_peer_id().to_bytes());
    reverted_with(stealing.registry.register(&stolen).await, "UnsupportedPeerId");

    register_node(&chain, &operator, 0).await?;
    let node = chain.as_account(&operator).await?;
    assert_eq!(node.registry.stake_of(operator.address).await?, btt("10000"));
    assert!(node.registry.is_active(operator.address).await?);
    assert_eq!(node.registry.active_nodes(word("model"), 0).await?, vec![operator.address]);
    let peer_id = NodeIdentity::derive(&operator.private_key).peer_id();
    assert_eq!(node.registry.operator_of(Bytes::from(peer_id.to_bytes())).await?, operator.address);

    // A payer opens a channel and signs 1,000 cumulative vouchers, one per token.
    chain.fund(payer.address, "1000").await?;
    chain.fund(other_payer.address, "1000").await?;
    let pays = chain.as_account(&payer).await?;
    pays.token.approve(chain.deployment.contracts.channels, btt("1000")).await?;
    let deposit = btt("100");
    let channel = pays.channels.open(operator.address, deposit).await?;

    let domain = channels_domain(chain.chain_id(), chain.deployment.contracts.channels);
    let signer = Eip712Signer::from_bytes(&payer.private_key)?;
    let price = U256::from(1_000_000_000_000_000u64); // 0.001 BTT per token
    let vouchers: Vec<SignedVoucher> = (1..=1000u64)
        .map(|tokens| {
            Voucher { channel_id: channel, cumulative_amount: price * U256::from(tokens) }
                .sign(&domain, &signer)
        })
        .collect();
    for v in [&vouchers[0], &vouchers[499], &vouchers[999]] {
        // The Rust digest is byte-identical to the contract's own.
        let ours = v.voucher.digest(&domain);
        let theirs =
            pays.channels.voucher_digest(v.voucher.channel_id, v.voucher.cumulative_amount).await?;
        assert_eq!(ours, theirs);
        v.verify(&domain, payer.address)?;
    }

    // The node redeems only the last voucher, in one transaction, and is paid the total.
    let before = node.token.balance_of(operator.address).await?;
    let last = vouchers.last().expect("1000 vouchers");
    let receipt = node.channels.redeem(last).await?;
    eprintln!("gas: redeem of one voucher, whole transaction: {}", receipt.gas_used);
    let earned = node.token.balance_of(operator.address).await? - before;
    assert_eq!(earned, price * U256::from(1000));
    assert_eq!(U256::from(node.channels.channel(channel).await?.paid), earned);

    // Replays of the same or an older voucher pay nothing.
    reverted_with(node.channels.redeem(last).await, "VoucherAlreadyRedeemed");
    reverted_with(node.channels.redeem(&vouchers[10]).await, "VoucherAlreadyRedeemed");
    // A voucher signed by someone other than the payer is refused by Rust and by the contract.
    let forger = Eip712Signer::from_bytes(&other_payer.private_key)?;
    let forged =
        Voucher { channel_id: channel, cumulative_amount: btt("50") }.sign(&domain, &forger);
    assert!(forged.verify(&domain, payer.address).is_err());
    reverted_with(node.channels.redeem(&forged).await, "InvalidSignature");
    // A voucher for another chain id or contract does not verify either.
    let wrong_chain = Voucher { channel_id: channel, cumulative_amount: btt("50") }
        .sign(&channels_domain(1, chain.deployment.contracts.channels), &signer);
    reverted_with(node.channels.redeem(&wrong_chain).await, "InvalidSignature");
    // Only the channel's node may redeem.
    reverted_with(pays.channels.redeem(last).await, "NotChannelNode");

    // Batch: three more channels from two payers to the same node, redeemed in one tx.
    let other = chain.as_account(&other_payer).await?;
    other.token.approve(chain.deployment.contracts.channels, btt("1000")).await?;
    let ch2 = pays.channels.open(operator.address, btt("10")).await?;
    let ch3 = other.channels.open(operator.address, btt("10")).await?;
    let ch4 = other.channels.open(operator.address, btt("10")).await?;
    let other_signer = Eip712Signer::from_bytes(&other_payer.private_key)?;
    let batch = vec![
        Voucher { channel_id: ch2, cumulative_amount: btt("1") }.sign(&domain, &signer),
        Voucher { channel_id: ch3, cumulative_amount: btt("2") }.sign(&domain, &other_signer),
        // Signed beyond the deposit: pays the deposit, no more.
        Voucher { channel_id: ch4, cumulative_amount: btt("15") }.sign(&domain, &other_signer),
    ];
    let before = node.token.balance_of(operator.address).await?;
    let redemption = node.channels.redeem_batch(&batch).await?;
    eprintln!("gas: redeemBatch of 3 channels, whole transaction: {}", redemption.receipt.gas_used);
    assert_eq!(node.token.balance_of(operator.address).await? - before, btt("13"));
    assert_eq!(redemption.total(), btt("13"));
    let paid: Vec<_> = redemption.redeemed.iter().map(|r| (r.channel, r.cumulative_paid)).collect();
    assert_eq!(paid, [(ch2, btt("1")), (ch3, btt("2")), (ch4, btt("10"))]);
    assert!(redemption.skipped.is_empty());

    // A batch pays what it can and skips, rather than reverts on, the rest: here a replay and
    // a voucher for `ch3` signed by the payer of another channel.
    let before = node.token.balance_of(operator.address).await?;
    let mixed = vec![
        Voucher { channel_id: ch2, cumulative_amount: btt("3") }.sign(&domain, &signer),
        batch[1].clone(),
        Voucher { channel_id: ch3, cumulative_amount: btt("5") }.sign(&domain, &signer),
    ];
    let redemption = node.channels.redeem_batch(&mixed).await?;
    assert_eq!(node.token.balance_of(operator.address).await? - before, btt("2"));
    let paid: Vec<_> = redemption.redeemed.iter().map(|r| (r.channel, r.amount)).collect();
    assert_eq!(paid, [(ch2, btt("2"))]);
    let skipped = |channel_id, amount: &str, reason| SkippedVoucher {
        channel: channel_id,
        cumulative_amount: btt(amount),
        reason,
    };
    assert_eq!(
        redemption.skipped,
        [
            skipped(ch3, "2", SkipReason::AlreadyRedeemed),
            skipped(ch3, "5", SkipReason::InvalidSignature)
        ]
    );

    // Close and refund: the payer asks to close, the node may still redeem in the window,
    // afterwards the rest goes back to the payer and vouchers have expired.
    let refund_from = deposit - earned;
    let payer_before = pays.token.balance_of(payer.address).await?;
    pays.channels.request_close(channel).await?;
    reverted_with(pays.channels.finalize_close(channel).await, "CloseWindowOpen");
    chain.advance_time(chain.deployment.params.channel_close_window + 1).await?;
    let late = Voucher { channel_id: channel, cumulative_amount: btt("2") }.sign(&domain, &signer);
    reverted_with(node.channels.redeem(&late).await, "ChannelExpired");
    pays.channels.finalize_close(channel).await?;
    assert_eq!(pays.token.balance_of(payer.address).await? - payer_before, refund_from);
    reverted_with(pays.channels.finalize_close(channel).await, "ChannelAlreadyClosed");
    reverted_with(node.channels.redeem(&late).await, "ChannelExpired");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn validator_quorum_scores_slashes_and_jails() -> anyhow::Result<()> {
    let chain = Chain::start().await?;
    let (cheat, honest) = (dev(Role::Operator, 0), dev(Role::Operator, 1));
    register_node(&chain, &cheat, 0).await?;
    register_node(&chain, &honest, 1).await?;
    let (validators, clients) = three_validators(&chain).await?;

    // Each validator commits the Merkle root of its secret challenge set before the epoch it
    // is for begins, so the root is fixed before any answer it can convict.
    let epoch = clients[0].validation.current_epoch().await? + 1;
    let challenges: Vec<(B256, B256)> = (0..4)
        .map(|i| (word(&format!("prompt {i}")), word(&format!("expected output {i}"))))
        .collect();
    let tree =
        MerkleTree::new(challenges.iter().map(|(req, out)| challenge_leaf(*req, *out)).collect())
            .expect("non-empty");
    reverted_with(
        clients[0].validation.commit_challenge_root(epoch - 1, tree.root()).await,
        "EpochStarted",
    );
    for c in &clients {
        c.validation.commit_challenge_root(epoch, tree.root()).await?;
    }
    reverted_with(clients[0].validation.commit_challenge_root(epoch, tree.root()).await, "Already");

    // The epoch begins, an hour ahead of the wall clock: a node keeps the chain's time (as
    // `infergrid node` does from the latest block) and signs for the epoch the contract sees.
    let clock = clients[0].validation.epoch_clock().await?;
    let starts = clients[0].validation.epoch_end(epoch).await? - clock.duration;
    chain.mine_at(starts).await?;
    assert_eq!(clients[0].validation.current_epoch().await?, epoch);
    let node_time = ChainClock::default();
    node_time.sync(chain.now().await?);
    let signed_epoch = clock.epoch_at(node_time.now());
    assert_eq!(signed_epoch, epoch, "the node signs the chain's epoch, not the wall clock's");

    // The cheating node answers challenge 2 with a wrong output and signs its response,
    // bound to the epoch it answers in.
    let v_domain = validation_domain(chain.chain_id(), chain.deployment.contracts.validation);
    let (request_hash, expected) = challenges[2];
    let attestation = ResponseAttestation {
        request_hash,
        output_hash: word("a cheap wrong answer"),
        epoch: signed_epoch,
    };
    let node_signer = Eip712Signer::from_bytes(&cheat.private_key)?;
    let signature = attestation.sign(&v_domain, &node_signer);
    assert_eq!(
        attestation.digest(&v_domain),
        clients[0].validation.response_digest(request_hash, attestation.output_hash, epoch).await?
    );

    // Results for the honest node, committed then revealed, so nobody can copy.
    let end = clients[0].validation.epoch_end(epoch).await?;
    chain.advance_time(end.saturating_sub(chain.now().await?) + 1).await?;
    let tallies = [(9u32, 1u32), (10, 0), (8, 2)];
    for (i, (c, (passed, failed))) in clients.iter().zip(tallies).enumerate() {
        let tally = Tally { passed, failed, salt: word(&format!("salt {i}")) };
        let commitment = c
            .validation
            .result_commitment(honest.address, epoch, tally, validators[i].address)
            .await?;
        c.validation.commit_result(honest.address, epoch, commitment).await?;
    }

    // The node answered the challenge in one message of steps with two other sessions': its
    // signature is the message's seal, and the evidence carries the answer's proof under it.
    let message = [
        (word("another session's step"), word("its output")),
        (request_hash, attestation.output_hash),
        (word("a third session's step"), word("its output too")),
    ];
    let seal = seal_answers(&v_domain, &node_signer, epoch, &message).expect("answers");
    let answer_proof = answer_proofs(&message).swap_remove(1);
    assert!(!answer_proof.is_empty());
    // A validator reports the fault with evidence; two more vote guilty: quorum.
    let evidence = Validation::Evidence {
        requestHash: request_hash,
        outputHash: attestation.output_hash,
        nodeSignature: Bytes::copy_from_slice(&seal),
        answerProof: answer_proof,
        expectedOutputHash: expected,
        proof: tree.proof(2).expect("leaf 2"),
    };
    // The seal is no signature of the answer alone, nor of another answer of the message;
    // the answer's own signature is no seal.
    for (signature, answer_proof) in [
        (seal, Vec::new()),
        (seal, answer_proofs(&message).swap_remove(0)),
        (signature, evidence.answerProof.clone()),
    ] {
        let forged = Validation::Evidence {
            nodeSignature: Bytes::copy_from_slice(&signature),
            answerProof: answer_proof,
            ..evidence.clone()
        };
        reverted_with(
            clients[0].validation.report_fault(cheat.address, epoch, forged).await,
            "InvalidNodeSignature",
        );
    }
    let mut bad_proof = evidence.clone();
    bad_proof.proof = tree.proof(1).expect("leaf 1");
    reverted_with(
        clients[0].validation.report_fault(cheat.address, epoch, bad_proof).await,
        "InvalidProof",
    );
    // The same answer signed for another epoch is no evidence about this one.
    let mut other_epoch = evidence.clone();
    let signed_later = ResponseAttestation { epoch: epoch + 1, ..attestation };
    other_epoch.nodeSignature = Bytes::copy_from_slice(&signed_later.sign(&v_domain, &node_signer));
    other_epoch.answerProof = Vec::new();
    reverted_with(
        clients[0].validation.report_fault(cheat.address, epoch, other_epoch).await,
        "InvalidNodeSignature",
    );

    let token = &clients[0].token;
    let treasury = dev(Role::Treasury, 0).address;
    let (reporter_before, treasury_before) =
        (token.balance_of(validators[0].address).await?, token.balance_of(treasury).await?);
    let stake_before = clients[0].registry.stake_of(cheat.address).await?;
    let report = clients[0].validation.report_fault(cheat.address, epoch, evidence).await?;
    clients[1].validation.vote_on_fault(report, true).await?;
    reverted_with(clients[1].validation.vote_on_fault(report, true).await, "Already");
    assert_eq!(
        clients[0].validation.fault_report(report).await?.status,
        0,
        "2 of 3 is short of a 2/3 quorum"
    );
    clients[2].validation.vote_on_fault(report, true).await?;

    let p = &chain.deployment.params;
    let slashed = stake_before * U256::from(p.slash_bps) / U256::from(10_000);
    let reward = slashed * U256::from(p.reporter_reward_bps) / U256::from(10_000);
    assert_eq!(clients[0].validation.fault_report(report).await?.status, 1);
    assert_eq!(clients[0].registry.stake_of(cheat.address).await?, stake_before - slashed);
    assert!(!clients[0].registry.is_active(cheat.address).await?, "a proven cheat is jailed");
    assert_eq!(token.balance_of(validators[0].address).await? - reporter_before, reward);
    assert_eq!(token.balance_of(treasury).await? - treasury_before, slashed - reward);
    let record = clients[0].validation.node_record(cheat.address).await?;
    assert_eq!((record.faults, record.totalSlashed, record.reputationBps), (1, slashed, 0));
    assert!(clients[0].registry.active_nodes(word("model"), 0).await?.is_empty());

    // The reveal window opens after the commit window; the third reveal completes the
    // quorum and moves the honest node's reputation.
    chain.advance_time(p.result_commit_window).await?;
    assert_eq!(
        clients[0].validation.reputation_of(honest.address).await?,
        5000,
        "neutral before scoring"
    );
    for (i, (c, (passed, failed))) in clients.iter().zip(tallies).enumerate() {
        let tally = Tally { passed, failed, salt: word(&format!("salt {i}")) };
        let receipt = c.validation.reveal_result(honest.address, epoch, tally).await?;
        eprintln!("gas: reveal {} of 3, whole transaction: {}", i + 1, receipt.gas_used);
        if i == 0 {
            reverted_with(
                c.validation.reveal_result(honest.address, epoch, tally).await,
                "AlreadyRevealed",
            );
        }
    }
    // Equal stakes: the epoch score is the mean of 9000, 10000 and 8000 bps; it is the
    // first scored epoch, so it becomes the reputation.
    let record = clients[0].validation.node_record(honest.address).await?;
    assert_eq!(record.reputationBps, 9000);
    assert_eq!((record.challengesPassed, record.challengesFailed, record.epochsScored), (27, 3, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn result_books_commit_survive_a_restart_and_reveal_to_a_quorum() -> anyhow::Result<()> {
    use infergrid::validate::{ResultBook, Stage};
    let chain = Chain::start().await?;
    let node = dev(Role::Operator, 1);
    register_node(&chain, &node, 1).await?;
    let (validators, clients) = three_validators(&chain).await?;
    let epoch = clients[0].validation.current_epoch().await? + 1;
    for c in &clients {
        c.validation.commit_challenge_root(epoch, word("a challenge set")).await?;
    }
    let clock = clients[0].validation.epoch_clock().await?;
    chain.mine_at(clients[0].validation.epoch_end(epoch).await? - clock.duration).await?;

    // Each validator judges answers during the epoch; answers of the next epoch are counted
    // apart.
    let dir = tempfile::tempdir()?;
    let book_path = |i: usize| dir.path().join(format!("validator-{i}/results.json"));
    // Validator 0 judges one more answer (failed) after its early attempt: 9 of 10 in all.
    let tallies = [(9u32, 0u32), (10, 0), (8, 2)];
    for (i, (passed, failed)) in tallies.iter().enumerate() {
        let mut book = ResultBook::open(&book_path(i))?;
        for n in 0..passed + failed {
            book.record(epoch, node.address, n < *passed);
        }
        book.record(epoch + 1, node.address, false);
        // Nothing is committed before the epoch ends: the contract refuses and the tally
        // goes back to counting, so answers judged later in the epoch still count.
        if i == 0 {
            let early = book.commit(&clients[i].validation, validators[i].address, epoch).await?;
            reverted_with(early.into_iter().next().expect("one node").outcome, "EpochNotEnded");
            assert_eq!(book.epoch(epoch).next().expect("a result").stage, Stage::Counting);
            assert!(book.record(epoch, node.address, false), "counting goes on");
        }
        book.save()?;
    }
    let end = clients[0].validation.epoch_end(epoch).await?;
    chain.advance_time(end.saturating_sub(chain.now().await?) + 1).await?;
    for (i, c) in clients.iter().enumerate() {
        let mut book = ResultBook::open(&book_path(i))?;
        for sent in book.commit(&c.validation, validators[i].address, epoch).await? {
            sent.outcome?;
        }
        let result = book.epoch(epoch).next().expect("a result");
        assert_eq!(result.stage, Stage::Committed);
        assert!(!book.record(epoch, node.address, true), "a committed tally counts no more");
    }

    // The validators restart: the books on disk still reveal what was committed.
    chain.advance_time(chain.deployment.params.result_commit_window).await?;
    for (i, c) in clients.iter().enumerate() {
        let mut book = ResultBook::open(&book_path(i))?;
        let sent = book.reveal(&c.validation, epoch).await?;
        assert_eq!(sent.len(), 1);
        for s in sent {
            s.outcome?;
        }
        assert!(book.epoch(epoch).all(|r| r.stage == Stage::Revealed));
        assert!(book.epoch(epoch + 1).all(|r| r.stage == Stage::Counting), "next epoch untouched");
    }
    let record = clients[0].validation.node_record(node.address).await?;
    assert_eq!(record.reputationBps, 9000, "the mean of 9000, 10000 and 8000 bps");
    assert_eq!((record.challengesPassed, record.challengesFailed), (27, 3));
    Ok(())
}
