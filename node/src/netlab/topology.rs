//! The swarm across NATs: a public network holds the chain, a relay (a dedicated `infergrid
//! relay`, or the public node with `--relay-service`) and node 0; nodes 1 and 2 sit in home
//! networks, each behind its own router, and the gateway behind a third. The home nodes
//! learn with AutoNAT that nobody can dial them, reserve a slot on the relay and register
//! their relayed addresses on-chain by themselves; the gateway reaches them through the
//! relay, then directly where the routers let a hole be punched. Without home networks
//! ([`Layout::homes`] `None`) every process sits on the public network: the baseline.

use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::process::{Log, Proc, devnet, follow, in_namespace, wait_for};
use super::{Host, Lab, LabError, Mapping};
use crate::devnet::{Role, accounts_with};

/// Where every node listens: port `NODE_PORT + index` on its host.
const NODE_PORT: u16 = 31000;
/// Where the gateway's API listens, on its host.
const API_PORT: u16 = 8080;
/// Where each node's HTTP endpoint (`--http`) listens, on its host: `STATUS_PORT + index`.
const STATUS_PORT: u16 = 9100;

/// Which relay the home nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// Node 0, run with `--relay-service` (any public node can relay).
    PublicNode,
    /// A dedicated `infergrid relay`.
    Dedicated,
}

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// How the home routers map ports; `None`: no home networks, every node and the gateway
    /// on the public network.
    pub homes: Option<Mapping>,
    pub relay: RelayKind,
    /// Node 3 on the public network serving blocks 1-2 too, dearer than the home nodes
    /// together, to fail over to.
    pub backup: bool,
}

/// A running lab: its processes are stopped before its namespaces go.
pub struct Topology {
    // Fields drop in order: the gateway and the nodes, then the relay and the chain, then
    // the namespaces.
    _gateway: Proc,
    _nodes: Vec<Proc>,
    relay: Option<Proc>,
    _devnet: Proc,
    _lab: Lab,
    /// The gateway's log and output, from its ready line on.
    pub gateway_log: Receiver<String>,
    /// Where the gateway runs (behind a NAT, with home networks).
    pub gateway_host: Host,
    /// The gateway's API, `host:port`.
    pub api: String,
    /// The peer ids of nodes 1 and 2 (at home, with home networks).
    pub home_peers: Vec<String>,
    /// The relay's multiaddr, as nodes reserve on it.
    pub relay_address: String,
    /// What each home node registered, as it logged it (with home networks).
    pub registered: Vec<String>,
    /// Where nodes 1 and 2 run.
    homes: Vec<Host>,
}

/// The peer id in a `node ready: peer <id>, …` line.
fn peer_in(ready: &str) -> Result<String, LabError> {
    ready.split("peer ").nth(1).and_then(|s| s.split(',').next()).map(str::to_owned).ok_or_else(
        || LabError::Unexpected { what: "a node's ready line".into(), detail: ready.into() },
    )
}

/// What every process of one run shares.
struct Run<'a> {
    binary: &'a Path,
    model: &'a str,
    dir: &'a Path,
    chain: [String; 4],
    log: Log,
}

