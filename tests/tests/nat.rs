//! Home machines behind NAT serve the swarm, across real NATs: Linux network namespaces with a
//! masquerading router per home network (root only). A public network holds the chain and a
//! node, which relays for the others (`--relay-service`) or leaves that to a dedicated
//! `infergrid relay`; two nodes sit in home networks, each behind its own router, and the
//! gateway behind a third. The home nodes learn with AutoNAT that nobody can dial them,
//! reserve a slot on the relay and register their relayed addresses on-chain by themselves;
//! the gateway reaches them through the relay, then directly where the routers let a hole be
//! punched. Completions equal the model run whole in one process.

use std::time::{Duration, Instant};

use infergrid::devnet::Role;
use infergrid::netlab::process::{Log, wait_for};
use infergrid::netlab::{Layout, Mapping, RelayKind, Topology};
use infergrid_e2e::dev;
use infergrid_e2e::models::{import, local_greedy, make_checkpoint};
use infergrid_e2e::procs::{SWARM, binary, devnet_in, start_following_in};

const PROMPT: &str = "the quick brown fox";

/// What one run across the NATs saw.
struct Run {
    /// The gateway's path to each home node after the first completion: `direct` or
    /// `relayed`.
    paths: Vec<String>,
    /// Gateway log lines about hole punching.
    punching: Vec<String>,
    /// Gateway log lines of failovers during the second completion.
    failovers: Vec<String>,
    /// The gateway's relayed connections open once the paths were read.
    relayed_connections: u64,
    /// Node 1's own view (its `/status`): its path to the gateway, and its AutoNAT verdict.
    node_to_gateway: String,
    node_reachability: String,
}

/// What happens during the second completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Second {
    /// Nothing: it runs on the paths the first one left.
    Undisturbed,
    /// The dedicated relay dies mid-stream; a public backup node serves the home nodes'
    /// blocks.
    RelayDies,
}

