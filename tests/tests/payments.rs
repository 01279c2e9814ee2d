//! A paid node on a real anvil: every refusal a payer can provoke (no channel, forged,
//! wrong-chain, wrong-contract, another node's channel, replayed vouchers), the credit bound
//! when a payer stops signing, redemption paying exactly the latest voucher, once, and a
//! redemption mined after the close window booking nothing and not retried.

use std::collections::HashSet;
use std::sync::Arc;

use alloy::primitives::{Address, U256};
use infergrid::chain::{Account, SkipReason, deployment_fingerprint};
use infergrid::devnet::Role;
use infergrid::eip712::Eip712Signer;
use infergrid::engine::{Device, Runtime};
use infergrid::identity::NodeIdentity;
use infergrid::model::ModelManifest;
use infergrid::net::codec::{ErrorCode, InferRequest, InferResponse, Payload, StepKind};
use infergrid::net::{NetConfig, Network};
use infergrid::pay::meter::Tariff;
use infergrid::pay::{
    Collector, LOOKUP_BURST, Ledger, RedeemPolicy, SignedVoucher, Voucher, channels_domain,
};
use infergrid::serve::Admission;
use infergrid_e2e::models::{import, make_checkpoint};
use infergrid_e2e::nodes::serve_blocks;
use infergrid_e2e::{Chain, btt, dev};

/// Odd, so that the per-block-token price (price / 2 blocks) is not a whole number of wei.
const PRICE: u64 = 1_000_000_000_001;
/// The node's credit: 8 tokens through its whole span.
const CREDIT_TOKENS: u64 = 8;

/// A libp2p client as `keypair`, dialled to `node`; keep the inbound receiver alive with it.
async fn dialled(
    node: &infergrid_e2e::nodes::Served,
    keypair: libp2p::identity::Keypair,
) -> anyhow::Result<(Network, tokio::sync::mpsc::Receiver<infergrid::net::Inbound>)> {
    let config = NetConfig {
        keypair,
        listen: vec![],
        bootstrap: vec![],
        request_timeout: std::time::Duration::from_secs(30),
        nat: Default::default(),
    };
    let (client, inbound) = Network::spawn(config)?;
    client.dial(node.peer, node.addr.clone()).await?;
    Ok((client, inbound))
}

fn step(manifest: &ModelManifest, position: u32, tokens: Vec<i64>) -> InferRequest {
    InferRequest {
        model_id: manifest.id().0,
        first_block: 0,
        last_block: 1,
        session: 9,
        position,
        kind: if position == 0 { StepKind::Prefill } else { StepKind::Decode },
        payment: None,
        payload: Payload::Tokens(tokens),
    }
}

fn paid(mut request: InferRequest, voucher: SignedVoucher) -> InferRequest {
    request.payment = Some(voucher);
    request
}

/// The refusal's message, asserting it is a PaymentRequired refusal.
fn payment_refusal(response: InferResponse) -> String {
    match response {
        InferResponse::Err(e) if e.code == ErrorCode::PaymentRequired => e.message,
        other => panic!("expected a PaymentRequired refusal, got {other:?}"),
    }
}

fn served(response: &InferResponse) -> bool {
    matches!(response, InferResponse::Ok { .. })
}

