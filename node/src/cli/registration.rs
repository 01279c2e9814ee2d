//! A node's look at its own registration before it serves. Gateways route by what the
//! registry holds — model, blocks, multiaddrs — so a node started differently looks healthy
//! while nobody can reach it or nobody asks it for what it serves. The node compares, refuses
//! with the fix in one line, or (`--update-registration`) registers how it was started.

use std::net::{IpAddr, SocketAddr, TcpListener};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use infergrid::chain::audit::format_tokens;
use infergrid::chain::bindings::NodeRegistry;
use infergrid::chain::{ChainError, Registry};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// How the node was started.
pub struct Started<'a> {
    pub peer: PeerId,
    pub model_id: B256,
    pub blocks: (u32, u32),
    pub listen: &'a [Multiaddr],
    /// Its multiaddrs are registered later, as its reachability allows (`node --relay`): the
    /// registered ones are not judged against its listeners.
    pub addresses_later: bool,
}

/// What disagrees between the registration and the node as started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Gateways would not route here, or would ask for what the node does not serve.
    Refuse(String),
    /// Worth saying, not worth stopping for.
    Warn(String),
}

/// Compares `registered` with how the node was `started`.
pub fn check(registered: &NodeRegistry::Node, started: &Started) -> Vec<Finding> {
    let mut findings = Vec::new();
    let update = "or run with --update-registration to register how it was started";
    if registered.modelId != started.model_id {
        findings.push(Finding::Refuse(format!(
            "registered for model {}, started with model {}: start with the registered model, {update}",
            registered.modelId, started.model_id
        )));
    }
    let blocks = (registered.firstBlock, registered.lastBlock);
    if blocks != started.blocks {
        findings.push(Finding::Refuse(format!(
            "registered for blocks {}, started with --blocks {}: start with --blocks {}, {update}",
            range(blocks),
            range(started.blocks),
            range(blocks)
        )));
    }
    let mut judged = Vec::new();
    let addresses = if started.addresses_later { &[][..] } else { &registered.multiaddrs[..] };
    for text in addresses {
        let Ok(address) = text.parse::<Multiaddr>() else {
            findings.push(Finding::Refuse(format!(
                "the registered multiaddr {text:?} does not parse: {update}"
            )));
            continue;
        };
        if let Some(Protocol::P2p(peer)) = address.iter().last()
            && peer != started.peer
        {
            findings.push(Finding::Refuse(format!(
                "the registered multiaddr {text} names peer {peer}, not this node's {}: {update}",
                started.peer
            )));
            continue;
        }
        let relayed = address.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        match socket(&address).filter(|_| !relayed) {
            Some(registered) => judged.push((text, registered)),
            None => findings.push(Finding::Warn(format!(
                "the registered multiaddr {text} is not a TCP address this node can compare with \
                 its listeners (DNS or relay); make sure it reaches {:?}",
                started.listen
            ))),
        }
    }
    let listening: Vec<SocketAddr> = started.listen.iter().filter_map(socket).collect();
    let reaches = |registered: &SocketAddr| listening.iter().any(|l| serves(l, registered));
    let unreached: Vec<&String> =
        judged.iter().filter(|(_, r)| !reaches(r)).map(|(text, _)| *text).collect();
    if !judged.is_empty() && unreached.len() == judged.len() {
        findings.push(Finding::Refuse(format!(
            "registered at {}, but listening on {:?}: gateways dial the registered address. \
             Listen there (--listen {}), {update}",
            unreached.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            started.listen,
            without_peer(unreached[0])
        )));
    } else {
        for text in unreached {
            findings.push(Finding::Warn(format!(
                "the registered multiaddr {text} reaches none of the listeners {:?}",
                started.listen
            )));
        }
    }
    findings
}

/// The multiaddrs to register for `listen`: each with this node's peer id. An unspecified
/// address (`0.0.0.0`) or port 0 says nothing a gateway can dial, and is refused.
pub fn registrable(listen: &[Multiaddr], peer: PeerId) -> Result<Vec<String>, String> {
    listen
        .iter()
        .map(|address| match socket(address) {
            Some(s) if s.ip().is_unspecified() || s.port() == 0 => Err(format!(
                "cannot register {address}: gateways cannot dial an unspecified address or port \
                 0; pass --listen with the address and port they should dial"
            )),
            _ => Ok(format!("{}/p2p/{peer}", without_peer(&address.to_string()))),
        })
        .collect()
}

/// Fails when another process listens on one of `listen`'s TCP ports. The probe sets only
/// `SO_REUSEADDR` (as `std` does): a port in `TIME_WAIT` is free, a live listener is not,
/// even one libp2p bound with `SO_REUSEPORT`, which would otherwise share the port silently.
pub fn check_ports_free(listen: &[Multiaddr]) -> Result<(), String> {
    for address in listen {
        if let Some(socket) = socket(address).filter(|s| s.port() != 0)
            && let Err(e) = TcpListener::bind(socket)
        {
            return Err(match e.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "--listen {address}: port {} is taken by another process (another node?); \
                     pick a free port",
                    socket.port()
                ),
                _ => format!("--listen {address}: cannot listen there: {e}"),
            });
        }
    }
    Ok(())
}

