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

    // Registering again, or below the minimum stake, is refused before any transaction.
    let again = one_line_error(&operator(
        &devnet,
        &key,
        &["register", "--model", m, "--blocks", "0", "--price", "1wei", "--stake", "2000"],
    ));
    assert!(again.contains("is already registered: `infergrid operator update`"), "{again}");
    // What it serves changes with `update`; what is not given stays.
    let out = stdout(&operator(&devnet, &key, &["update", "--price", "2000000000000wei"]));
    assert!(out.contains("update: tx 0x"), "{out}");
    let price = cast(&[
        "call",
        devnet.contract("registry"),
        "getNode(address)((bytes,bytes32,uint32,uint32,uint256,string[],uint256,uint256,uint64,uint64,uint64))",
        &account.address.to_string(),
        "--rpc-url",
        rpc,
    ]);
    assert!(price.contains("2000000000000") && price.contains("/tcp/41000/p2p/"), "{price}");
    // Unjailing a node that is not jailed is the contract's error, in one line.
    let err = one_line_error(&operator(&devnet, &key, &["unjail"]));
    assert!(err.contains("NotJailed"), "{err}");

    // Unbonding below the minimum needs --yes: the node stops being routed to.
    let err = one_line_error(&operator(&devnet, &key, &["unbond", "2500BTT"]));
    assert!(err.contains("leaves 0 BTT bonded, below the minimum 1000 BTT"), "{err}");
    assert!(err.contains("Pass --yes"), "{err}");
    let out = stdout(&operator(&devnet, &key, &["unbond", "2500BTT", "--yes"]));
    assert!(out.contains("unbonding    2500 BTT") && out.contains("active       false"), "{out}");
    // Withdrawing early is refused before any transaction, with the time left.
    // (The status and the refusal may read a block a second after the unbond's.)
    let a_week = |text: &str| text.contains("(in 7d)") || text.contains("(in 6d 23h)");
    assert!(out.contains("(withdrawable at 20") && a_week(&out), "{out}");
    let err = one_line_error(&operator(&devnet, &key, &["withdraw"]));
    assert!(err.contains("2500 BTT can be withdrawn at 20") && a_week(&err), "{err}");
    assert!(err.contains("by the chain's clock; unbonding takes 7d"), "{err}");
    // So is leaving the registry with stake still unbonding.
    let err = one_line_error(&operator(&devnet, &key, &["deregister"]));
    assert!(err.contains("StakeNotWithdrawn"), "{err}");

    // After the unbonding period: withdraw everything, then leave the registry, which frees
    // the peer id; the auditor still shows what the node did, up to its deregistration.
    let advanced = Command::new(BIN)
        .args(["devnet", "advance-time", "7d", "--rpc-url", rpc, "--deployment"])
        .arg(devnet.deployment())
        .output()
        .unwrap();
    assert!(stdout(&advanced).contains("clock moved 7d forward"));
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

#[test]
fn a_new_key_is_funded_by_the_devnet_and_short_commands_end_quietly_on_a_closed_pipe() {
    use std::os::unix::process::ExitStatusExt;
    let devnet = Devnet::start();
    let fresh = "0x00000000000000000000000000000000000f4e57";
    let fund = |args: &[&str]| {
        Command::new(BIN)
            .args(["devnet", "fund"])
            .args(args)
            .args(["--rpc-url", devnet.rpc(), "--deployment"])
            .arg(devnet.deployment())
            .output()
            .unwrap()
    };
    let out = stdout(&fund(&[fresh, "--btt", "1500", "--eth", "2"]));
    assert!(out.contains(": 1500 BTT, 2 ether"), "{out}");
    let balance = cast(&["balance", fresh, "--rpc-url", devnet.rpc()]);
    assert!(balance.starts_with("2000000000000000000"), "{balance}");
    let bad = one_line_error(&fund(&[fresh, "--btt", "lots"]));
    assert!(bad.contains("--btt \"lots\" is not an amount"), "{bad}");

    // The numbers an operator plans by come from the chain.
    let info = Command::new(BIN)
        .args(["chain", "info", "--rpc-url", devnet.rpc(), "--deployment"])
        .arg(devnet.deployment())
        .output()
        .unwrap();
    let info = stdout(&info);
    assert!(info.contains("min stake 1000 BTT, unbonding period 7d, jail term "), "{info}");
    assert!(info.contains(", close window "), "{info}");

    // `operator status | head -0`: the reader is gone before anything is written.
    let key = accounts_with(Role::Operator)[0].private_key.to_string();
    let mut child = Command::new(BIN)
        .args(["operator", "status", "--rpc-url", devnet.rpc(), "--deployment"])
        .arg(devnet.deployment())
        .args(["--key-env", "OP_KEY"])
        .env("OP_KEY", key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    // A bare amount is whole BTT, and the help says so; the global chain options are listed
    // under the subcommand, where they also work.
    let help = Command::new(BIN).args(["operator", "unbond", "--help"]).output().unwrap();
    let help = stdout(&help);
    assert!(help.contains("(`2500`, `2500BTT`: whole BTT; or `…wei`)"), "{help}");
    assert!(help.contains("--deployment <DEPLOYMENT>") && help.contains("--keystore <FILE>"));
}
