//! Processes for the process-level tests: the `infergrid` binary started as users start it,
//! stopped whatever happens, and the HTTP API called as a client would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use infergrid::devnet::Role;

pub use infergrid::netlab::Proc;
pub use infergrid::netlab::process::expect_line;
use infergrid::netlab::process::{Log, follow, in_namespace};

pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("infergrid")
}

/// Starts `infergrid ARGS` and waits for a stdout line starting with `ready`.
pub fn start(args: &[&str], env: &[(&str, String)], ready: &str) -> (Proc, String) {
    let (proc, line, _) = start_following(args, env, ready);
    (proc, line)
}

/// [`start`], and the lines the process prints after the ready line, stdout and stderr (its
/// log) together; its stderr still reaches the test's.
pub fn start_following(
    args: &[&str],
    env: &[(&str, String)],
    ready: &str,
) -> (Proc, String, std::sync::mpsc::Receiver<String>) {
    start_following_in(None, args, env, ready)
}

/// `infergrid`, run inside network namespace `netns` if one is given.
pub fn infergrid_in(netns: Option<&str>) -> Command {
    in_namespace(&binary(), netns)
}

/// [`start_following`], inside network namespace `netns` if one is given.
pub fn start_following_in(
    netns: Option<&str>,
    args: &[&str],
    env: &[(&str, String)],
    ready: &str,
) -> (Proc, String, std::sync::mpsc::Receiver<String>) {
    let mut cmd = infergrid_in(netns);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    follow(cmd, ready, Log::Echo).unwrap_or_else(|e| panic!("infergrid {args:?}: {e}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let script = "import sys,json,urllib.request,urllib.error\nreq=urllib.request.Request(sys.argv[1],data=sys.argv[2].encode(),headers={'Content-Type':'application/json'})\ntry:\n r=urllib.request.urlopen(req,timeout=60); print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())";
    let out = Command::new(python).args(["-c", script, url, &body.to_string()]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, body) = text.split_once('\n').expect("status line");
    (
        status.trim().parse().unwrap(),
        serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null),
    )
}

/// The devnet's nodes listen on fixed ports (their registered multiaddrs): one swarm at a time.
pub static SWARM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts `infergrid devnet` for `model` and waits for its ready file; returns it and the
/// manifest it wrote.
pub fn devnet(dir: &Path, model: &str) -> (Proc, serde_json::Value, PathBuf) {
    devnet_started(None, dir, model, &[], Stdio::inherit())
}

/// A random 3-layer llama (seed 21, 4096 positions) imported in 3 blocks into `dir/model`,
/// and a devnet registered for it: the devnet, its manifest, its deployment file, the model.
pub fn llama_devnet(dir: &Path) -> (Proc, serde_json::Value, PathBuf, PathBuf) {
    let flags = ["--layers", "3", "--seed", "21", "--max-pos", "4096"];
    let hf = crate::models::make_checkpoint(dir, "llama", &flags).unwrap();
    let model = crate::models::import(&hf, &dir.join("model"), 3).unwrap();
    let (devnet, manifest, deployment) = devnet(dir, model.to_str().expect("utf-8 path"));
    (devnet, manifest, deployment, model)
}

/// [`llama_devnet`], with what the processes a test starts against it need.
pub struct TestNet {
    pub devnet: Proc,
    /// The devnet's ready file: RPC URL, contracts, roles.
    pub manifest: serde_json::Value,
    pub rpc: String,
    pub deployment: String,
    pub model: String,
    pub dir: PathBuf,
}

impl TestNet {
    /// A devnet for a random 3-layer llama in 3 blocks, its files in `dir`.
    pub fn start(dir: &Path) -> Self {
        let (devnet, manifest, deployment, model) = llama_devnet(dir);
        Self::started(dir, devnet, manifest, deployment, model)
    }

    /// A devnet registered for `model` (an import in 3 blocks), its files in `dir`.
    pub fn for_model(dir: &Path, model: &Path) -> Self {
        let (devnet, manifest, deployment) = devnet(dir, model.to_str().expect("utf-8 path"));
        Self::started(dir, devnet, manifest, deployment, model.to_path_buf())
    }

    fn started(
        dir: &Path,
        devnet: Proc,
        manifest: serde_json::Value,
        deployment: PathBuf,
        model: PathBuf,
    ) -> Self {
        let rpc = manifest["rpc_url"].as_str().expect("rpc_url").to_owned();
        let text = |path: PathBuf| path.to_str().expect("utf-8 path").to_owned();
        Self {
            devnet,
            manifest,
            rpc,
            deployment: text(deployment),
            model: text(model),
            dir: dir.to_path_buf(),
        }
    }

    /// Nodes and gateways joining this devnet.
    pub fn swarm(&self) -> Swarm<'_> {
        Swarm { model: &self.model, rpc: &self.rpc, deployment: &self.deployment, dir: &self.dir }
    }

    /// The served model's name (`model` in API requests).
    pub fn model_name(&self) -> String {
        infergrid::model::ModelManifest::load(Path::new(&self.model)).expect("manifest").name
    }
}

/// [`devnet`] with `extra` arguments (its nodes, validators, epochs); what its processes log
/// goes to `dir/devnet.log`.
pub fn devnet_with(dir: &Path, model: &str, extra: &[&str]) -> (Proc, serde_json::Value, PathBuf) {
    devnet_in(None, dir, model, extra)
}

/// [`devnet_with`], inside network namespace `netns` if one is given.
pub fn devnet_in(
    netns: Option<&str>,
    dir: &Path,
    model: &str,
    extra: &[&str],
) -> (Proc, serde_json::Value, PathBuf) {
    let log = std::fs::File::create(dir.join("devnet.log")).unwrap();
    devnet_started(netns, dir, model, extra, Stdio::from(log))
}

