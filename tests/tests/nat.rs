//! Home machines behind NAT serve the swarm, across real NATs: Linux network namespaces with a
//! masquerading router per home network (root only). A public network holds the chain and a
//! node, which relays for the others (`--relay-service`) or leaves that to a dedicated
//! `infergrid relay`; two nodes sit in home networks, each behind its own router, and the
//! gateway behind a third. The home nodes learn with AutoNAT that nobody can dial them,
//! reserve a slot on the relay and register their relayed addresses on-chain by themselves;
//! the gateway reaches them through the relay, then directly where the routers let a hole be
//! punched. Completions equal the model run whole in one process.

use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use infergrid::devnet::Role;
use infergrid_e2e::dev;
use infergrid_e2e::models::{import, local_greedy, make_checkpoint};
use infergrid_e2e::netns::{Host, Lab, Mapping};
use infergrid_e2e::procs::{Proc, SWARM, devnet_in, expect_line, start_following_in};

const PROMPT: &str = "the quick brown fox";

/// What one run across the NATs saw.
struct Run {
    /// The gateway's path to each home node after the first completion: `direct` or
    /// `relayed`.
    paths: Vec<String>,
    /// Gateway log lines about hole punching.
    punching: Vec<String>,
}

/// Which relay the home nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// The public node, run with `--relay-service` (any public node can relay).
    PublicNode,
    /// A dedicated `infergrid relay`.
    Dedicated,
}

/// `curl` inside `host`'s namespace: the HTTP status and body.
fn curl(host: &Host, args: &[&str]) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &host.netns, "curl", "-s", "-m", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// The peer id in a `node ready: peer <id>, …` line.
fn peer_in(ready: &str) -> String {
    ready.split("peer ").nth(1).and_then(|s| s.split(',').next()).expect("peer id").to_owned()
}

/// Waits for a line containing `text`, or fails with the lines seen.
fn wait_for(lines: &Receiver<String>, text: &str, within: Duration, what: &str) -> String {
    expect_line(lines, text, within)
        .unwrap_or_else(|seen| panic!("{what}: no line with {text:?} in {within:?}: {seen:#?}"))
}

/// `infergrid node` as devnet operator `index` on `host`, serving `blocks`, with `extra`
/// arguments: the process, its ready line and what it prints after.
fn start_node(
    host: &Host,
    index: usize,
    blocks: &str,
    extra: &[&str],
    chain: [&str; 4],
    model: &str,
    dir: &std::path::Path,
) -> (Proc, String, Receiver<String>) {
    let listen = format!("/ip4/{}/tcp/{}", host.ip, 31000 + index);
    let ledger = dir.join(format!("node-{index}.redb"));
    let mut args = vec!["node", "--model", model, "--blocks", blocks, "--key-env", "NODE_KEY"];
    args.extend(["--listen", &listen, "--update-registration"]);
    args.extend(["--ledger", ledger.to_str().unwrap()]);
    args.extend(chain);
    args.extend_from_slice(extra);
    let key = ("NODE_KEY", dev(Role::Operator, index).private_key.to_string());
    start_following_in(Some(&host.netns), &args, &[key], "node ready")
}

