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
use infergrid::pay::{Collector, Ledger, RedeemPolicy, SignedVoucher, Voucher, channels_domain};
use infergrid::serve::Admission;
use infergrid_e2e::models::{import, make_checkpoint};
use infergrid_e2e::nodes::serve_blocks;
use infergrid_e2e::{Chain, btt, dev};

/// Odd, so that the per-block-token price (price / 2 blocks) is not a whole number of wei.
const PRICE: u64 = 1_000_000_000_001;
/// The node's credit: 8 tokens through its whole span.
const CREDIT_TOKENS: u64 = 8;

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
    let (client, _inbound) = Network::spawn(NetConfig {
        keypair: NodeIdentity::derive(&payer.private_key).keypair(),
        listen: vec![],
        bootstrap: vec![],
        request_timeout: std::time::Duration::from_secs(30),
    })?;
    client.dial(node.peer, node.addr.clone()).await?;

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

    // Paying for the prefill serves it, and the voucher is on disk before the answer.
    let first = voucher(channel, prefill_cost).sign(&domain, &payer_key);
    let response =
        client.request(node.peer, paid(step(&manifest, 0, prompt.clone()), first.clone())).await?;
    assert!(served(&response), "{response:?}");
    assert_eq!(collector.ledger().get(channel)?.and_then(|r| r.voucher), Some(first.clone()));

    // A lower voucher than the latest is a replay.
    let older = voucher(channel, prefill_cost - U256::from(1)).sign(&domain, &payer_key);
    let message =
        payment_refusal(client.request(node.peer, paid(step(&manifest, 3, vec![7]), older)).await?);
    assert!(message.contains("replayed or stale"), "{message}");

    // The payer stops signing: each decode step (1 token × 2 blocks) costs exactly PRICE,
    // so the node serves CREDIT_TOKENS of them on credit and refuses the next.
    let mut position = 3u32;
    let mut on_credit = 0u64;
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
    Ok(())
}
