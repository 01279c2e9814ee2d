//! An answer lost on the way and a price changed mid-run (`payments.md`, "Reconciliation",
//! "Price changes"): a node runs and meters a decode step whose answer the gateway never gets
//! (`--testing-drop-answers`). The gateway fails the step over to the block's other node and
//! finishes the completion; then, from the node's account of the channel, the two agree again
//! to the wei on what is owed. An operator then raises its price on-chain: its node and the
//! gateway move to it at the same voucher, and agree again. What each node redeems on-chain
//! is exactly what both counted.

use std::process::Command;
use std::time::{Duration, Instant};

use infergrid::devnet::Role;
use infergrid_e2e::http::{await_servable, complete, get, health};
use infergrid_e2e::models::local_greedy;
use infergrid_e2e::procs::{Proc, SWARM, TestNet, binary, expect_line, free_port};

/// Node `i` serves block `i mod 3`; node 3 is block 0's second server.
const NODES: usize = 4;

fn status(addr: &str) -> serde_json::Value {
    let (code, body) = get(addr, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The node's one channel (this test has one payer): (channel id, owed, vouched, redeemed).
fn node_channel(addr: &str) -> Option<(String, u128, u128, u128)> {
    let status = status(addr);
    let channel = status["channels"].as_array()?.first()?.clone();
    let wei = |field: &str| channel[field].as_str().unwrap().parse::<u128>().unwrap();
    Some((channel["channel"].as_str()?.to_owned(), wei("owed"), wei("vouched"), wei("redeemed")))
}

/// The gateway's tab of the node run by `operator`: (channel id, owed, signed).
fn gateway_tab(api: &str, operator: &str) -> Option<(String, u128, u128)> {
    let health = health(api);
    let tab = health["routing"]["payments"]
        .as_array()?
        .iter()
        .find(|t| t["operator"].as_str() == Some(operator))?
        .clone();
    let wei = |field: &str| tab[field].as_str().unwrap().parse::<u128>().unwrap();
    Some((tab["channel"].as_str()?.to_owned(), wei("owed"), wei("signed")))
}

/// Positions a completion fed every node (`payments.md`, "Metering"): the prompt and every
/// generated token but the last, which is fed too when the model ended the text.
fn positions(completion: &serde_json::Value) -> u64 {
    let usage = &completion["usage"];
    let (prompt, generated) =
        (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    let ended = completion["choices"][0]["finish_reason"] == "stop";
    prompt + generated - u64::from(!ended)
}

/// Waits until every node paid through a channel and the gateway count the same `owed`, and
/// the gateway's latest voucher is exactly that; each node's (index, channel, owed).
fn agreement(api: &str, http: &[String]) -> Vec<(usize, String, u128)> {
    let operators: Vec<String> =
        (0..NODES).map(|i| infergrid_e2e::dev(Role::Operator, i).address.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<_> =
            (0..NODES).map(|i| (node_channel(&http[i]), gateway_tab(api, &operators[i]))).collect();
        let settled = views.iter().all(|view| match view {
            (Some((channel, owed, vouched, _)), Some((tab_channel, tab_owed, signed))) => {
                channel == tab_channel && owed == tab_owed && owed == vouched && signed == vouched
            }
            (None, None) => true,
            _ => false,
        });
        if settled {
            return views
                .into_iter()
                .enumerate()
                .filter_map(|(i, (node, _))| node.map(|(channel, owed, ..)| (i, channel, owed)))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "node and gateway never agreed: {views:#?}; the gateway's payments: {}",
            health(api)["routing"]["payments"]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_lost_answer_and_a_price_change_end_with_node_and_gateway_agreeing_to_the_wei() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::start(dir.path());
    let swarm = net.swarm();
    let http: Vec<String> = (0..NODES).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let (_nodes, node_logs): (Vec<Proc>, Vec<_>) = (0..NODES)
        .map(|i| {
            let extra =
                ["--http", &http[i], "--redeem-check-secs", "1", "--standing-check-secs", "1"];
            swarm.node_logged(i, &(i % 3).to_string(), &extra)
        })
        .unzip();
    let api = format!("127.0.0.1:{}", free_port());
    let (_gateway, log) = swarm.gateway_logged(0, &api, &["--testing-drop-answers", "1"], &[]);
    await_servable(&api, Duration::from_secs(60));

    // The first decode step's answer (from one of the route's nodes) is thrown away after the
    // node metered it; the step fails over and the completion is still the model's own.
    let prompt = "an answer lost on the way";
    let completion = complete(&api, &net.model_name(), prompt, 12);
    let (expected, _) = local_greedy(std::path::Path::new(&net.model), prompt, 12).unwrap();
    let ids: Vec<u32> =
        serde_json::from_value(completion["choices"][0]["token_ids"].clone()).unwrap();
    assert_eq!(ids, expected, "greedy output through the lost answer");
    let failovers = &health(&api)["routing"]["failovers"];
    assert_eq!(failovers.as_array().unwrap().len(), 1, "one failover: {failovers}");

    // Every node paid through a channel ends with the gateway's count equal to its own, and
    // a voucher for exactly that: the node whose answer was lost included.
    let agreed = agreement(&api, &http);
    let lines: Vec<String> = log.try_iter().collect();
    assert!(lines.iter().any(|l| l.contains("TESTING: dropped the answer")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("took the node's account")),
        "the gateway took a node's account: {lines:#?}"
    );
    // The four nodes: three on the route, and the one the lost step failed over from or to.
    assert_eq!(agreed.len(), NODES, "{agreed:?}");

    // Operator 1 (block 1, on every route) raises its price; its node and the gateway learn it
    // (the node within a second, the gateway within its 5 s refresh), and the next completion
    // pays the old price for what was served before and the new one after.
    let before = agreed[1].2;
    let price = "5000000000000wei";
    let key = infergrid_e2e::dev(Role::Operator, 1).private_key.to_string();
    let updated = Command::new(binary())
        .args(["operator", "update", "--price", price, "--key-env", "OPERATOR_KEY"])
        .args(["--rpc-url", &net.rpc, "--deployment", &net.deployment])
        .env("OPERATOR_KEY", key)
        .output()
        .unwrap();
    assert!(updated.status.success(), "{}", String::from_utf8_lossy(&updated.stderr));
    let changed = expect_line(&node_logs[1], "registered terms changed", Duration::from_secs(10));
    assert!(changed.is_ok(), "node 1 never saw its new price: {changed:?}");
    // The gateway follows a node's move only to terms it read from the registry itself.
    let known = expect_line(&log, "a node's registered terms changed", Duration::from_secs(30));
    assert!(known.is_ok(), "the gateway never read node 1's new price: {known:?}");
    // No voucher is due before this completion's Close (its steps are worth less than the
    // signing threshold): all of it is served at the old price, and the node moves with the
    // Close's voucher. The next completion is served at the new price.
    let owed_by_node_1 = |agreed: &[(usize, String, u128)]| agreed[1].2;
    let old_price = 2_000_000_000_000u128; // devnet operator 1's registered price
    let new_price = 5_000_000_000_000u128;
    let second = complete(&api, &net.model_name(), "and then the price went up", 12);
    let after_second = agreement(&api, &http);
    let third = complete(&api, &net.model_name(), "served at the new price", 12);
    let after_third = agreement(&api, &http);
    let lines: Vec<String> = log.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("the node moved to its new terms")),
        "the gateway followed the node to its new price: {lines:#?}"
    );
    // Node 1 serves one block, so a position is one block-token at the whole price.
    assert_eq!(owed_by_node_1(&after_second) - before, old_price * positions(&second) as u128);
    assert_eq!(
        owed_by_node_1(&after_third) - owed_by_node_1(&after_second),
        new_price * positions(&third) as u128
    );
    eprintln!(
        "node 1: owed {before} wei, {} after a completion at the old price, {} after one at the new",
        owed_by_node_1(&after_second),
        owed_by_node_1(&after_third)
    );
    let agreed = after_third;

    // The payer closes its channels; each node redeems its latest voucher, and the chain pays
    // exactly what both sides agreed.
    let closed = Command::new(binary())
        .args(["channels", "close", "--rpc-url", &net.rpc, "--deployment", &net.deployment])
        .env("INFERGRID_PAYER_KEY", infergrid_e2e::dev(Role::Payer, 0).private_key.to_string())
        .output()
        .unwrap();
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    let channels = net.manifest["contracts"]["channels"].as_str().unwrap();
    let signature = "getChannel(uint256)((address,uint64,address,uint128,uint128))";
    for (i, channel, owed) in agreed {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let words = infergrid_e2e::cast_call(&net.rpc, channels, signature, &[&channel], None);
            let paid = words[4].parse::<u128>().unwrap();
            if paid == owed {
                eprintln!("node {i}: channel {channel}: owed = signed = redeemed = {paid} wei");
                break;
            }
            assert!(Instant::now() < deadline, "node {i}: paid {paid} wei on-chain, owed {owed}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
