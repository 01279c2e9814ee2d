//! `infergrid operator` against a devnet: register, stake, unbond, withdraw, deregister,
//! status, and the contract's custom errors surfacing as one clear line.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use infergrid::devnet::{Role, accounts_with};
use support::{BIN, Devnet, cast, one_line_error, stdout};

fn operator(devnet: &Devnet, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["operator", "--rpc-url", devnet.rpc(), "--deployment"])
        .arg(devnet.deployment())
        .args(["--key-env", "OP_KEY"])
        .args(args)
        .env("OP_KEY", key)
        .output()
        .expect("run infergrid")
}

#[test]
fn operator_lifecycle_on_a_devnet() {
    let devnet = Devnet::start();
    let dir = &devnet.dir;
    let rpc = devnet.rpc();

    // A model folder: only its manifest's id is registered.
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-fixture"))
        .args(["--arch", "llama", "--layers", "2", "--out"])
        .arg(dir.path().join("hf"))
        .status()
        .unwrap();
    assert!(status.success());
    let imported = Command::new(BIN)
        .args(["model", "import", "--hf"])
        .arg(dir.path().join("hf"))
        .arg("--out")
        .arg(&model)
        .args(["--blocks", "2"])
        .output()
        .unwrap();
    assert!(imported.status.success());

    // A funded payer account becomes an operator.
    let account = &accounts_with(Role::Payer)[1];
    let key = account.private_key.to_string();
    let m = model.to_str().unwrap();
    let out = stdout(&operator(
        &devnet,
        &key,
        &[
            "register",
            "--model",
            m,
            "--blocks",
            "0-1",
            "--price",
            "0.000001BTT",
            "--stake",
            "2000BTT",
            "--multiaddr",
            "/ip4/127.0.0.1/tcp/41000",
        ],
    ));
    assert!(out.contains("register: tx 0x"), "{out}");
    assert!(out.contains("stake        2000 BTT") && out.contains("active       true"), "{out}");
    let out = stdout(&operator(&devnet, &key, &["stake", "500"]));
    assert!(out.contains("stake        2500 BTT"), "{out}");

    // cast agrees with what the CLI printed.
    let on_chain = cast(&[
        "call",
        devnet.contract("registry"),
        "stakeOf(address)(uint256)",
        &account.address.to_string(),
        "--rpc-url",
        rpc,
    ]);
    assert!(on_chain.starts_with("2500000000000000000000"), "{on_chain}");

    let out = stdout(&operator(&devnet, &key, &["unbond", "2500BTT"]));
    assert!(out.contains("unbonding    2500 BTT") && out.contains("active       false"), "{out}");
    // Withdrawing early is refused with the contract's own error, in one line.
    let err = one_line_error(&operator(&devnet, &key, &["withdraw"]));
    assert!(err.contains("UnbondingNotElapsed"), "{err}");
    // So is leaving the registry with stake still unbonding.
    let err = one_line_error(&operator(&devnet, &key, &["deregister"]));
    assert!(err.contains("StakeNotWithdrawn"), "{err}");

    // After the unbonding period: withdraw everything, then leave the registry, which frees
    // the peer id; the auditor still shows what the node did, up to its deregistration.
    cast(&["rpc", "evm_increaseTime", "604801", "--rpc-url", rpc]);
    cast(&["rpc", "evm_mine", "--rpc-url", rpc]);
    let out = stdout(&operator(&devnet, &key, &["withdraw"]));
    assert!(out.contains("withdraw: tx 0x") && out.contains("unbonding    0 BTT"), "{out}");
    let out = stdout(&operator(&devnet, &key, &["deregister"]));
    assert!(out.contains("deregister: tx 0x") && out.contains("not registered"), "{out}");
    let address = account.address.to_string();
    let audit = Command::new(BIN)
        .args(["audit", "node", &address, "--json", "--rpc-url", rpc, "--deployment"])
        .arg(devnet.deployment())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&stdout(&audit)).unwrap();
    assert!(report["node"].is_null(), "{report}");
    let events: Vec<&str> =
        report["history"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(events.first(), Some(&"NodeRegistered"), "{events:?}");
    assert_eq!(events.last(), Some(&"NodeDeregistered"), "{events:?}");
    // Bad amounts are refused before any transaction.
    let bad = one_line_error(&operator(&devnet, &key, &["stake", "lots"]));
    assert!(bad.contains("is not an amount"), "{bad}");
    let zero = one_line_error(&operator(&devnet, &key, &["stake", "0"]));
    assert!(zero.contains("greater than zero"), "{zero}");
}
