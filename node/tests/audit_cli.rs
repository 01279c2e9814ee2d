//! `infergrid audit` against a devnet: every figure equals what `cast call` reads from the
//! contracts at the same block, and a node's history holds its registry events.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use alloy::primitives::{U256, utils::parse_ether};
use infergrid::devnet::{Role, accounts_with};
use serde_json::Value;
use support::{BIN, Devnet, cast, one_line_error, stdout};

fn audit(rpc: &str, deployment: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("audit")
        .args(args)
        .args(["--rpc-url", rpc, "--deployment"])
        .arg(deployment)
        .output()
        .expect("run infergrid")
}

/// `cast call` at `block`, as the words of its answer: one per value, tuples and arrays
/// flattened (cast appends ` [1e22]` to large numbers; only the exact first word counts).
fn call(devnet: &Devnet, block: &Value, contract: &str, sig: &str, args: &[&str]) -> Vec<String> {
    let block = block.to_string();
    let mut cast_args = vec!["call", devnet.contract(contract), sig];
    cast_args.extend(args);
    cast_args.extend(["--rpc-url", devnet.rpc(), "--block", &block]);
    cast(&cast_args)
        .trim_matches(|c| matches!(c, '(' | ')' | '[' | ']'))
        .split(", ")
        .map(|value| value.split_whitespace().next().unwrap_or_default().to_lowercase())
        .collect()
}

fn text(value: &Value) -> String {
    value.as_str().map(str::to_lowercase).unwrap_or_else(|| value.to_string())
}

fn wei(value: &Value) -> U256 {
    value.as_str().expect("amounts are strings").parse().expect("a decimal amount")
}