/// Why gateways do not route to `operator`'s node, if they do not: its stake is below the
/// minimum (unbonded), or it is jailed.
pub async fn inactive(
    registry: &Registry,
    operator: Address,
) -> Result<Option<String>, ChainError> {
    if registry.is_active(operator).await? {
        return Ok(None);
    }
    let record = registry.node(operator).await?;
    let min_stake = registry.min_stake().await?;
    Ok(Some(if record.stake < min_stake {
        format!(
            "its stake {} is below the minimum {}; add stake with `infergrid operator stake AMOUNT`",
            format_tokens(record.stake),
            format_tokens(min_stake)
        )
    } else {
        format!(
            "it is jailed until {}; then `infergrid operator unjail`",
            super::when::utc(record.jailedUntil)
        )
    }))
}

/// Looks at the node's standing every `every`, keeps it in `standing` (for `/healthz`) and
/// logs each change: a node unbonded below
/// the minimum or jailed while running keeps answering the peers it has, but earns nothing
/// new, and its operator should hear of it from the node itself.
pub async fn watch_standing(
    registry: Registry,
    operator: Address,
    every: Duration,
    standing: Arc<Mutex<Option<String>>>,
) {
    let mut last = inactive(&registry, operator).await.ok().flatten();
    standing.lock().expect("standing").clone_from(&last);
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // immediate; `last` is the standing at start
    loop {
        tick.tick().await;
        let now = match inactive(&registry, operator).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!("reading its standing on-chain failed (retrying): {e}");
                continue;
            }
        };
        match (&last, &now) {
            (_, Some(why)) if last.as_ref() != Some(why) => {
                tracing::warn!("INACTIVE, gateways will not route here: {why}")
            }
            (Some(_), None) => tracing::info!("active again: gateways route here"),
            _ => {}
        }
        standing.lock().expect("standing").clone_from(&now);
        last = now;
    }
}

/// The IP and TCP port of `address`, if it is an `/ip4` or `/ip6` TCP address.
fn socket(address: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = address.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// Whether a listener on `listening` accepts connections to `registered`.
fn serves(listening: &SocketAddr, registered: &SocketAddr) -> bool {
    listening.port() == registered.port()
        && (listening.ip() == registered.ip() || listening.ip().is_unspecified())
}

fn without_peer(address: &str) -> &str {
    address.split("/p2p/").next().unwrap_or(address)
}

fn range((first, last): (u32, u32)) -> String {
    if first == last { first.to_string() } else { format!("{first}-{last}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(multiaddrs: &[&str]) -> NodeRegistry::Node {
        NodeRegistry::Node {
            modelId: B256::repeat_byte(1),
            firstBlock: 1,
            lastBlock: 2,
            multiaddrs: multiaddrs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn refusals(findings: &[Finding]) -> Vec<&str> {
        findings
            .iter()
            .filter_map(|f| match f {
                Finding::Refuse(r) => Some(r.as_str()),
                Finding::Warn(_) => None,
            })
            .collect()
    }

    /// A node started with model `0xMM…` (the byte repeated) and `blocks`, listening on `listen`.
    fn started(peer: PeerId, model: u8, blocks: (u32, u32), listen: &[Multiaddr]) -> Started<'_> {
        let model_id = B256::repeat_byte(model);
        Started { peer, model_id, blocks, listen, addresses_later: false }
    }

    #[test]
    fn a_node_started_as_registered_passes() {
        let peer = PeerId::random();
        let listen: Vec<Multiaddr> = vec!["/ip4/0.0.0.0/tcp/4001".parse().unwrap()];
        let started = started(peer, 1, (1, 2), &listen);
        let registered = node(&[&format!("/ip4/1.2.3.4/tcp/4001/p2p/{peer}")]);
        assert_eq!(check(&registered, &started), vec![]);
    }

    #[test]
    fn mismatches_are_refused_with_the_fix() {
        let peer = PeerId::random();
        let listen: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/tcp/4002".parse().unwrap()];
        let started = started(peer, 2, (1, 1), &listen);
        let registered = node(&[&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")]);
        let found = check(&registered, &started);
        let refused = refusals(&found);
        assert_eq!(refused.len(), 3, "{found:?}");
        assert!(refused[0].contains("model"));
        assert!(refused[1].contains("start with --blocks 1-2"), "{}", refused[1]);
        assert!(refused[2].contains("--listen /ip4/127.0.0.1/tcp/4001"), "{}", refused[2]);
        let other = PeerId::random();
        let registered = node(&[&format!("/ip4/127.0.0.1/tcp/4002/p2p/{other}")]);
        let started = Started { blocks: (1, 2), model_id: B256::repeat_byte(1), ..started };
        assert!(
            refusals(&check(&registered, &started))[0].contains(&format!("names peer {other}"))
        );
        let registered = node(&["/dns4/node.example/tcp/4002"]);
        let found = check(&registered, &started);
        assert!(refusals(&found).is_empty() && found.len() == 1, "DNS is warned about: {found:?}");
    }

    #[test]
    fn only_dialable_addresses_are_registered() {
        let peer = PeerId::random();
        let ok: Vec<Multiaddr> = vec!["/ip4/10.0.0.5/tcp/4001".parse().unwrap()];
        assert_eq!(
            registrable(&ok, peer).unwrap(),
            vec![format!("/ip4/10.0.0.5/tcp/4001/p2p/{peer}")]
        );
        for bad in ["/ip4/0.0.0.0/tcp/4001", "/ip4/10.0.0.5/tcp/0"] {
            assert!(registrable(&[bad.parse().unwrap()], peer).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_live_listener_is_a_clash() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let address: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let error = check_ports_free(std::slice::from_ref(&address)).unwrap_err();
        assert!(error.contains("is taken by another process"), "{error}");
        drop(taken);
        check_ports_free(&[address]).unwrap();
    }
}
