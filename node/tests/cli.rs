//! The `infergrid` binary as a user runs it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, utils::parse_ether};
use infergrid::chain::Account;
use infergrid::devnet::{AnvilProcess, DEVNET_CHAIN_ID, Role, StateFile, accounts_with};
use infergrid::tools::{self, Tool};

const BIN: &str = env!("CARGO_BIN_EXE_infergrid");

fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.is_file() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn devnet_comes_up_registers_roles_dumps_state_and_stops_on_ctrl_c() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ready = dir.path().join("ready.json");
    let started = Instant::now();
    let mut devnet = Command::new(BIN)
        .args(["devnet", "--port", "0", "--out"])
        .arg(dir.path().join("out"))
        .arg("--ready-file")
        .arg(&ready)
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    assert!(wait_for_file(&ready, Duration::from_secs(60)), "devnet never wrote its ready file");
    eprintln!("devnet ready after {:.1} s", started.elapsed().as_secs_f64());
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready)?)?;
    let url = manifest["rpc_url"].as_str().expect("rpc_url").to_owned();
    let registry = manifest["contracts"]["registry"].as_str().expect("registry").to_owned();
    let operator =
        manifest["roles"]["operators"][0]["address"].as_str().expect("operator").to_owned();
    assert_eq!(manifest["roles"]["operators"].as_array().map(Vec::len), Some(4));
    assert_eq!(manifest["roles"]["validators"].as_array().map(Vec::len), Some(3));
    assert_eq!(manifest["roles"]["payers"].as_array().map(Vec::len), Some(6));
    // It records itself as the user's current devnet, for commands run from anywhere.
    let record = dir.path().join("infergrid/devnet.json");
    let current: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record)?)?;
    assert_eq!(current["rpc_url"], url.as_str());
    assert_eq!(current["deployment_file"], manifest["deployment_file"]);

    // `cast` reads the registered node's stake from the address in the ready file.
    let out = Command::new(tools::locate(Tool::Cast)?)
        .args(["call", &registry, "stakeOf(address)(uint256)", &operator, "--rpc-url", &url])
        .output()?;
    assert!(out.status.success(), "cast failed: {}", String::from_utf8_lossy(&out.stderr));
    let stake = String::from_utf8(out.stdout)?;
    assert_eq!(stake.split_whitespace().next(), Some(parse_ether("10000")?.to_string().as_str()));

    // The state dump brings a fresh anvil to the same state without redeploying.
    let state = StateFile::load(Path::new(manifest["state_file"].as_str().expect("state_file")))?;
    let fresh =
        AnvilProcess::spawn(&tools::locate(Tool::Anvil)?, "127.0.0.1", 0, DEVNET_CHAIN_ID).await?;
    let account = Account::connect(fresh.url(), &accounts_with(Role::Payer)[0].private_key).await?;
    infergrid::devnet::load_state(&account, state.state).await?;
    let registry: Address = registry.parse()?;
    let operator: Address = operator.parse()?;
    let reloaded = infergrid::chain::Registry::new(registry, account.provider.clone());
    assert_eq!(reloaded.stake_of(operator).await?, parse_ether("10000")?);
    assert_eq!(reloaded.operators().await?.len(), 4);

    // Ctrl-C stops the devnet and its anvil.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(devnet.id() as libc::pid_t, libc::SIGINT) };
    let status = devnet.wait()?;
    assert!(status.success(), "devnet exited with {status}");
    assert!(
        Account::connect(&url, &accounts_with(Role::Payer)[0].private_key).await.is_err(),
        "anvil still up"
    );
    assert!(!record.exists(), "a stopped devnet is no longer the current one");
    Ok(())
}