#[tokio::test(flavor = "multi_thread")]
async fn vouchers_are_checked_credit_is_bounded_and_redemption_pays_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "2"])?;
    let manifest = ModelManifest::load(&import(&hf, &dir.path().join("m"), 2)?)?;
    let runtime = Runtime::new(Device::Cpu, None)?;

    // Operator 0 registers blocks 0-1; payer 0 opens a channel to it.
    let chain = Chain::start().await?;
    let (operator, other_operator, payer, stranger) =
        (dev(Role::Operator, 0), dev(Role::Operator, 1), dev(Role::Payer, 0), dev(Role::Payer, 1));
    chain.register_node(&operator, manifest.id(), (0, 1), U256::from(PRICE)).await?;
    chain.fund(payer.address, "20000").await?;
    let payer_contracts = chain.as_account(&payer).await?;
    let channels_address = chain.deployment.contracts.channels;
    payer_contracts.token.approve(channels_address, btt("2")).await?;
    let channel = payer_contracts.channels.open(operator.address, btt("1")).await?;
    let foreign_channel = payer_contracts.channels.open(other_operator.address, btt("1")).await?;

    let tariff = Tariff { price_per_token: U256::from(PRICE), span_blocks: 2 };
    let credit = U256::from(PRICE * CREDIT_TOKENS);
    let node_account = Account::connect(chain.anvil.url(), &operator.private_key).await?;
    let ledger = Ledger::open(
        &dir.path().join("ledger.redb"),
        deployment_fingerprint(&node_account.provider, &chain.deployment).await?,
    )?;
    let collector = Arc::new(Collector::new(
        operator.address,
        tariff,
        channels_domain(chain.chain_id(), channels_address),
        credit,
        node_account.contracts(&chain.deployment).channels,
        ledger,
    ));
    let node = serve_blocks(
        &manifest,
        &runtime,
        0..=1,
        Admission::Peers(HashSet::new()),
        Some(collector.clone()),
        operator.private_key,
    )?;
    let (client, _inbound) =
        dialled(&node, NodeIdentity::derive(&payer.private_key).keypair()).await?;

    let payer_key = Eip712Signer::from_bytes(&payer.private_key)?;
    let domain = channels_domain(chain.chain_id(), channels_address);
    let voucher =
        |channel_id: U256, amount: U256| Voucher { channel_id, cumulative_amount: amount };
    let prompt = vec![1i64, 2, 3];
    // The prefill is 3 tokens through 2 blocks: 6 block-tokens = 3 × PRICE exactly.
    let prefill_cost = tariff.amount(6);
    assert_eq!(prefill_cost, U256::from(3 * PRICE));

    // No voucher at all.
    let message =
        payment_refusal(client.request(node.peer, step(&manifest, 0, prompt.clone())).await?);
    assert!(message.contains("open a payment channel"), "{message}");
    // Signed for another chain, another contract, or by someone else: refused, same reason.
    let wrong_chain =
        voucher(channel, prefill_cost).sign(&channels_domain(1, channels_address), &payer_key);
    let wrong_contract = voucher(channel, prefill_cost)
        .sign(&channels_domain(chain.chain_id(), Address::repeat_byte(9)), &payer_key);
    let forged = voucher(channel, prefill_cost)
        .sign(&domain, &Eip712Signer::from_bytes(&stranger.private_key)?);
    for (what, bad) in
        [("wrong chain", wrong_chain), ("wrong contract", wrong_contract), ("forged", forged)]
    {
        let message = payment_refusal(
            client.request(node.peer, paid(step(&manifest, 0, prompt.clone()), bad)).await?,
        );
        assert!(message.contains("another chain or contract"), "{what}: {message}");
        assert!(message.contains(&format!("chain {}", chain.chain_id())), "{what}: {message}");
    }
    // A valid voucher for a channel paying another node.
    let foreign = voucher(foreign_channel, prefill_cost).sign(&domain, &payer_key);
    let message = payment_refusal(
        client.request(node.peer, paid(step(&manifest, 0, prompt.clone()), foreign)).await?,
    );
    assert!(message.contains("not this node"), "{message}");
    // Nothing was stored for any of them.
    assert!(collector.ledger().all()?.is_empty());

    // A stranger inventing channel ids makes the node read the chain for each, until its
    // lookup budget is spent; then it is refused before any read. The payer is not held up.
    let (flooder, _flooder_inbound) =
        dialled(&node, libp2p::identity::Keypair::generate_secp256k1()).await?;
    let stranger_key = Eip712Signer::from_bytes(&stranger.private_key)?;
    let mut refusals = Vec::new();
    for made_up in 0..LOOKUP_BURST + 4 {
        let bogus =
            voucher(U256::from(1_000_000 + made_up), prefill_cost).sign(&domain, &stranger_key);
        let request = paid(step(&manifest, 0, prompt.clone()), bogus);
        refusals.push(payment_refusal(flooder.request(node.peer, request).await?));
    }
    let (read, refused) = refusals.split_at(LOOKUP_BURST as usize);
    assert!(read.iter().all(|m| m.contains("does not exist")), "{read:?}");
    assert!(refused.iter().all(|m| m.contains("too many channel lookups")), "{refused:?}");

    // Paying for the prefill serves it, and the voucher is on disk before the answer.
    let first = voucher(channel, prefill_cost).sign(&domain, &payer_key);
    let response =
        client.request(node.peer, paid(step(&manifest, 0, prompt.clone()), first.clone())).await?;
    assert!(served(&response), "{response:?}");
    assert_eq!(collector.ledger().get(channel)?.and_then(|r| r.voucher), Some(first.clone()));

    // A lower voucher than the latest buys nothing. From the peer already paying on the
    // channel it is ignored (a gateway's concurrent sessions' vouchers may arrive out of
    // order): the step is served on credit and the ledger keeps the latest.
    let older = voucher(channel, prefill_cost - U256::from(1)).sign(&domain, &payer_key);
    let response = client.request(node.peer, paid(step(&manifest, 3, vec![7]), older)).await?;
    assert!(served(&response), "{response:?}");
    assert_eq!(collector.ledger().get(channel)?.and_then(|r| r.voucher), Some(first.clone()));

    // The payer stops signing: each decode step (1 token × 2 blocks) costs exactly PRICE,
    // so the node serves CREDIT_TOKENS of them on credit (the one above included) and
    // refuses the next.
    let mut position = 4u32;
    let mut on_credit = 1u64;
    let refusal = loop {
        let response = client.request(node.peer, step(&manifest, position, vec![7])).await?;
        if !served(&response) {
            break payment_refusal(response);
        }
        on_credit += 1;
        position += 1;
        assert!(on_credit <= CREDIT_TOKENS, "served beyond the credit");
    };
    assert_eq!(on_credit, CREDIT_TOKENS);
    assert!(refusal.contains("over the credit"), "{refusal}");
    let standing = collector.standings().await?.into_iter().find(|s| s.channel == channel).unwrap();
    assert_eq!(standing.owed - standing.vouched, credit, "unpaid usage equals the credit, no more");
    // The metering served on credit reaches the ledger at the next flush (the node flushes
    // every second), so a crash cannot wipe it; a flush with nothing new writes nothing.
    assert_eq!(collector.flush().await?, 1);
    assert_eq!(collector.ledger().get(channel)?.map(|r| r.metered), Some(standing.metered));
    assert_eq!(collector.flush().await?, 0);

    // Signing again for everything served reopens service.
    let owed = tariff.amount(6 + 2 * on_credit + 2);
    let latest = voucher(channel, owed).sign(&domain, &payer_key);
    let response =
        client.request(node.peer, paid(step(&manifest, position, vec![7]), latest.clone())).await?;
    assert!(served(&response), "{response:?}");

    // Redemption pays exactly the latest voucher, and only once.
    let token = &payer_contracts.token;
    let before = token.balance_of(operator.address).await?;
    let settled = collector.settle(&RedeemPolicy { value_to_gas: 0 }).await?.expect("a redemption");
    assert_eq!((settled.channels, settled.value), (1, owed));
    assert_eq!(token.balance_of(operator.address).await? - before, owed);
    assert_eq!(U256::from(payer_contracts.channels.channel(channel).await?.paid), owed);
    // Not yet final, the redemption is on disk, so that a restart re-checks it too.
    assert!(collector.ledger().unconfirmed(0, 12)?.contains_key(&channel));
    // A reorg drops the redemption: the chain has paid nothing again. The node re-reads the
    // channel (its redemption is not yet final) and redeems it again.
    chain.reorg(1).await?;
    assert_eq!(U256::from(payer_contracts.channels.channel(channel).await?.paid), U256::ZERO);
    assert_eq!(token.balance_of(operator.address).await?, before, "the payment was reorged out");
    let settled =
        collector.settle(&RedeemPolicy { value_to_gas: 0 }).await?.expect("redeemed again");
    assert_eq!((settled.channels, settled.value), (1, owed));
    assert_eq!(token.balance_of(operator.address).await? - before, owed);
    assert_eq!(U256::from(payer_contracts.channels.channel(channel).await?.paid), owed);
    assert_eq!(collector.settle(&RedeemPolicy { value_to_gas: 0 }).await?, None);
    assert_eq!(token.balance_of(operator.address).await? - before, owed);
    // ...and the redeemed voucher replayed to the node buys nothing.
    let message = payment_refusal(
        client.request(node.peer, paid(step(&manifest, position + 1, vec![7]), first)).await?,
    );
    assert!(message.contains("replayed or stale"), "{message}");

    // The payer serves itself one more step, then asks to close. The node redeems at once, but
    // its batch is mined only as the close window ends: the contract skips the voucher
    // instead of reverting, the node is paid nothing for it, books nothing, and does not
    // send it again.
    let last = voucher(channel, tariff.amount(6 + 2 * on_credit + 4)).sign(&domain, &payer_key);
    let response =
        client.request(node.peer, paid(step(&manifest, position + 1, vec![7]), last)).await?;
    assert!(served(&response), "{response:?}");
    payer_contracts.channels.request_close(channel).await?;
    let closes_at = payer_contracts.channels.channel(channel).await?.closesAt;
    chain.set_next_block_timestamp(closes_at).await?;
    let settled = collector.settle(&RedeemPolicy { value_to_gas: 0 }).await?.expect("a redemption");
    assert_eq!((settled.channels, settled.value), (0, U256::ZERO));
    let skipped: Vec<_> = settled.skipped.iter().map(|s| (s.channel, s.reason)).collect();
    assert_eq!(skipped, [(channel, SkipReason::ChannelExpired)]);
    assert_eq!(collector.ledger().get(channel)?.map(|r| r.redeemed), Some(owed));
    assert_eq!(collector.settle(&RedeemPolicy { value_to_gas: 0 }).await?, None);
    assert_eq!(token.balance_of(operator.address).await? - before, owed);

    // A channel holding less than the credit gets no credit: a step covered by its voucher is
    // served, the next one, uncovered, is refused with the reason.
    chain.fund(stranger.address, "10").await?;
    let stranger_contracts = chain.as_account(&stranger).await?;
    // Exactly the prefill's price: far below the credit.
    let deposit = tariff.amount(6);
    assert!(deposit < credit);
    stranger_contracts.token.approve(channels_address, deposit).await?;
    let small = stranger_contracts.channels.open(operator.address, deposit).await?;
    let (stranger_client, _stranger_inbound) =
        dialled(&node, NodeIdentity::derive(&stranger.private_key).keypair()).await?;
    let stranger_key = Eip712Signer::from_bytes(&stranger.private_key)?;
    let covered = voucher(small, tariff.amount(6)).sign(&domain, &stranger_key);
    let response = stranger_client
        .request(node.peer, paid(step(&manifest, 0, prompt.clone()), covered))
        .await?;
    assert!(served(&response), "{response:?}");
    let message =
        payment_refusal(stranger_client.request(node.peer, step(&manifest, 3, vec![7])).await?);
    assert!(message.contains("serves on credit only channels holding"), "{message}");
    Ok(())
}