/// Runs `layout`'s swarm across NATs, streams a greedy completion of `tokens` tokens through
/// the gateway twice and checks both against the model run whole in one process.
fn across_nats(layout: Layout, max_pos: &str, tokens: usize, second: Second) -> Run {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--layers", "3", "--seed", "21", "--max-pos", max_pos];
    let hf = make_checkpoint(dir.path(), "llama", &flags).unwrap();
    let model = import(&hf, &dir.path().join("model"), 3).unwrap();
    let mut topology = Topology::start(&binary(), &model, dir.path(), layout, Log::Echo)
        .unwrap_or_else(|e| panic!("the swarm across NATs did not start: {e}"));
    eprintln!(
        "relay: {}; home nodes registered: {:#?}",
        topology.relay_address, topology.registered
    );

    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;
    let (expected, _) = local_greedy(&model, PROMPT, tokens).unwrap();
    let body = serde_json::json!({
        "model": name, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0
    });
    // Patient the first time, while the gateway still reaches for a block's node (503).
    let complete = |topology: &Topology, patience: u64| {
        let answer = topology.complete(&body, Duration::from_secs(patience)).unwrap();
        serde_json::from_value::<Vec<u32>>(answer["choices"][0]["token_ids"].clone()).unwrap()
    };
    let started = Instant::now();
    let first = complete(&topology, 90);
    eprintln!("first completion ({tokens} tokens) in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(first, expected, "the completion across NATs differs from the local run");

    // Let DCUtR run (it starts with the first relayed connection), then complete again.
    let log = &topology.gateway_log;
    let punching: Vec<String> = match layout.homes {
        Some(Mapping::PortPreserving) => {
            let within = Duration::from_secs(30);
            vec![wait_for(log, "hole punched", within, "gateway").unwrap_or_else(|e| panic!("{e}"))]
        }
        _ => {
            std::thread::sleep(Duration::from_secs(5));
            log.try_iter().filter(|l| l.contains("hole punch")).collect()
        }
    };
    // The gateway's path to each home node, once both are direct (or 30 s have passed)
    // where holes can be punched.
    let paths = match layout.homes {
        Some(Mapping::PortPreserving) => topology.paths_once_direct(Duration::from_secs(30)),
        _ => topology.paths(),
    }
    .unwrap();
    // Where holes were punched, the relayed connections are let go once they drain.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut relayed_connections = topology.relayed_connections().unwrap();
    while layout.homes == Some(Mapping::PortPreserving)
        && relayed_connections > 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
        relayed_connections = topology.relayed_connections().unwrap();
    }

    // The home node's view, on its own status endpoint: private, reached through the relay,
    // and its path to the gateway.
    let gateway_peer = topology.health().unwrap()["routing"]["peer"].as_str().unwrap().to_owned();
    let status = topology.node_status(1).unwrap();
    let relayed: Vec<String> =
        serde_json::from_value(status["reachability"]["relayed"].clone()).unwrap();
    assert!(
        !relayed.is_empty() && relayed.iter().all(|a| a.contains("/p2p-circuit/p2p/")),
        "node 1's relayed addresses: {relayed:?}"
    );
    let node_to_gateway = status["paths"][&gateway_peer].as_str().unwrap_or("none").to_owned();
    let node_reachability = status["reachability"]["status"].as_str().unwrap().to_owned();

    let _ = topology.gateway_log.try_iter().count();
    let killer = match second {
        Second::RelayDies => Some(topology.kill_relay_after(Duration::from_secs(2)).unwrap()),
        Second::Undisturbed => None,
    };
    let started = Instant::now();
    let again = complete(&topology, 0);
    eprintln!("second completion in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(again, expected, "the second completion differs from the local run");
    if let Some(killer) = killer {
        killer.join().unwrap();
    }
    let failovers = topology.gateway_log.try_iter().filter(|l| l.contains("failed over")).collect();
    Run { paths, punching, failovers, relayed_connections, node_to_gateway, node_reachability }
}

#[test]
fn home_nodes_behind_nat_serve_through_a_relay_and_go_direct() {
    let layout = Layout {
        homes: Some(Mapping::PortPreserving),
        relay: RelayKind::PublicNode,
        backup: false,
    };
    let run = across_nats(layout, "256", 24, Second::Undisturbed);
    eprintln!("gateway → home nodes: {:?}; {:?}", run.paths, run.punching);
    assert_eq!(run.paths, ["direct", "direct"], "the gateway's paths to the home nodes");
    assert_eq!(run.relayed_connections, 0, "relayed connections left open beside direct ones");
    assert_eq!(run.node_reachability, "private", "node 1's AutoNAT verdict");
    assert_eq!(run.node_to_gateway, "direct", "node 1's path to the gateway, on its /status");
}

/// Behind port-randomizing routers no hole can be punched: 600-token streams run over a
/// dedicated relay, within its limits; and when the relay dies mid-stream, the stream fails
/// over to a public node and completes all the same.
#[test]
fn without_hole_punching_a_long_stream_runs_over_the_relay() {
    let layout =
        Layout { homes: Some(Mapping::RandomPorts), relay: RelayKind::Dedicated, backup: true };
    let run = across_nats(layout, "1024", 600, Second::RelayDies);
    eprintln!("gateway → home nodes: {:?}; {:?}", run.paths, run.punching);
    assert_eq!(run.paths, ["relayed", "relayed"], "the gateway's paths to the home nodes");
    assert!(run.relayed_connections >= 2, "{} relayed connections", run.relayed_connections);
    assert_eq!(run.node_reachability, "private", "node 1's AutoNAT verdict");
    assert_eq!(run.node_to_gateway, "relayed", "node 1's path to the gateway, on its /status");
    eprintln!("failovers when the relay died: {:#?}", run.failovers);
    assert!(!run.failovers.is_empty(), "the relay died mid-stream and nothing failed over");
}

/// A relay serves active registered nodes only: a registered node's reservation is accepted
/// and it is reachable through the relay; a stranger's is refused, and so is that of a
/// registered node whose stake is below the minimum (as a jailed one's is); so nobody can be
/// reached through the relay but the swarm's serving nodes, and it is no proxy to a third
/// party.
#[test]
fn a_relay_reserves_for_registered_nodes_only() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "3", "--seed", "21"]).unwrap();
    let model = import(&hf, &dir.path().join("model"), 3).unwrap();
    let (_devnet, manifest, deployment) = devnet_in(None, dir.path(), model.to_str().unwrap(), &[]);
    let (rpc, deployment) = (manifest["rpc_url"].as_str().unwrap(), deployment.to_str().unwrap());
    // Operator 1 unbonds all its stake: still registered, no longer active.
    let chain = ["--rpc-url", rpc, "--deployment", deployment];
    let status = infergrid_e2e::procs::infergrid_in(None)
        .args(["operator", "unbond", "10000", "--yes", "--key-env", "NODE_KEY"])
        .args(chain)
        .env("NODE_KEY", dev(Role::Operator, 1).private_key.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "operator unbond");
    let port = infergrid_e2e::procs::free_port().to_string();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let args = ["relay", "--listen", &listen, "--key-env", "RELAY_KEY", "--rpc-url", rpc];
    let args = [&args[..], &["--deployment", deployment]].concat();
    let relay_key = ("RELAY_KEY", format!("0x{}", "42".repeat(32)));
    let (_relay, ready, _) = start_following_in(None, &args, &[relay_key], "relay ready");
    let relay: libp2p::Multiaddr = ready.split("--relay ").nth(1).unwrap().trim().parse().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(registered_only(relay));
}