impl Run<'_> {
    /// `infergrid node` as devnet operator `index` on `host`, serving `blocks`, with `extra`
    /// arguments: the process, its ready line and what it prints after.
    fn node(
        &self,
        host: &Host,
        index: usize,
        blocks: &str,
        extra: &[&str],
    ) -> Result<(Proc, String, Receiver<String>), LabError> {
        let listen = format!("/ip4/{}/tcp/{}", host.ip, usize::from(NODE_PORT) + index);
        let http = format!("{}:{}", host.ip, usize::from(STATUS_PORT) + index);
        let ledger = self.dir.join(format!("node-{index}.redb"));
        let mut cmd = in_namespace(self.binary, Some(&host.netns));
        cmd.args(["node", "--model", self.model, "--blocks", blocks, "--key-env", "NODE_KEY"])
            .args(["--listen", &listen, "--http", &http, "--update-registration", "--ledger"])
            .arg(ledger)
            .args(&self.chain)
            .args(extra)
            .env("NODE_KEY", accounts_with(Role::Operator)[index].private_key.to_string());
        follow(cmd, "node ready", self.log)
    }

    /// `infergrid operator update --price PRICE` as operator `index`.
    fn price(&self, host: &Host, index: usize, price: &str) -> Result<(), LabError> {
        let mut cmd = in_namespace(self.binary, Some(&host.netns));
        cmd.args(["operator", "update", "--key-env", "NODE_KEY", "--price", price])
            .args(&self.chain)
            .env("NODE_KEY", accounts_with(Role::Operator)[index].private_key.to_string());
        let out = cmd.output().map_err(|source| LabError::Spawn {
            command: "infergrid operator update".into(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(LabError::Command { command: "infergrid operator update".into(), stderr });
        }
        Ok(())
    }
}

impl Topology {
    /// Builds the networks of `layout` and starts the swarm on them: `binary` is `infergrid`,
    /// `model` an import in 3 blocks, `dir` where the files go; `log` says whether the
    /// processes' logs are echoed. Returns once the gateway is ready and every home node has
    /// registered a relayed address.
    pub fn start(
        binary: &Path,
        model: &Path,
        dir: &Path,
        layout: Layout,
        log: Log,
    ) -> Result<Self, LabError> {
        let model = model.to_str().ok_or_else(|| LabError::Unexpected {
            what: "the model's path".into(),
            detail: "not UTF-8".into(),
        })?;
        let mut lab = Lab::new(match layout.homes {
            Some(Mapping::PortPreserving) => "p",
            Some(Mapping::RandomPorts) => "r",
            None => "d",
        });
        let public = lab.public()?;
        let (homes, gateway_host) = match layout.homes {
            Some(mapping) => {
                let homes = (1..=2).map(|n| lab.home(&public, n, mapping));
                (homes.collect::<Result<Vec<_>, _>>()?, lab.home(&public, 3, mapping)?)
            }
            None => (vec![public.clone(), public.clone()], public.clone()),
        };

        let devnet_log = std::fs::File::create(dir.join("devnet.log"))?;
        let (devnet, manifest, deployment) = devnet(
            in_namespace(binary, Some(&public.netns)),
            dir,
            model,
            &["--host", &public.ip],
            Stdio::from(devnet_log),
        )?;
        let rpc = manifest["rpc_url"].as_str().unwrap_or_default().to_owned();
        let deployment = deployment.to_string_lossy().into_owned();
        let chain = ["--rpc-url".into(), rpc, "--deployment".into(), deployment];
        let run = Run { binary, model, dir, chain, log };

        let mut nodes = Vec::new();
        let (relay, relay_address) = match layout.relay {
            RelayKind::Dedicated => {
                let listen = format!("/ip4/{}/tcp/4001", public.ip);
                let mut cmd = in_namespace(binary, Some(&public.netns));
                cmd.args(["relay", "--listen", &listen, "--key-env", "RELAY_KEY"])
                    .args(&run.chain)
                    .env("RELAY_KEY", format!("0x{}", "42".repeat(32)));
                let (relay, ready, _) = follow(cmd, "relay ready", log)?;
                let address = ready.split("--relay ").nth(1).map(|a| a.trim().to_owned());
                let address = address.ok_or_else(|| LabError::Unexpected {
                    what: "the relay's ready line".into(),
                    detail: ready.clone(),
                })?;
                // Node 0 first: with the relay, it answers the home nodes' AutoNAT probes.
                nodes.push(run.node(&public, 0, "0", &["--bootstrap", &address])?.0);
                (Some(relay), address)
            }
            RelayKind::PublicNode => {
                let (node, ready, _) = run.node(&public, 0, "0", &["--relay-service"])?;
                nodes.push(node);
                let address =
                    format!("/ip4/{}/tcp/{NODE_PORT}/p2p/{}", public.ip, peer_in(&ready)?);
                (None, address)
            }
        };

        let (mut home_peers, mut registered) = (Vec::new(), Vec::new());
        let mut flags = vec!["--bootstrap", relay_address.as_str()];
        if layout.homes.is_some() {
            flags.extend(["--relay", relay_address.as_str()]);
        }
        for (index, host) in homes.iter().enumerate().map(|(i, h)| (i + 1, h)) {
            let (node, ready, lines) = run.node(host, index, &index.to_string(), &flags)?;
            nodes.push(node);
            home_peers.push(peer_in(&ready)?);
            if layout.homes.is_some() {
                let what = format!("node {index}, behind NAT");
                let line =
                    wait_for(&lines, "registered multiaddrs", Duration::from_secs(180), &what)?;
                if !line.contains("/p2p-circuit/p2p/") {
                    let what = format!("node {index}'s registration");
                    return Err(LabError::Unexpected { what, detail: line });
                }
                registered.push(line);
            }
        }
        if layout.backup {
            // Dearer than both home nodes together, so that routes run through them.
            run.price(&public, 3, "20000000000000wei")?;
            nodes.push(run.node(&public, 3, "1-2", &["--bootstrap", &relay_address])?.0);
        }

        let api = format!("{}:{API_PORT}", gateway_host.ip);
        let wallet = dir.join("gateway-wallet.redb");
        let p2p = format!("/ip4/{}/tcp/4003", gateway_host.ip);
        let mut cmd = in_namespace(binary, Some(&gateway_host.netns));
        cmd.args(["gateway", "--model", model, "--key-env", "PAYER_KEY", "--listen", &api])
            .args(["--p2p-listen", &p2p, "--bootstrap", &relay_address, "--wei-per-ms", "1000"])
            .arg("--wallet")
            .arg(wallet)
            .args(&run.chain)
            .env("PAYER_KEY", accounts_with(Role::Payer)[0].private_key.to_string());
        let (gateway, _, gateway_log) = follow(cmd, "gateway ready", log)?;
        Ok(Self {
            _gateway: gateway,
            _nodes: nodes,
            relay,
            _devnet: devnet,
            _lab: lab,
            gateway_log,
            gateway_host,
            api,
            home_peers,
            relay_address,
            registered,
            homes,
        })
    }

    /// Node `index`'s (1 or 2) `/status`, read on its host.
    pub fn node_status(&self, index: usize) -> Result<serde_json::Value, LabError> {
        let host = self.homes.get(index.wrapping_sub(1)).ok_or_else(|| LabError::Unexpected {
            what: format!("node {index}"),
            detail: "only nodes 1 and 2 run at home".into(),
        })?;
        let url = format!("http://{}:{}/status", host.ip, usize::from(STATUS_PORT) + index);
        let (status, body) = curl_in(host, &[&url])?;
        serde_json::from_str(&body).map_err(|e| LabError::Unexpected {
            what: format!("node {index}'s /status: HTTP {status}"),
            detail: e.to_string(),
        })
    }

    /// `curl` on the gateway's host: the HTTP status and body (status 0: no answer).
    pub fn curl(&self, args: &[&str]) -> Result<(u16, String), LabError> {
        curl_in(&self.gateway_host, args)
    }

    /// `GET path` of the gateway's API.
    pub fn get(&self, path: &str) -> Result<String, LabError> {
        let (status, body) = self.curl(&[&format!("http://{}{path}", self.api)])?;
        match status {
            200 | 503 => Ok(body),
            _ => Err(LabError::Unexpected { what: format!("GET {path}: {status}"), detail: body }),
        }
    }

    /// `POST /v1/completions` with `body`, asked again each second for `patience` while
    /// the gateway answers otherwise than 200 (503 while it still reaches for a block's node).
    pub fn complete(
        &self,
        body: &serde_json::Value,
        patience: Duration,
    ) -> Result<serde_json::Value, LabError> {
        let deadline = Instant::now() + patience;
        let url = format!("http://{}/v1/completions", self.api);
        let body = body.to_string();
        loop {
            let args = ["-H", "Content-Type: application/json", "-d", &body, &url];
            let (status, answer) = self.curl(&args)?;
            if status == 200 {
                return serde_json::from_str(&answer).map_err(|e| LabError::Unexpected {
                    what: "a completion's JSON".into(),
                    detail: e.to_string(),
                });
            }
            if Instant::now() >= deadline {
                let what = format!("a completion: HTTP {status}");
                return Err(LabError::Unexpected { what, detail: answer });
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The gateway's `/healthz`.
    pub fn health(&self) -> Result<serde_json::Value, LabError> {
        serde_json::from_str(&self.get("/healthz")?)
            .map_err(|e| LabError::Unexpected { what: "/healthz".into(), detail: e.to_string() })
    }

    /// The gateway's path to each home node (`routing.paths` of `/healthz`): `direct`,
    /// `relayed`, or `none` while it holds no connection to it.
    pub fn paths(&self) -> Result<Vec<String>, LabError> {
        let health = self.health()?;
        let path = |peer: &String| health["routing"]["paths"][peer].as_str().map(str::to_owned);
        Ok(self.home_peers.iter().map(|p| path(p).unwrap_or_else(|| "none".into())).collect())
    }

    /// The gateway's relayed connections open (`routing.relayed_connections`).
    pub fn relayed_connections(&self) -> Result<u64, LabError> {
        self.health()?["routing"]["relayed_connections"].as_u64().ok_or_else(|| {
            LabError::Unexpected {
                what: "/healthz".into(),
                detail: "no relayed_connections".into(),
            }
        })
    }

    /// [`Topology::paths`], once every one is direct or `within` has passed.
    pub fn paths_once_direct(&self, within: Duration) -> Result<Vec<String>, LabError> {
        let deadline = Instant::now() + within;
        loop {
            let paths = self.paths()?;
            if paths.iter().all(|p| p == "direct") || Instant::now() >= deadline {
                return Ok(paths);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops the dedicated relay, as a crash would (SIGKILL), on another thread after `after`.
    pub fn kill_relay_after(&mut self, after: Duration) -> Option<std::thread::JoinHandle<()>> {
        let mut relay = self.relay.take()?;
        Some(std::thread::spawn(move || {
            std::thread::sleep(after);
            let _ = relay.0.kill();
        }))
    }
}

/// `curl` on `host`: the HTTP status and body (status 0: no answer).
fn curl_in(host: &Host, args: &[&str]) -> Result<(u16, String), LabError> {
    let out = in_namespace(Path::new("curl"), Some(&host.netns))
        .args(["-s", "-m", "300", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn { command: "curl".into(), source })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((status.trim().parse().unwrap_or(0), body.to_owned()))
}