/// Runs the NAT topology with home routers mapping ports as `mapping`, streams a greedy
/// completion of `tokens` tokens through the gateway and checks it against the local run.
fn across_nats(mapping: Mapping, max_pos: &str, tokens: usize, relay: Relay) -> Run {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--layers", "3", "--seed", "21", "--max-pos", max_pos];
    let hf = make_checkpoint(dir.path(), "llama", &flags).unwrap();
    let model = import(&hf, &dir.path().join("model"), 3).unwrap();
    let model_arg = model.to_str().unwrap().to_owned();

    // Dropped last: every process below is stopped before its namespace goes.
    let mut lab = Lab::new(if mapping == Mapping::PortPreserving { "p" } else { "r" });
    let public = lab.public();
    let homes: Vec<Host> = (1..=2).map(|n| lab.home(&public, n, mapping)).collect();
    let gateway_home = lab.home(&public, 3, mapping);

    let host = ["--host", public.ip.as_str()];
    let (_devnet, manifest, deployment) =
        devnet_in(Some(&public.netns), dir.path(), &model_arg, &host);
    let rpc = manifest["rpc_url"].as_str().unwrap().to_owned();
    let deployment = deployment.to_str().unwrap().to_owned();
    let chain = ["--rpc-url", rpc.as_str(), "--deployment", deployment.as_str()];

    let mut procs: Vec<Proc> = Vec::new();
    let (_relay, relay) = match relay {
        Relay::Dedicated => {
            let relay_key = ("RELAY_KEY", format!("0x{}", "42".repeat(32)));
            let relay_listen = format!("/ip4/{}/tcp/4001", public.ip);
            let mut args = vec!["relay", "--listen", &relay_listen, "--key-env", "RELAY_KEY"];
            args.extend(chain);
            let (relay, ready, _) =
                start_following_in(Some(&public.netns), &args, &[relay_key], "relay ready");
            let address = ready.split("--relay ").nth(1).expect("address").trim().to_owned();
            // The public node first: with the relay, it answers the home nodes' AutoNAT probes.
            let bootstrap = ["--bootstrap", address.as_str()];
            procs.push(start_node(&public, 0, "0", &bootstrap, chain, &model_arg, dir.path()).0);
            (Some(relay), address)
        }
        Relay::PublicNode => {
            let (node, ready, _) =
                start_node(&public, 0, "0", &["--relay-service"], chain, &model_arg, dir.path());
            procs.push(node);
            (None, format!("/ip4/{}/tcp/31000/p2p/{}", public.ip, peer_in(&ready)))
        }
    };
    eprintln!("relay: {relay}");

    let mut home_peers = Vec::new();
    // Nodes 1 and 2 at home, each finding out it is behind NAT.
    let relayed = ["--bootstrap", relay.as_str(), "--relay", relay.as_str()];
    for (index, host) in homes.iter().enumerate().map(|(i, h)| (i + 1, h)) {
        let (node, ready, lines) =
            start_node(host, index, &index.to_string(), &relayed, chain, &model_arg, dir.path());
        procs.push(node);
        let registered =
            wait_for(&lines, "registered multiaddrs", Duration::from_secs(180), "node");
        eprintln!("node {index} (home {index}): {registered}");
        assert!(registered.contains("/p2p-circuit/p2p/"), "{registered}");
        home_peers.push(peer_in(&ready));
    }

    let api = format!("{}:8080", gateway_home.ip);
    let wallet = dir.path().join("gateway-wallet.redb");
    let p2p = format!("/ip4/{}/tcp/4003", gateway_home.ip);
    let mut args = vec!["gateway", "--model", &model_arg, "--key-env", "PAYER_KEY", "--listen"];
    args.extend([api.as_str(), "--p2p-listen", &p2p, "--bootstrap", &relay]);
    args.extend(["--wallet", wallet.to_str().unwrap(), "--wei-per-ms", "1000"]);
    args.extend(chain);
    let payer = ("PAYER_KEY", dev(Role::Payer, 0).private_key.to_string());
    let (_gateway, _, gateway_log) =
        start_following_in(Some(&gateway_home.netns), &args, &[payer], "gateway ready");

    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;
    let (expected, _) = local_greedy(&model, PROMPT, tokens).unwrap();
    let body = serde_json::json!({
        "model": name, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0
    })
    .to_string();
    let url = format!("http://{api}/v1/completions");
    // `patient`: retried while the gateway still reaches for a block's node (503).
    let complete = |patient: bool| {
        let deadline = Instant::now() + Duration::from_secs(if patient { 90 } else { 0 });
        loop {
            let json = ["-H", "Content-Type: application/json", "-d", &body, &url];
            let (status, answer) = curl(&gateway_home, &json);
            if status == 200 {
                let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
                return serde_json::from_value::<Vec<u32>>(
                    answer["choices"][0]["token_ids"].clone(),
                )
                .unwrap();
            }
            // 503 while the gateway still reaches for a block's node.
            assert!(Instant::now() < deadline, "no completion: {status} {answer}");
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let started = Instant::now();
    let first = complete(true);
    eprintln!("first completion ({tokens} tokens) in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(first, expected, "the completion across NATs differs from the local run");

    // Let DCUtR run (it starts with the first relayed connection), then complete again.
    let punching: Vec<String> = match mapping {
        Mapping::PortPreserving => {
            let line = wait_for(&gateway_log, "hole punched", Duration::from_secs(30), "gateway");
            vec![line]
        }
        Mapping::RandomPorts => {
            std::thread::sleep(Duration::from_secs(5));
            gateway_log.try_iter().filter(|l| l.contains("hole punch")).collect()
        }
    };
    // The gateway's path to each home node, once both are direct or 30 s have passed.
    let paths_now = || {
        let (_, health) = curl(&gateway_home, &[&format!("http://{api}/healthz")]);
        let health: serde_json::Value = serde_json::from_str(&health).expect("healthz JSON");
        let path = |peer: &String| health["routing"]["paths"][peer].as_str().map(str::to_owned);
        home_peers
            .iter()
            .map(|peer| path(peer).unwrap_or_else(|| "none".into()))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut paths = paths_now();
    while mapping == Mapping::PortPreserving
        && paths.iter().any(|p| p != "direct")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(500));
        paths = paths_now();
    }

    let started = Instant::now();
    let again = complete(false);
    eprintln!("second completion in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(again, expected, "the second completion differs from the local run");
    drop(procs);
    Run { paths, punching }
}

#[test]
fn home_nodes_behind_nat_serve_through_a_relay_and_go_direct() {
    let run = across_nats(Mapping::PortPreserving, "256", 24, Relay::PublicNode);
    eprintln!("gateway → home nodes: {:?}; {:?}", run.paths, run.punching);
    assert_eq!(run.paths, ["direct", "direct"], "the gateway's paths to the home nodes");
}

/// Behind port-randomizing routers no hole can be punched: 600-token streams run over a
/// dedicated relay, within its limits.
#[test]
fn without_hole_punching_a_long_stream_runs_over_the_relay() {
    let run = across_nats(Mapping::RandomPorts, "1024", 600, Relay::Dedicated);
    eprintln!("gateway → home nodes: {:?}; {:?}", run.paths, run.punching);
    assert_eq!(run.paths, ["relayed", "relayed"], "the gateway's paths to the home nodes");
}

/// A relay serves registered nodes only: a registered node's reservation is accepted and it
/// is reachable through the relay; a stranger's is refused, so nobody can be reached through
/// the relay but the swarm's nodes, and it is no proxy to a third party.
#[test]
fn a_relay_reserves_for_registered_nodes_only() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "3", "--seed", "21"]).unwrap();
    let model = import(&hf, &dir.path().join("model"), 3).unwrap();
    let (_devnet, manifest, deployment) = devnet_in(None, dir.path(), model.to_str().unwrap(), &[]);
    let (rpc, deployment) = (manifest["rpc_url"].as_str().unwrap(), deployment.to_str().unwrap());
    let port = infergrid_e2e::procs::free_port().to_string();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let args = ["relay", "--listen", &listen, "--key-env", "RELAY_KEY", "--rpc-url", rpc];
    let args = [&args[..], &["--deployment", deployment]].concat();
    let relay_key = ("RELAY_KEY", format!("0x{}", "42".repeat(32)));
    let (_relay, ready, _) = start_following_in(None, &args, &[relay_key], "relay ready");
    let relay: libp2p::Multiaddr = ready.split("--relay ").nth(1).unwrap().trim().parse().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(registered_only(relay));
}