fn one_line_error(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run infergrid");
    assert!(!out.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    // Progress lines may come first; the failure itself is one line, and the last.
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    assert_eq!(stderr.trim_end().lines().last(), Some(errors[0]), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    errors[0].to_owned()
}

#[test]
fn devnet_staffs_up_to_its_accounts_with_short_epochs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready.json");
    let out = dir.path().join("out");
    let mut devnet = Command::new(BIN)
        .args(["devnet", "--port", "0", "--validators", "5", "--epoch-secs", "60", "--out"])
        .arg(&out)
        .arg("--ready-file")
        .arg(&ready)
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the devnet");
    assert!(wait_for_file(&ready, Duration::from_secs(60)), "devnet never wrote its ready file");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    assert_eq!(manifest["roles"]["validators"].as_array().map(Vec::len), Some(5));
    let (url, validation) = (
        manifest["rpc_url"].as_str().unwrap(),
        manifest["contracts"]["validation"].as_str().unwrap(),
    );
    let call = |signature: &str| {
        let out = Command::new(tools::locate(Tool::Cast).unwrap())
            .args(["call", validation, signature, "--rpc-url", url])
            .output()
            .unwrap();
        assert!(out.status.success(), "cast: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
    };
    assert_eq!(call("epochDuration()(uint64)"), "60");
    // 5 validators of 10,000 BTT each, as `cast` reads the total active stake.
    assert_eq!(call("totalValidatorStake()(uint256)"), parse_ether("50000").unwrap().to_string());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(devnet.id() as libc::pid_t, libc::SIGINT) };
    assert!(devnet.wait().unwrap().success());

    let err = one_line_error(&[
        "devnet",
        "--port",
        "0",
        "--validators",
        "6",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("6 validators asked, the devnet has 5 such accounts"), "{err}");
}

#[test]
fn unreachable_rpc_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deployment = dir.path().join("deployment.json");
    let params = infergrid::chain::DeployParams::devnet(Address::ZERO);
    let file = infergrid::chain::Deployment {
        chain_id: DEVNET_CHAIN_ID,
        deploy_block: 1,
        deployer: Address::ZERO,
        contracts: infergrid::chain::ContractAddresses {
            token: Address::ZERO,
            registry: Address::ZERO,
            channels: Address::ZERO,
            validation: Address::ZERO,
        },
        params,
    };
    file.save(&deployment).expect("write deployment");
    // Port 9 (discard) on loopback: nothing listens there.
    let err = one_line_error(&[
        "chain",
        "info",
        "--rpc-url",
        "http://127.0.0.1:9",
        "--deployment",
        deployment.to_str().unwrap(),
    ]);
    assert!(err.starts_with("error: cannot reach the RPC at http://127.0.0.1:9"), "{err}");

    let err = one_line_error(&[
        "deploy",
        "--rpc-url",
        "http://127.0.0.1:9",
        "--key-env",
        "INFERGRID_TEST_UNSET_KEY",
    ]);
    assert!(err.contains("set INFERGRID_TEST_UNSET_KEY"), "{err}");

    // A deployment file that is not there: which file, from where, and how to point elsewhere,
    // with the OS error once.
    let missing = dir.path().join("nope.json");
    let err = one_line_error(&["chain", "info", "--deployment", missing.to_str().unwrap()]);
    assert!(err.contains(&format!("no deployment file {}", missing.display())), "{err}");
    assert!(err.contains("--deployment FILE (or set INFERGRID_DEPLOYMENT)"), "{err}");
    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "{").unwrap();
    let err = one_line_error(&["chain", "info", "--deployment", not_json.to_str().unwrap()]);
    assert!(err.contains("is not a valid deployment: EOF"), "{err}");
}

#[test]
fn missing_anvil_points_at_setup() {
    let err = one_line_error(&["devnet", "--anvil", "/nonexistent/anvil", "--port", "0"]);
    assert!(err.contains("cannot start anvil at /nonexistent/anvil"), "{err}");
    let out = Command::new(BIN)
        .args(["devnet", "--port", "0"])
        .env("INFERGRID_ANVIL", "/nonexistent/anvil")
        .output()
        .expect("run infergrid");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run `scripts/setup`"), "{stderr}");
}