/// Through `relay`: a registered node reserves and is reached; a stranger and an inactive
/// node (operator 1's) do neither.
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
    let inactive = behind_nat(NodeIdentity::derive(&dev(Role::Operator, 1).private_key).keypair());

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

    // The others asked on the same relay at the same time, and again 5 s later.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(stranger.reachability().borrow().relayed.is_empty(), "a stranger got a reservation");
    let unstaked = inactive.reachability().borrow().relayed.clone();
    assert!(unstaked.is_empty(), "an inactive node got a reservation: {unstaked:?}");

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
    client.dial(inactive.local_peer(), via_relay(inactive.local_peer())).await.unwrap();
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
    assert_eq!(client.paths().get(&inactive.local_peer()), None, "the inactive node is not");
}

/// A run that fails midway leaves no namespace behind (nor the links inside them): the lab
/// deletes them as the panic unwinds, and processes left inside go first.
#[test]
fn a_failed_run_leaves_no_namespace_behind() {
    use infergrid::netlab::Lab;
    let listed = || {
        let out = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ours = format!("igf{}", std::process::id());
        text.split_whitespace().filter(|n| n.starts_with(&ours)).count()
    };
    let left_inside = std::sync::Mutex::new(None);
    let failed = std::panic::catch_unwind(|| {
        let mut lab = Lab::new("f");
        let public = lab.public().unwrap();
        let home = lab.home(&public, 1, Mapping::PortPreserving).unwrap();
        assert_eq!(listed(), 3, "the public network, a router and a home");
        // A process left running inside, as a failed test leaves its node.
        let sleeper = std::process::Command::new("ip")
            .args(["netns", "exec", &home.netns, "sleep", "600"])
            .spawn()
            .unwrap();
        *left_inside.lock().unwrap() = Some(sleeper);
        std::thread::sleep(Duration::from_millis(200));
        panic!("the run fails here");
    });
    assert!(failed.is_err());
    assert_eq!(listed(), 0, "namespaces left behind");
    let mut sleeper = left_inside.into_inner().unwrap().expect("started");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match sleeper.try_wait().unwrap() {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("the process left inside still runs"),
        }
    };
    assert!(!status.success(), "killed, not finished: {status:?}");
}