/// Through `relay`: a registered node reserves and is reached, a stranger does neither.
async fn registered_only(relay: libp2p::Multiaddr) {
    use infergrid::identity::NodeIdentity;
    use infergrid::net::{NatConfig, NetConfig, Network};

    // Reserving at once, as a node behind NAT that knows it.
    let behind_nat = |keypair: libp2p::identity::Keypair| {
        Network::spawn(NetConfig {
            keypair,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            request_timeout: Duration::from_secs(30),
            nat: NatConfig {
                relays: vec![relay.clone()],
                force_private: true,
                ..Default::default()
            },
        })
        .unwrap()
        .0
    };
    let operator = dev(Role::Operator, 0).private_key;
    let registered = behind_nat(NodeIdentity::derive(&operator).keypair());
    let stranger =
        behind_nat(NodeIdentity::derive(&alloy::primitives::B256::repeat_byte(7)).keypair());

    let mut reachability = registered.reachability();
    let reserved = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if !reachability.borrow_and_update().relayed.is_empty() {
                return reachability.borrow().relayed.clone();
            }
            reachability.changed().await.unwrap();
        }
    })
    .await
    .expect("the registered node's reservation was not accepted");
    eprintln!("registered node reachable at {reserved:?}");

    // The stranger asked on the same relay, at the same time, and again every 5 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(stranger.reachability().borrow().relayed.is_empty(), "a stranger got a reservation");

    // Through the relay, a peer reaches the registered node, not the stranger.
    let (client, _) = infergrid_e2e::nodes::network(None).unwrap();
    let via_relay = |peer: libp2p::PeerId| {
        relay
            .clone()
            .with(libp2p::multiaddr::Protocol::P2pCircuit)
            .with(libp2p::multiaddr::Protocol::P2p(peer))
    };
    client.dial(registered.local_peer(), via_relay(registered.local_peer())).await.unwrap();
    client.dial(stranger.local_peer(), via_relay(stranger.local_peer())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.paths().get(&registered.local_peer()).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        client.paths().get(&registered.local_peer()),
        Some(infergrid::net::nat::Path::Relayed),
        "the registered node is reached through the relay"
    );
    assert_eq!(client.paths().get(&stranger.local_peer()), None, "the stranger is not");
}
