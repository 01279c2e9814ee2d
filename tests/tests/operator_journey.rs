//! README's "Run a node", followed top to bottom with `infergrid` commands only (no `cast`):
//! a new key joins a running network for block 1, is routed to and paid, unbonds, is refused
//! an early withdrawal with the time left, and withdraws once the devnet's clock moved on.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use infergrid::devnet::Role;
use infergrid_e2e::http::{await_servable, complete, health};
use infergrid_e2e::models::local_greedy;
use infergrid_e2e::procs::{Proc, Swarm, TestNet, binary, expect_line, free_port, start_following};

const PASSWORD: &str = "correct horse battery staple";

/// `infergrid ARGS` against the devnet, with the keystore password set.
fn infergrid(swarm: &Swarm, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .args(["--rpc-url", swarm.rpc, "--deployment", swarm.deployment])
        .env("INFERGRID_KEYSTORE_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

fn succeeded(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: Output) -> String {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_owned()
}

#[test]
fn a_new_operator_follows_the_readme_from_key_to_withdrawal() {
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::start(dir.path());
    let (swarm, rpc, model) = (net.swarm(), net.rpc.as_str(), Path::new(&net.model));
    // From any directory, with no --rpc-url or --deployment, commands use the devnet started
    // last (recorded under $XDG_CONFIG_HOME, here the test's directory); with none recorded,
    // the error says what was tried and what to do.
    let elsewhere = tempfile::tempdir().unwrap();
    let chain_info = |config: &std::path::Path| {
        Command::new(binary())
            .args(["chain", "info"])
            .current_dir(elsewhere.path())
            .env("XDG_CONFIG_HOME", config)
            .env_remove("INFERGRID_RPC_URL")
            .env_remove("INFERGRID_DEPLOYMENT")
            .output()
            .unwrap()
    };
    let info = succeeded(chain_info(dir.path()));
    assert!(info.contains(&format!("at {rpc}, contracts since block")), "{info}");
    let error = refused(chain_info(elsewhere.path()));
    assert!(error.contains("no deployment given, no anvil-fixtures/devnet/deployment.json in"));
    assert!(error.contains("start one with `infergrid devnet`, or pass --deployment"), "{error}");

    // The network: blocks 0 and 2 served; the operator registered for block 1 is not running.
    let _nodes: Vec<Proc> = [(0, "0"), (2, "2")].map(|(i, b)| swarm.node(i, b, &[])).into();
    let api = format!("127.0.0.1:{}", free_port());
    let gateway = swarm.gateway(&api, &[]);

    // A new key, in an encrypted keystore, funded by the devnet.
    let keystore = dir.path().join("op.json");
    let keystore = keystore.to_str().unwrap();
    let created = Command::new(binary())
        .args(["keystore", "new", "--out", keystore])
        .env("INFERGRID_KEYSTORE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let address = succeeded(created).trim().to_owned();
    assert!(address.starts_with("0x") && address.len() == 42, "{address}");
    // Too little ether for gas is named as such, with the way out.
    let fund = |btt: &str, eth: &str| {
        succeeded(infergrid(&swarm, &["devnet", "fund", &address, "--btt", btt, "--eth", eth]))
    };
    fund("2000", "0.000001");

    // Register for block 1 where the node will listen, and start it there.
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    // The key, the model and block 1: the same in the registration and for the node.
    let service = ["--keystore", keystore, "--model", swarm.model, "--blocks", "1"];
    let terms = ["--price", "1000wei", "--stake", "1000BTT", "--multiaddr", &listen];
    let register = [&["operator", "register"][..], &service, &terms].concat();
    let error = refused(infergrid(&swarm, &register));
    assert!(error.contains("too little ether to pay for gas"), "{error}");
    assert!(error.contains("`infergrid devnet fund ADDRESS`"), "{error}");
    let funded = fund("0", "10");
    assert!(funded.contains(": 2000 BTT, 10 ether"), "{funded}");
    let registered = succeeded(infergrid(&swarm, &register));
    assert!(registered.contains("register: tx 0x") && registered.contains("active       true"));
    let ledger = dir.path().join("op-ledger.redb");
    let chain = ["--rpc-url", swarm.rpc, "--deployment", swarm.deployment];
    let serving = ["--listen", &listen, "--ledger", ledger.to_str().unwrap()];
    let node_args =
        [&["node"][..], &service, &serving, &chain, &["--standing-check-secs", "1"]].concat();
    let password = [("INFERGRID_KEYSTORE_PASSWORD", PASSWORD.to_owned())];
    let (_node, _, node_log) = start_following(&node_args, &password, "node ready");

    // Routed within a directory refresh or two: /healthz is ok once the gateway heard from it,
    // a completion equals the model run whole, and the gateway has signed vouchers to it.
    let joined = await_servable(&api, Duration::from_secs(30));
    let answer = complete(&api, &net.model_name(), "hello", 8);
    let (expected, _) = local_greedy(model, "hello", 8).unwrap();
    assert_eq!(answer["choices"][0]["token_ids"], serde_json::json!(expected));
    let tabs = health(&api)["routing"]["payments"].as_array().unwrap().clone();
    let earned = tabs
        .iter()
        .find(|t| t["operator"].as_str().unwrap().eq_ignore_ascii_case(&address))
        .unwrap_or_else(|| panic!("no tab for {address}: {tabs:?}"));
    assert_ne!(earned["signed"], "0", "{earned}");
    eprintln!(
        "joined and routed {:.1} s after start; signed {} wei for its tokens",
        joined.as_secs_f64(),
        earned["signed"]
    );

    // The payer's view: what it signed and the node has not redeemed yet is listed from the
    // gateway's wallet; while the gateway runs, its wallet is busy and the list says so.
    let payer = infergrid_e2e::dev(Role::Payer, 0).private_key.to_string();
    let wallet = dir.path().join("wallet-0.redb");
    let list_channels = || {
        Command::new(binary())
            .args(["channels", "list", "--json", "--wallet", wallet.to_str().unwrap()])
            .args(["--rpc-url", swarm.rpc, "--deployment", swarm.deployment])
            .env("INFERGRID_PAYER_KEY", &payer)
            .output()
            .unwrap()
    };
    let busy = list_channels();
    let note = String::from_utf8_lossy(&busy.stderr);
    assert!(note.contains("is its gateway running?") && note.contains("/healthz"), "{note}");
    let listed: serde_json::Value = serde_json::from_str(&succeeded(busy)).unwrap();
    assert!(listed.as_array().unwrap().iter().all(|c| c["unredeemed"].is_null()), "{listed}");
    drop(gateway);
    let listed: serde_json::Value = serde_json::from_str(&succeeded(list_channels())).unwrap();
    let channel = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"].as_str().unwrap().eq_ignore_ascii_case(&address))
        .unwrap_or_else(|| panic!("no channel to {address}: {listed}"))
        .clone();
    let wei = |v: &serde_json::Value| v.as_str().unwrap().parse::<u128>().unwrap();
    assert_eq!(
        wei(&channel["unredeemed"]) + wei(&channel["paid"]),
        wei(&earned["signed"]),
        "signed = redeemed + unredeemed: {channel}"
    );
    assert_eq!(
        wei(&channel["refundable"]),
        wei(&channel["deposit"]) - wei(&earned["signed"]),
        "{channel}"
    );

    // Leaving: unbonding below the minimum needs --yes; withdrawing early is refused with
    // the time left; after the devnet's clock moves a week, the stake comes back.
    let unbond = ["operator", "unbond", "1000", "--keystore", keystore];
    let error = refused(infergrid(&swarm, &unbond));
    assert!(error.contains("below the minimum 1000 BTT") && error.contains("--yes"), "{error}");
    let unbonding = succeeded(infergrid(&swarm, &[&unbond[..], &["--yes"]].concat()));
    assert!(unbonding.contains("active       false"), "{unbonding}");
    // The running node notices on its own, within its standing check.
    let noticed = expect_line(&node_log, "INACTIVE, gateways", Duration::from_secs(10))
        .unwrap_or_else(|seen| panic!("the node never said it is inactive: {seen:?}"));
    assert!(noticed.contains("below the minimum 1000 BTT"), "{noticed}");
    let withdraw = ["operator", "withdraw", "--keystore", keystore];
    let error = refused(infergrid(&swarm, &withdraw));
    assert!(error.contains("1000 BTT can be withdrawn at 20"), "{error}");
    assert!(error.contains("(in 7d)") || error.contains("(in 6d 23h)"), "{error}");
    let advanced = succeeded(infergrid(&swarm, &["devnet", "advance-time", "7d"]));
    assert!(advanced.contains("clock moved 7d forward"), "{advanced}");
    let withdrawn = succeeded(infergrid(&swarm, &withdraw));
    assert!(withdrawn.contains("withdraw: tx 0x") && withdrawn.contains("unbonding    0 BTT"));
}
