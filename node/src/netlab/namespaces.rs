//! Hosts in Linux network namespaces: a public network on a bridge, and home networks each
//! behind a router that masquerades (iptables MASQUERADE) and drops connections it did not
//! see go out, as home routers do. Every namespace is deleted when the lab is dropped, also
//! when whatever used it failed.

use std::process::Command;

use super::LabError;

/// The public network: `10.77.0.0/24`, on a bridge in the public namespace, which holds
/// `10.77.0.1`; router `n`'s outside address is `10.77.0.(10 + n)`.
const PUBLIC_NET: &str = "10.77.0";

/// How a home router maps ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Keeps a connection's source port where it can (Linux's default): the same port for
    /// every destination, so a hole punched toward one peer is open to it.
    PortPreserving,
    /// A random source port per connection (`--random-fully`): no peer can predict it, and
    /// hole punching fails.
    RandomPorts,
}

/// A host: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
    pub ip: String,
}

/// The namespaces of one lab, named with a prefix of its own.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

/// Runs `args`, checked.
pub(super) fn run(args: &[&str]) -> Result<(), LabError> {
    let command = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        let stderr = format!(
            "{} (the network lab runs as root, with iproute2 and iptables)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(LabError::Command { command, stderr });
    }
    Ok(())
}

impl Lab {
    /// An empty lab; `tag` (a letter or two) keeps labs that run at once apart.
    pub fn new(tag: &str) -> Self {
        // Interface names are made of it too, and Linux allows 15 bytes: `ig`, the tag, a pid
        // of up to 7 digits, then at most 4 more.
        let prefix = format!("ig{tag}{}", std::process::id());
        // Left by a run killed before it could clean up, under what is now this process's id
        // (names go on with a letter: `pub`, `r1`, `h1`; `ig` + tag + 12 is another's).
        let ours = |name: &&str| {
            name.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with(char::is_alphabetic))
        };
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            let listed = String::from_utf8_lossy(&out.stdout).into_owned();
            for stale in listed.split_whitespace().filter(ours) {
                let _ = Command::new("ip").args(["netns", "del", stale]).status();
            }
        }
        Self { prefix, namespaces: Vec::new() }
    }

    /// `ip netns exec NETNS ARGS…`, checked.
    fn exec(&self, netns: &str, args: &[&str]) -> Result<(), LabError> {
        run(&[&["ip", "netns", "exec", netns], args].concat())
    }

    fn namespace(&mut self, name: &str) -> Result<String, LabError> {
        let netns = format!("{}{name}", self.prefix);
        run(&["ip", "netns", "add", &netns])?;
        self.namespaces.push(netns.clone());
        self.exec(&netns, &["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The public network's namespace, at `10.77.0.1`.
    pub fn public(&mut self) -> Result<Host, LabError> {
        let netns = self.namespace("pub")?;
        self.exec(&netns, &["ip", "link", "add", "br0", "type", "bridge"])?;
        self.exec(&netns, &["ip", "addr", "add", &format!("{PUBLIC_NET}.1/24"), "dev", "br0"])?;
        self.exec(&netns, &["ip", "link", "set", "br0", "up"])?;
        Ok(Host { netns, ip: format!("{PUBLIC_NET}.1") })
    }

    /// Home network `n` (1–99) behind its own router on the public network: the host at
    /// `192.168.n.2`. It reaches the public network; nothing there reaches it unasked.
    pub fn home(&mut self, public: &Host, n: u8, mapping: Mapping) -> Result<Host, LabError> {
        let router = self.namespace(&format!("r{n}"))?;
        let home = self.namespace(&format!("h{n}"))?;
        let p = &self.prefix;
        let (wan, bridged) = (format!("{p}r{n}w"), format!("{p}r{n}b"));
        let (lan, inside) = (format!("{p}r{n}l"), format!("{p}h{n}e"));
        // Each pair is made inside its namespaces, so that nothing outlives them.
        let pair = |a: &str, a_in: &str, b: &str, b_in: &str| {
            run(&[
                "ip", "link", "add", a, "netns", a_in, "type", "veth", "peer", "name", b, "netns",
                b_in,
            ])
        };
        pair(&wan, &router, &bridged, &public.netns)?;
        self.exec(&public.netns, &["ip", "link", "set", &bridged, "master", "br0", "up"])?;
        let outside = format!("{PUBLIC_NET}.{}/24", 10 + u16::from(n));
        self.exec(&router, &["ip", "addr", "add", &outside, "dev", &wan])?;
        self.exec(&router, &["ip", "link", "set", &wan, "up"])?;
        pair(&lan, &router, &inside, &home)?;
        let (gateway, ip) = (format!("192.168.{n}.1"), format!("192.168.{n}.2"));
        self.exec(&router, &["ip", "addr", "add", &format!("{gateway}/24"), "dev", &lan])?;
        self.exec(&router, &["ip", "link", "set", &lan, "up"])?;
        self.exec(&home, &["ip", "addr", "add", &format!("{ip}/24"), "dev", &inside])?;
        self.exec(&home, &["ip", "link", "set", &inside, "up"])?;
        self.exec(&home, &["ip", "route", "add", "default", "via", &gateway])?;
        self.exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let mut masquerade = vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", &wan];
        masquerade.extend(["-j", "MASQUERADE"]);
        if mapping == Mapping::RandomPorts {
            masquerade.push("--random-fully");
        }
        self.exec(&router, &masquerade)?;
        // In from the outside: only what belongs to a connection seen going out.
        let back = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"];
        let forward = ["iptables", "-A", "FORWARD", "-i", &wan, "-o", &lan];
        self.exec(&router, &[&forward[..], &back[..]].concat())?;
        self.exec(&router, &[&forward[..], &["-j", "DROP"][..]].concat())?;
        // Unasked connections to the router itself are dropped, not refused, as home routers
        // do: a reset would end a hole punch whose first packet beats the other side's.
        let unasked = ["-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"];
        let input = ["iptables", "-A", "INPUT", "-i", &wan];
        self.exec(&router, &[&input[..], &unasked[..]].concat())?;
        Ok(Host { netns: home, ip })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for netns in self.namespaces.iter().rev() {
            // Processes left inside (a run that failed before stopping them) go first.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: kill(2) has no memory effects; the pid is one `ip` listed.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
    }
}
