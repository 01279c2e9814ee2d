//! `infergrid operator` against a devnet: register, stake, unbond, withdraw, status, and the
//! contract's custom errors surfacing as one clear line.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use infergrid::devnet::{Role, accounts_with};

const BIN: &str = env!("CARGO_BIN_EXE_infergrid");

struct Devnet(std::process::Child);
impl Drop for Devnet {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; Ctrl-C takes its anvil down too.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

fn operator(dir: &Path, rpc: &str, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["operator", "--rpc-url", rpc, "--deployment"])
        .arg(dir.join("out/deployment.json"))
        .args(["--key-env", "OP_KEY"])
        .args(args)
        .env("OP_KEY", key)
        .output()
        .expect("run infergrid")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn operator_lifecycle_on_a_devnet() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let _devnet = Devnet(
        Command::new(BIN)
            .args(["devnet", "--port", "0", "--out"])
            .arg(dir.path().join("out"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !ready.is_file() {
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let rpc = manifest["rpc_url"].as_str().unwrap();

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
        dir.path(),
        rpc,
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
    assert!(
        out.contains("stake      2000.000000000000000000 BTT") && out.contains("active     true"),
        "{out}"
    );
    let out = stdout(&operator(dir.path(), rpc, &key, &["stake", "500"]));
    assert!(out.contains("stake      2500.000000000000000000 BTT"), "{out}");

    // cast agrees with what the CLI printed.
    let cast = infergrid::tools::locate(infergrid::tools::Tool::Cast).unwrap();
    let registry = manifest["contracts"]["registry"].as_str().unwrap();
    let on_chain = Command::new(cast)
        .args([
            "call",
            registry,
            "stakeOf(address)(uint256)",
            &account.address.to_string(),
            "--rpc-url",
            rpc,
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&on_chain.stdout).starts_with("2500000000000000000000"));

    let out = stdout(&operator(dir.path(), rpc, &key, &["unbond", "2500BTT"]));
    assert!(
        out.contains("unbonding  2500.000000000000000000 BTT") && out.contains("active     false"),
        "{out}"
    );
    // Withdrawing early is refused with the contract's own error, in one line.
    let early = operator(dir.path(), rpc, &key, &["withdraw"]);
    assert!(!early.status.success());
    let err = String::from_utf8_lossy(&early.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert!(err.contains("UnbondingNotElapsed"), "{err}");
    // Bad amounts are refused before any transaction.
    let bad = operator(dir.path(), rpc, &key, &["stake", "lots"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not an amount"));
    let zero = operator(dir.path(), rpc, &key, &["stake", "0"]);
    assert!(String::from_utf8_lossy(&zero.stderr).contains("greater than zero"));
}
