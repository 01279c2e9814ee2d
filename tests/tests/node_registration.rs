//! A node checks its own registration at start: started differently from what gateways read
//! on-chain, it refuses with the fix in one line (or registers how it was started with
//! `--update-registration`); a port another process holds is an error, not a silent share.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use infergrid::devnet::{NODE_PORT_BASE, Role};
use infergrid_e2e::procs::{SWARM, Swarm, TestNet, binary, start};

/// Runs `infergrid node` as operator `index` with `args`, expecting it to refuse: its last
/// stderr line. A node that starts instead fails the test (killed after 60 s).
fn refused(swarm: &Swarm, index: usize, args: &[&str]) -> String {
    let key = infergrid_e2e::dev(Role::Operator, index).private_key.to_string();
    let mut child = Command::new(binary())
        .args(["node", "--model", swarm.model, "--key-env", "NODE_KEY"])
        .args(["--rpc-url", swarm.rpc, "--deployment", swarm.deployment])
        .args(args)
        .env("NODE_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the node started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default().to_owned()
}

#[test]
fn a_node_started_unlike_its_registration_refuses_or_updates_it() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::start(dir.path());
    let (swarm, manifest, rpc) = (net.swarm(), &net.manifest, net.rpc.as_str());
    let (deployment, model) = (Path::new(&net.deployment), Path::new(&net.model));
    // Operator 0 is registered for block 0 at 127.0.0.1:31000.
    let registered = format!("/ip4/127.0.0.1/tcp/{NODE_PORT_BASE}");
    let elsewhere = format!("/ip4/127.0.0.1/tcp/{}", NODE_PORT_BASE + 9);

    let error = refused(&swarm, 0, &["--blocks", "0", "--listen", &elsewhere]);
    assert!(error.contains(&format!("registered at {registered}/p2p/")), "{error}");
    assert!(error.contains(&format!("Listen there (--listen {registered})")), "{error}");
    assert!(error.contains("--update-registration"), "{error}");

    let error = refused(&swarm, 0, &["--blocks", "1", "--listen", &registered]);
    assert!(error.contains("registered for blocks 0, started with --blocks 1"), "{error}");
    assert!(error.contains("start with --blocks 0"), "{error}");

    // A port someone else listens on is an error naming it.
    let taken = std::net::TcpListener::bind(("127.0.0.1", NODE_PORT_BASE + 1)).unwrap();
    let clash = format!("/ip4/127.0.0.1/tcp/{}", NODE_PORT_BASE + 1);
    let error = refused(&swarm, 1, &["--blocks", "1", "--listen", &clash]);
    assert!(error.contains("is taken by another process"), "{error}");
    drop(taken);

    // --update-registration registers how the node was started, and it serves.
    let key = infergrid_e2e::dev(Role::Operator, 0).private_key.to_string();
    let ledger = dir.path().join("moved.redb");
    let mut args = vec!["node", "--model", swarm.model, "--blocks", "0", "--key-env", "NODE_KEY"];
    args.extend(["--rpc-url", rpc, "--deployment", swarm.deployment, "--listen", &elsewhere]);
    args.extend(["--ledger", ledger.to_str().unwrap(), "--update-registration"]);
    let (_moved, _) = start(&args, &[("NODE_KEY", key)], "node ready");
    let operator = infergrid_e2e::dev(Role::Operator, 0).address.to_string();
    let audit = Command::new(binary())
        .args(["audit", "node", &operator, "--json", "--rpc-url", rpc, "--deployment"])
        .arg(deployment)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let multiaddrs = report["node"]["multiaddrs"].as_array().unwrap();
    assert_eq!(multiaddrs.len(), 1, "{report}");
    let now = multiaddrs[0].as_str().unwrap();
    assert!(now.starts_with(&format!("{elsewhere}/p2p/")), "{now}");

    // With blocks 1 and 2 unserved, the gateway says so: /healthz is 503 naming them, and a
    // request fails naming block 1 (not block 0). Once their nodes start, the next directory
    // refresh routes through them.
    let api = format!("127.0.0.1:{}", infergrid_e2e::procs::free_port());
    let _gateway = swarm.gateway(&api, &[]);
    // Once the gateway has heard from node 0 (its first directory refresh dials it), only
    // blocks 1 and 2 are left unserved.
    let started = Instant::now();
    let health = loop {
        let health = infergrid_e2e::http::health(&api);
        if health["unserved_blocks"] == serde_json::json!([1, 2]) {
            break health;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{health}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(health["status"], "unservable", "{health}");
    let name = infergrid::model::ModelManifest::load(model).unwrap().name;
    let body = format!(r#"{{"model":"{name}","prompt":"hello","max_tokens":4,"temperature":0}}"#);
    let request = infergrid_e2e::http::post_request("/v1/completions", None, &body);
    let (status, _, answer) = infergrid_e2e::http::exchange(&api, &request);
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("block 1 failed to run: no other staked, reachable peer"), "{answer}");
    // The node that failed shows under failovers, with no peer taking over; and no channel
    // was opened (no deposit locked up) to it, since it never answered a ping.
    let health = infergrid_e2e::http::health(&api);
    let operator1 = &manifest["roles"]["operators"][1];
    let failed = health["routing"]["failovers"].as_array().unwrap();
    assert!(
        failed.iter().any(|f| f["failed_peer"] == operator1["peer_id"]
            && f["recovered"] == false
            && f["reason"].as_str().unwrap().contains("no channel was opened")),
        "{health}"
    );
    let listed = Command::new(binary())
        .args(["channels", "list", "--json", "--rpc-url", rpc, "--deployment"])
        .arg(deployment)
        .env("INFERGRID_PAYER_KEY", infergrid_e2e::dev(Role::Payer, 0).private_key.to_string())
        .output()
        .unwrap();
    let channels: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let to = |node: &serde_json::Value| {
        channels
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["node"].as_str().unwrap().eq_ignore_ascii_case(node.as_str().unwrap()))
    };
    assert!(to(&manifest["roles"]["operators"][0]["address"]), "{channels}");
    assert!(!to(&operator1["address"]), "a channel to the unreachable node: {channels}");
    let _rest = [swarm.node(1, "1", &[]), swarm.node(2, "2", &[])];
    let joined = infergrid_e2e::http::await_servable(&api, Duration::from_secs(30));
    eprintln!("blocks 1 and 2 servable {:.1} s after their nodes started", joined.as_secs_f64());
    let (status, _, answer) = infergrid_e2e::http::exchange(&api, &request);
    assert_eq!(status, 200, "{answer}");
    let (expected, _) = infergrid_e2e::models::local_greedy(model, "hello", 4).unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["choices"][0]["token_ids"], serde_json::json!(expected));
}

/// A devnet's node stopped by hand is reaped and reported by the devnet, not left a zombie.
#[test]
fn a_devnet_reaps_and_reports_a_node_stopped_by_hand() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--layers", "3", "--seed", "21"];
    let hf = infergrid_e2e::models::make_checkpoint(dir.path(), "llama", &flags).unwrap();
    let model = infergrid_e2e::models::import(&hf, &dir.path().join("model"), 3).unwrap();
    let args = ["--nodes", "3", "--api", "127.0.0.1:0"];
    let (_devnet, manifest, _) =
        infergrid_e2e::procs::devnet_with(dir.path(), model.to_str().unwrap(), &args);
    let pid = manifest["node_pids"][1].as_u64().unwrap();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let expected = format!("devnet: node 1 (pid {pid}) exited (signal: 9 (SIGKILL))");
    let stopped = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
        if log.contains(&expected) {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "no {expected:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reaped: no zombie entry left under /proc.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} is a zombie");
}