#[test]
fn audit_matches_the_contracts_and_shows_a_nodes_history() {
    let devnet = Devnet::start();
    let (rpc, deployment) = (devnet.rpc(), devnet.deployment());

    let nodes: Vec<Value> =
        serde_json::from_str(&stdout(&audit(rpc, &deployment, &["nodes", "--json"]))).unwrap();
    let block = &nodes[0]["as_of_block"];
    let operators: Vec<String> = nodes.iter().map(|n| text(&n["operator"])).collect();
    let page =
        call(&devnet, block, "registry", "operators(uint256,uint256)(address[])", &["0", "256"]);
    assert_eq!(operators, page);
    let registered = devnet.manifest["roles"]["operators"].as_array().unwrap();
    for node in &nodes {
        let op = &text(&node["operator"]);
        let one = |contract: &str, sig: &str| call(&devnet, block, contract, sig, &[op]).remove(0);
        let info = registered.iter().find(|i| &text(&i["address"]) == op).unwrap();
        assert_eq!(&node["as_of_block"], block);
        assert_eq!(node["peer_id"], info["peer_id"]);
        let price: U256 = info["price_per_token"].as_str().unwrap().parse().unwrap();
        assert_eq!(wei(&node["price_per_token"]), price);
        assert_eq!(text(&node["stake"]), one("registry", "stakeOf(address)(uint256)"));
        assert_eq!(text(&node["active"]), one("registry", "isActive(address)(bool)"));
        let reputation = one("validation", "reputationOf(address)(uint32)");
        assert_eq!(text(&node["reputation_bps"]), reputation);
        let record = call(
            &devnet,
            block,
            "validation",
            "getNodeRecord(address)((uint32,uint32,uint64,uint64,uint32,uint256))",
            &[op],
        );
        let fields = ["epochs_scored", "challenges_passed", "challenges_failed", "faults"];
        let ours: Vec<String> = fields.iter().map(|f| text(&node[f])).collect();
        assert_eq!(ours, record[1..5]);
        assert_eq!(text(&node["total_slashed"]), record[5]);
    }

    // The table: a header, then one row per operator with its peer id.
    let table = stdout(&audit(rpc, &deployment, &["nodes"]));
    assert!(table.lines().any(|l| l.starts_with("OPERATOR") && l.contains("REPUTATION")));
    for (op, info) in operators.iter().zip(registered) {
        let rows: Vec<&str> = table.lines().filter(|l| l.to_lowercase().starts_with(op)).collect();
        assert_eq!(rows.len(), 1, "{table}");
        assert!(rows[0].contains(info["peer_id"].as_str().unwrap()), "{table}");
    }

    // An operator unbonds; its stake and history follow.
    let account = &accounts_with(Role::Operator)[0];
    let op = account.address.to_string();
    let before: U256 =
        call(&devnet, block, "registry", "stakeOf(address)(uint256)", &[&op])[0].parse().unwrap();
    let unbond = Command::new(BIN)
        .args(["operator", "--rpc-url", rpc, "--deployment"])
        .arg(&deployment)
        .args(["--key-env", "OP_KEY", "unbond", "100BTT"])
        .env("OP_KEY", account.private_key.to_string())
        .output()
        .unwrap();
    stdout(&unbond);

    // A payer opens a channel to another node and one to this node, then tops this one up:
    // only this node's channel shows in its history, with both of its events.
    let payer = accounts_with(Role::Payer)[0].clone();
    let payer_key = payer.private_key.to_string();
    let send = |to: &str, sig: &str, args: &[&str]| {
        let mut cast_args = vec!["send", to, sig];
        cast_args.extend(args);
        cast_args.extend(["--private-key", &payer_key, "--rpc-url", rpc]);
        cast(&cast_args);
    };
    let channels = devnet.contract("channels");
    let (deposit, top_up) = (parse_ether("3").unwrap(), parse_ether("2").unwrap());
    let amount = (deposit * U256::from(2) + top_up).to_string();
    send(devnet.contract("token"), "approve(address,uint256)", &[channels, &amount]);
    let other = accounts_with(Role::Operator)[1].address.to_string();
    for node in [&other, &op] {
        send(channels, "open(address,uint256)", &[node, &deposit.to_string()]);
    }
    // Ids count up from 1: the last channel opened is this node's.
    let ours = cast(&["call", channels, "channelCount()(uint256)", "--rpc-url", rpc]);
    send(channels, "topUp(uint256,uint256)", &[&ours, &top_up.to_string()]);
    let report: Value =
        serde_json::from_str(&stdout(&audit(rpc, &deployment, &["node", &op, "--json"]))).unwrap();
    let node = &report["node"];
    let after =
        call(&devnet, &node["as_of_block"], "registry", "stakeOf(address)(uint256)", &[&op]);
    assert_eq!(text(&node["stake"]), after[0]);
    assert_eq!(wei(&node["stake"]), before - parse_ether("100").unwrap());
    assert_eq!(wei(&node["unbonding"]), parse_ether("100").unwrap());

    let history = report["history"].as_array().unwrap();
    let blocks: Vec<u64> = history.iter().map(|e| e["block"].as_u64().unwrap()).collect();
    assert!(blocks.is_sorted(), "{blocks:?}");
    let event = |name: &str| {
        history.iter().find(|e| e["event"] == name).unwrap_or_else(|| panic!("no {name}"))
    };
    let info = registered.iter().find(|i| text(&i["address"]) == op.to_lowercase()).unwrap();
    let registered_stake: U256 = info["stake"].as_str().unwrap().parse().unwrap();
    assert_eq!(wei(&event("NodeRegistered")["fields"]["stake"]), registered_stake);
    let unbonded = event("UnbondRequested");
    assert_eq!(unbonded["contract"], "NodeRegistry");
    assert_eq!(wei(&unbonded["fields"]["amount"]), parse_ether("100").unwrap());
    assert_eq!(unbonded["fields"]["unbondingEndsAt"], node["unbonding_ends_at"]);
    let tx = unbonded["tx"].as_str().unwrap();
    assert_eq!(
        cast(&["receipt", tx, "blockNumber", "--rpc-url", rpc]),
        unbonded["block"].to_string()
    );

    let opened: Vec<&Value> = history.iter().filter(|e| e["event"] == "ChannelOpened").collect();
    assert_eq!(opened.len(), 1, "{history:?}");
    let opened = &opened[0]["fields"];
    assert_eq!(text(&opened["payer"]), payer.address.to_string().to_lowercase());
    assert_eq!(wei(&opened["deposit"]), deposit);
    let topped = event("ChannelToppedUp");
    assert_eq!(topped["fields"]["channelId"], opened["channelId"]);
    assert_eq!(wei(&topped["fields"]["amount"]), top_up);
    let channel = call(
        &devnet,
        &node["as_of_block"],
        "channels",
        "getChannel(uint256)((address,uint64,address,uint128,uint128))",
        &[opened["channelId"].as_str().unwrap()],
    );
    assert_eq!([&channel[2], &channel[3]], [&op.to_lowercase(), &(deposit + top_up).to_string()]);

    let human = stdout(&audit(rpc, &deployment, &["node", &op]));
    for name in ["NodeRegistered", "UnbondRequested"] {
        assert_eq!(human.lines().filter(|l| l.contains(name)).count(), 1, "{human}");
    }

    // An address without a node, and an endpoint that does not answer.
    let payer = accounts_with(Role::Payer)[0].address.to_string();
    let err = one_line_error(&audit(rpc, &deployment, &["node", &payer]));
    assert!(err.contains(&format!("{payer} has no node registered")), "{err}");
    let err = one_line_error(&audit("http://127.0.0.1:9", &deployment, &["nodes"]));
    assert!(err.starts_with("error: cannot reach the RPC at http://127.0.0.1:9"), "{err}");
}