fn devnet_started(
    netns: Option<&str>,
    dir: &Path,
    model: &str,
    extra: &[&str],
    stderr: Stdio,
) -> (Proc, serde_json::Value, PathBuf) {
    infergrid::netlab::process::devnet(infergrid_in(netns), dir, model, extra, stderr)
        .unwrap_or_else(|e| panic!("devnet: {e}"))
}

/// A test's devnet, as `infergrid node` and `infergrid gateway` processes are pointed at it;
/// their ledgers and wallet go to `dir`.
pub struct Swarm<'a> {
    pub model: &'a str,
    pub rpc: &'a str,
    pub deployment: &'a str,
    pub dir: &'a Path,
}

impl Swarm<'_> {
    /// `infergrid node` as devnet operator `index`, serving `blocks`, listening on the port
    /// registered for it (`NODE_PORT_BASE + index`), with `extra` arguments.
    pub fn node(&self, index: usize, blocks: &str, extra: &[&str]) -> Proc {
        self.node_logged(index, blocks, extra).0
    }

    /// [`Swarm::node`], and the lines it prints once ready (its log included).
    pub fn node_logged(
        &self,
        index: usize,
        blocks: &str,
        extra: &[&str],
    ) -> (Proc, std::sync::mpsc::Receiver<String>) {
        let port = usize::from(infergrid::devnet::NODE_PORT_BASE) + index;
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        let ledger = self.dir.join(format!("node-{index}.redb"));
        let mut args = vec!["node", "--model", self.model, "--blocks", blocks, "--key-env"];
        args.extend(["NODE_KEY", "--rpc-url", self.rpc, "--deployment", self.deployment]);
        args.extend(["--listen", &listen, "--ledger", ledger.to_str().expect("utf-8 path")]);
        args.extend_from_slice(extra);
        let key = crate::dev(Role::Operator, index).private_key.to_string();
        let (node, _, lines) = start_following(&args, &[("NODE_KEY", key)], "node ready");
        (node, lines)
    }

    /// `infergrid gateway` paying as devnet payer 0, its API on `listen`, with `extra` arguments.
    pub fn gateway(&self, listen: &str, extra: &[&str]) -> Proc {
        self.gateway_with_env(listen, extra, &[])
    }

    /// [`Swarm::gateway`] with `env` variables set for it too.
    pub fn gateway_with_env(&self, listen: &str, extra: &[&str], env: &[(&str, String)]) -> Proc {
        self.gateway_paying(0, listen, extra, env)
    }

    /// `infergrid gateway` paying as devnet payer `payer` (its wallet its own), its API on
    /// `listen`, with `extra` arguments and `env` variables.
    pub fn gateway_paying(
        &self,
        payer: usize,
        listen: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Proc {
        self.gateway_logged(payer, listen, extra, env).0
    }

    /// [`Swarm::gateway_paying`], and the lines it prints once ready (its log included).
    pub fn gateway_logged(
        &self,
        payer: usize,
        listen: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> (Proc, std::sync::mpsc::Receiver<String>) {
        let wallet = self.dir.join(format!("wallet-{payer}.redb"));
        let mut args = vec!["gateway", "--model", self.model, "--key-env", "PAYER_KEY"];
        args.extend(["--rpc-url", self.rpc, "--deployment", self.deployment, "--listen", listen]);
        args.extend(["--wallet", wallet.to_str().expect("utf-8 path")]);
        args.extend_from_slice(extra);
        let mut env = env.to_vec();
        env.push(("PAYER_KEY", crate::dev(Role::Payer, payer).private_key.to_string()));
        let (gateway, _, lines) = start_following(&args, &env, "gateway ready");
        (gateway, lines)
    }
}

/// What a streamed completion delivered.
#[derive(Debug, Default)]
pub struct Streamed {
    /// The completion's id (`cmpl-<session>`).
    pub id: String,
    pub text: String,
    /// The token ids of its chunks, in order (the gateway's `token_ids` extension).
    pub token_ids: Vec<u32>,
    pub finish_reason: Option<String>,
    /// An error event or a stream cut before `[DONE]`.
    pub error: Option<String>,
}

/// Streams `/completions` of the OpenAI API at `api` (`http://host:port/v1`) with `body`
/// (`"stream": true` is added) over a raw HTTP/1.0 connection, so the events arrive unframed.
pub fn stream_completion(api: &str, body: &serde_json::Value) -> Streamed {
    use std::io::Write;
    let authority = api.trim_start_matches("http://").split('/').next().unwrap();
    let mut body = body.clone();
    body["stream"] = serde_json::Value::Bool(true);
    let body = body.to_string();
    let mut socket = std::net::TcpStream::connect(authority).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).unwrap();
    let mut streamed = Streamed::default();
    for line in BufReader::new(socket).lines() {
        let Ok(line) = line else { break };
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            return streamed;
        }
        let event: serde_json::Value = serde_json::from_str(data).unwrap();
        if event.get("error").is_some() {
            streamed.error = Some(event.to_string());
            return streamed;
        }
        streamed.id = event["id"].as_str().unwrap_or_default().to_owned();
        let choice = &event["choices"][0];
        streamed.text.push_str(choice["text"].as_str().unwrap_or_default());
        let ids = choice["token_ids"].as_array().into_iter().flatten();
        streamed.token_ids.extend(ids.map(|id| id.as_u64().unwrap() as u32));
        if let Some(reason) = choice["finish_reason"].as_str() {
            streamed.finish_reason = Some(reason.to_owned());
        }
    }
    streamed.error.get_or_insert_with(|| "the stream ended before [DONE]".into());
    streamed
}
