//! `infergrid relay`: a dedicated circuit relay (v2) through which nodes behind NAT are
//! reached, and the registry reading that keeps any relay — this one, or a public node run
//! with `--relay-service` — to active registered nodes only (`protocol-spec/wire.md`, "Addresses
//! and relays").

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use infergrid::chain::{Registry, connect_reader};
use infergrid::identity::NodeIdentity;
use infergrid::net::nat::{RegisteredPeers, RelayLimits, RelayService};
use infergrid::net::{NatConfig, NetConfig, Network};
use libp2p::{Multiaddr, PeerId};

use super::target::ChainTarget;

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    chain: ChainTarget,
    /// libp2p listen address (repeatable): a public address that nodes behind NAT and
    /// gateways can dial.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/4001")]
    listen: Vec<Multiaddr>,
    /// The public address nodes and gateways dial (repeatable), e.g. `/ip4/203.0.113.7/tcp/4001`:
    /// the relay serves once it knows one, from here or else from AutoNAT (a peer dialing it
    /// back), and prints it for --relay. Default: --listen's, unless unspecified (0.0.0.0).
    #[arg(long)]
    external_address: Vec<Multiaddr>,
    /// Environment variable holding the relay's 32-byte secret (hex), from which its peer id
    /// derives: nodes name the relay by it, so it must stay the same across restarts.
    #[arg(long, value_name = "VAR")]
    key_env: String,
    /// Seconds between reads of the registry, which decide the nodes that may reserve.
    #[arg(long, default_value_t = 30)]
    registry_check_secs: u64,
    /// Longest a circuit (one gateway's connection to one node) stays open, in seconds.
    #[arg(long, default_value_t = RelayLimits::default().circuit_duration.as_secs())]
    circuit_secs: u64,
    /// Most a circuit carries each way, in MiB.
    #[arg(long, default_value_t = RelayLimits::default().circuit_bytes >> 20)]
    circuit_mib: u64,
    /// Circuits open at once, all nodes together.
    #[arg(long, default_value_t = RelayLimits::default().circuits)]
    max_circuits: usize,
}

impl RelayArgs {
    fn limits(&self) -> RelayLimits {
        RelayLimits {
            circuit_duration: Duration::from_secs(self.circuit_secs),
            circuit_bytes: self.circuit_mib << 20,
            circuits: self.max_circuits,
            ..RelayLimits::default()
        }
    }
}

pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let secret = std::env::var(&args.key_env)
        .with_context(|| format!("relay: set {} to the relay's secret (hex)", args.key_env))?;
    let secret: alloy::primitives::B256 =
        secret.trim().parse().context("relay: the secret is not 32 bytes of hex")?;
    let deployment = args.chain.load()?;
    let provider = connect_reader(&args.chain.rpc_url()).await?;
    let registry = Registry::new(deployment.contracts.registry, provider);
    let registered = RegisteredPeers::default();
    registered.set(active_peers(&registry).await.context("relay: reading the registry")?);
    let every = Duration::from_secs(args.registry_check_secs.max(1));
    tokio::spawn(keep_active(registry, registered.clone(), every));

    let identity = NodeIdentity::derive(&secret);
    let (net, _inbound) = Network::spawn(NetConfig {
        keypair: identity.keypair(),
        listen: args.listen.clone(),
        bootstrap: Vec::new(),
        request_timeout: Duration::from_secs(30),
        nat: NatConfig {
            relay_service: Some(RelayService { registered, limits: args.limits() }),
            external: external(&args),
            ..NatConfig::default()
        },
    })?;
    let peer = net.local_peer();
    let mut addrs = external(&args);
    if addrs.is_empty() {
        tracing::warn!(
            "relay: no --external-address and --listen is unspecified: it serves once AutoNAT \
             confirms an address, and the addresses below are where it listens"
        );
        addrs = listening(&net).await?;
    }
    println!(
        "relay ready: peer {peer}, reserve with --relay {}",
        addrs.iter().map(|a| format!("{a}/p2p/{peer}")).collect::<Vec<_>>().join(" --relay ")
    );
    super::stop_signal().await?;
    net.shutdown().await?;
    Ok(())
}

/// The public addresses: --external-address, else the --listen addresses that name one (a
/// specified address and port).
fn external(args: &RelayArgs) -> Vec<Multiaddr> {
    if !args.external_address.is_empty() {
        return args.external_address.clone();
    }
    use libp2p::multiaddr::Protocol;
    let specified = |a: &&Multiaddr| {
        a.iter().all(|p| match p {
            Protocol::Ip4(ip) => !ip.is_unspecified(),
            Protocol::Ip6(ip) => !ip.is_unspecified(),
            Protocol::Tcp(port) | Protocol::Udp(port) => port != 0,
            _ => true,
        })
    };
    args.listen.iter().filter(specified).cloned().collect()
}

/// The addresses the swarm listens on, once it does.
async fn listening(net: &Network) -> anyhow::Result<Vec<Multiaddr>> {
    for _ in 0..100 {
        let addrs = net.listen_addrs().await?;
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("relay: the swarm never started listening")
}

/// The peer ids of every active node: registered, staked at least the minimum and not
/// jailed (a jailed node serves nobody, so it needs no relay either).
pub async fn active_peers(registry: &Registry) -> anyhow::Result<HashSet<PeerId>> {
    let mut peers = HashSet::new();
    for operator in registry.operators().await? {
        if !registry.is_active(operator).await? {
            continue;
        }
        let node = registry.node(operator).await?;
        if let Ok(peer) = PeerId::from_bytes(&node.peerId) {
            peers.insert(peer);
        }
    }
    Ok(peers)
}

/// Re-reads the active nodes every `every`; a failed read keeps the last set.
pub async fn keep_active(registry: Registry, registered: RegisteredPeers, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match active_peers(&registry).await {
            Ok(peers) => registered.set(peers),
            Err(e) => tracing::warn!("relay: cannot read the registry, keeping the last list: {e}"),
        }
    }
}