/// A channel transaction that hangs (the payer's RPC endpoint froze mid top-up) holds up the
/// payments to that node only: a voucher for another node is signed while the top-up is still
/// stuck, and the stuck one completes once the endpoint answers again. Two nodes topped up at
/// once both get their deposits.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_top_up_holds_up_payments_to_its_own_node_only() -> anyhow::Result<()> {
    use infergrid::pay::{NodeTerms, Wallet, WalletConfig};
    use infergrid_e2e::proxy::HangingProxy;
    let dir = tempfile::tempdir()?;
    let chain = Chain::start().await?;
    let (stuck, other, payer) =
        (dev(Role::Operator, 0), dev(Role::Operator, 1), dev(Role::Payer, 0));
    let model = alloy::primitives::B256::repeat_byte(7);
    for operator in [&stuck, &other] {
        chain.register_node(operator, model, (0, 0), U256::from(PRICE)).await?;
    }
    chain.fund(payer.address, "100").await?;
    let proxy = HangingProxy::start(chain.anvil.url().trim_start_matches("http://"));
    let account = Account::connect(&format!("http://{}", proxy.addr), &payer.private_key).await?;
    let contracts = account.contracts(&chain.deployment);
    let channels_address = chain.deployment.contracts.channels;
    let config = WalletConfig { deposit: btt("1"), budget: btt("10"), sign_every_tokens: 32 };
    let wallet = Arc::new(Wallet::open(
        Eip712Signer::from_bytes(&payer.private_key)?,
        channels_domain(chain.chain_id(), channels_address),
        contracts.token,
        contracts.channels,
        config,
        &dir.path().join("wallet.redb"),
        deployment_fingerprint(&account.provider, &chain.deployment).await?,
    )?);
    let tariff = Tariff { price_per_token: U256::from(PRICE), span_blocks: 1 };
    let terms =
        |operator: &infergrid::devnet::DevAccount| NodeTerms { operator: operator.address, tariff };
    // Both channels opened while the endpoint answers.
    for operator in [&stuck, &other] {
        assert!(wallet.voucher(terms(operator), 1, false, false).await?.is_some());
    }

    // A request worth two deposits needs two top-ups; the endpoint freezes first.
    proxy.hang(true);
    let big = 2_000_000;
    let stuck_payment = tokio::spawn({
        let (wallet, terms) = (wallet.clone(), terms(&stuck));
        async move { wallet.voucher(terms, big, true, true).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let paid = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        wallet.voucher(terms(&other), 1, true, false),
    )
    .await
    .expect("the other node's voucher waited on the stuck top-up")?;
    assert!(paid.is_some(), "the other node's request was not settled");
    assert!(!stuck_payment.is_finished(), "the top-up did not hang: the test proves nothing");

    proxy.hang(false);
    // The stuck top-up ends, done or failed on the RPC timeout; a failed one is tried again.
    let voucher = match stuck_payment.await? {
        Ok(voucher) => voucher,
        Err(e) => {
            eprintln!("the stuck top-up failed: {e}; paying again");
            wallet.voucher(terms(&stuck), big, true, true).await?
        }
    };
    let voucher = voucher.expect("a forced voucher");
    let tab = wallet.tabs().await.into_iter().find(|t| t.operator == stuck.address).unwrap();
    assert!(tab.deposit >= voucher.voucher.cumulative_amount, "{tab:?}");
    let on_chain = chain.as_account(&payer).await?.channels.channel(tab.channel).await?;
    assert_eq!(U256::from(on_chain.deposit), tab.deposit, "the wallet's deposit is the chain's");

    // Both nodes need a top-up at once: each deposit's approve-and-transfer pair goes through
    // whole (an allowance is set, not added to), and both land.
    let (first, second) = tokio::join!(
        wallet.voucher(terms(&stuck), 1_000_000, true, true),
        wallet.voucher(terms(&other), 1_000_000, true, true),
    );
    let (first, second) = (first?.expect("forced"), second?.expect("forced"));
    for (operator, voucher) in [(&stuck, first), (&other, second)] {
        let tab = wallet.tabs().await.into_iter().find(|t| t.operator == operator.address).unwrap();
        let on_chain = chain.as_account(&payer).await?.channels.channel(tab.channel).await?;
        assert_eq!(U256::from(on_chain.deposit), tab.deposit, "{tab:?}");
        assert!(tab.deposit >= voucher.voucher.cumulative_amount, "{tab:?}");
    }
    Ok(())
}
