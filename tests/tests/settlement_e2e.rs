//! The money path as users run it: `infergrid devnet` (anvil, contracts, operators with
//! distinct prices), three `infergrid node` processes and an `infergrid gateway` that pays
//! them. 1,000 completions later every node is paid, to the wei, what the usage the API
//! reported says — in one redeem transaction per node — including a node killed with
//! SIGKILL after acknowledging vouchers and before redeeming them.

use std::path::Path;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::transports::http::reqwest;
use infergrid::chain::bindings::PaymentChannels;
use infergrid::chain::{Account, Contracts, Deployment};
use infergrid::devnet::Role;
use infergrid_e2e::dev;
use infergrid_e2e::models::{import, make_checkpoint};
use infergrid_e2e::procs::{Proc, Swarm, binary, devnet, free_port};

const REQUESTS: usize = 1000;
/// Nodes redeem only when a channel closes (or a restart says otherwise): the run's
/// redemptions are then exactly one per node.
const NEVER: &str = "1000000000000000000";

/// Polls `check` for up to 30 s.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn paid(c: &Contracts, channel: U256) -> U256 {
    U256::from(c.channels.channel(channel).await.unwrap().paid)
}

#[tokio::test(flavor = "multi_thread")]
async fn thousand_paid_completions_settle_exactly_even_across_a_node_crash() -> anyhow::Result<()> {
    // The only test in this binary: the fixed node ports (NODE_PORT_BASE+) are free; cargo runs test
    // binaries one after another.
    let dir = tempfile::tempdir()?;
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "3", "--seed", "11"])?;
    let model = import(&hf, &dir.path().join("m"), 3)?;
    let m = model.to_str().unwrap();
    let (_devnet, manifest, deployment_file) = devnet(dir.path(), m);
    let rpc = manifest["rpc_url"].as_str().unwrap().to_owned();
    let d = deployment_file.to_str().unwrap().to_owned();
    let deployment = Deployment::load(&deployment_file)?;
    let payer = dev(Role::Payer, 0);
    let chain = Account::connect(&rpc, &payer.private_key).await?;
    let contracts = chain.contracts(&deployment);

    let operators: Vec<Address> = (0..3).map(|i| dev(Role::Operator, i).address).collect();
    let prices: Vec<U256> = (0..3).map(|i| U256::from(1_000_000_000_000u64 * (i + 1))).collect();
    let swarm = Swarm { model: m, rpc: &rpc, deployment: &d, dir: dir.path() };
    let node = |i: usize, value_to_gas: &str| {
        let policy = ["--redeem-value-to-gas", value_to_gas, "--redeem-check-secs", "1"];
        swarm.node(i, &i.to_string(), &policy)
    };
    let mut nodes: Vec<Proc> = (0..3).map(|i| node(i, NEVER)).collect();
    let api = format!("127.0.0.1:{}", free_port());
    let _gateway = swarm.gateway(&api, &["--deposit", "1BTT"]);
    let before: Vec<U256> = {
        let mut v = Vec::new();
        for op in &operators {
            v.push(contracts.token.balance_of(*op).await?);
        }
        v
    };

    // 1,000 completions; every node runs every position the session feeds it: the prompt,
    // then each generated token but the last (or all of them when EOS ended the text).
    let http = reqwest::Client::new();
    let mut positions = 0u64;
    let started = Instant::now();
    for i in 0..REQUESTS {
        let body = serde_json::json!({
            "model": manifest_name(&model),
            "prompt": format!("request {i} pays"),
            "max_tokens": 1 + i % 4,
            "temperature": 0,
        });
        let response: serde_json::Value = serde_json::from_str(
            &http
                .post(format!("http://{api}/v1/completions"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?
                .text()
                .await?,
        )?;
        let usage = &response["usage"];
        let (prompt, completion) = (
            usage["prompt_tokens"].as_u64().expect("usage"),
            usage["completion_tokens"].as_u64().expect("usage"),
        );
        let fed_back = match response["choices"][0]["finish_reason"].as_str() {
            Some("length") => completion.saturating_sub(1),
            _ => completion,
        };
        positions += prompt + fed_back;
    }
    eprintln!(
        "{REQUESTS} paid completions in {:.1} s, {positions} positions per node",
        started.elapsed().as_secs_f64()
    );
    let expected: Vec<U256> = prices.iter().map(|p| p * U256::from(positions)).collect();

    // The gateway's tabs: one channel per node, the last voucher for exactly the usage.
    let health: serde_json::Value = serde_json::from_str(
        &http.get(format!("http://{api}/healthz")).send().await?.text().await?,
    )?;
    let tabs = health["routing"]["payments"].as_array().expect("payment tabs").clone();
    assert_eq!(tabs.len(), 3, "{tabs:?}");
    let mut channels = Vec::new();
    for (i, op) in operators.iter().enumerate() {
        let tab = tabs.iter().find(|t| t["operator"] == op.to_string()).expect("a tab per node");
        assert_eq!(tab["metered_block_tokens"].as_u64(), Some(positions));
        assert_eq!(tab["signed"].as_str(), Some(expected[i].to_string().as_str()));
        channels.push(tab["channel"].as_str().unwrap().parse::<U256>()?);
    }
    for &channel in &channels {
        assert_eq!(paid(&contracts, channel).await, U256::ZERO, "nothing redeemed yet");
    }

    // SIGKILL the middle node after it acknowledged every voucher; restarted on the same
    // ledger, it redeems what it was owed. A second crash and restart pays nothing more.
    nodes[1].0.kill()?;
    nodes[1].0.wait()?;
    nodes[1] = node(1, "1");
    eventually("the restarted node to redeem", || async {
        paid(&contracts, channels[1]).await == expected[1]
    })
    .await;
    nodes[1].0.kill()?;
    nodes[1].0.wait()?;
    nodes[1] = node(1, "1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(paid(&contracts, channels[1]).await, expected[1]);

    // The dApp is done: it asks to close the other channels, and their nodes redeem within
    // the close window.
    for &channel in [channels[0], channels[2]].iter() {
        contracts.channels.request_close(channel).await?;
    }
    for i in [0, 2] {
        let channel = channels[i];
        eventually("a closing channel to be redeemed", || async {
            paid(&contracts, channel).await == expected[i]
        })
        .await;
    }

    // Balances moved by exactly the metering; the nodes' ledgers say the same.
    for i in 0..3 {
        let gained = contracts.token.balance_of(operators[i]).await? - before[i];
        assert_eq!(gained, expected[i], "node {i}: paid {gained}, metered {}", expected[i]);
    }
    drop(nodes);
    for (i, amount) in expected.iter().enumerate() {
        let ledger = dir.path().join(format!("node-{i}.redb"));
        let out = std::process::Command::new(binary())
            .args(["ledger", "--ledger", ledger.to_str().unwrap(), "--json"])
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let row = &rows[0];
        assert_eq!(row["metered_block_tokens"].as_u64(), Some(positions), "node {i}");
        assert_eq!(row["vouched"].as_str(), Some(amount.to_string().as_str()));
        assert_eq!(row["redeemed"].as_str(), Some(amount.to_string().as_str()));
    }

    // Gas: the redemptions against one ERC-20 transfer per request, measured on this chain.
    let redeemed = PaymentChannels::new(deployment.contracts.channels, chain.provider.clone())
        .VoucherRedeemed_filter()
        .from_block(deployment.deploy_block)
        .query()
        .await?;
    let mut txs: Vec<_> = redeemed.iter().filter_map(|(_, log)| log.transaction_hash).collect();
    txs.sort();
    txs.dedup();
    assert_eq!(txs.len(), 3, "one redeem transaction per node");
    let mut redeem_gas = 0u64;
    for tx in &txs {
        redeem_gas += chain.provider.get_transaction_receipt(*tx).await?.expect("receipt").gas_used;
    }
    let transfer = contracts.token.transfer(operators[0], U256::from(1)).await?.gas_used;
    let per_request = redeem_gas as f64 / REQUESTS as f64;
    eprintln!(
        "settlement: {} redeem txs, {redeem_gas} gas for {REQUESTS} requests across 3 nodes = \
         {per_request:.1} gas per settled request ({:.1} per request per node); an ERC-20 transfer \
         per node per request would be {} gas per request ({transfer} per transfer): {:.0}x less",
        txs.len(),
        per_request / 3.0,
        3 * transfer,
        (3 * transfer) as f64 / per_request
    );
    Ok(())
}

fn manifest_name(model: &Path) -> String {
    infergrid::model::ModelManifest::load(model).unwrap().name
}
