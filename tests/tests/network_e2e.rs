//! The whole swarm as users run it: `infergrid devnet` with a real model registered,
//! four `infergrid node` processes (three blocks, block 0 replicated), an `infergrid gateway`,
//! and the OpenAI API answered through them, compared with the single-process result.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use infergrid::devnet::Role;
use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid::identity::NodeIdentity;
use infergrid_e2e::dev;
use infergrid_e2e::models::{import, import_with, local_greedy, make_checkpoint};
use infergrid_e2e::procs::{Proc, SWARM, Swarm, binary, devnet, free_port, post};

#[test]
fn minilm_embeddings_through_two_node_processes_match_local_ones() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hf = infergrid_e2e::models::minilm_checkpoint().unwrap();
    let model = import(&hf, &dir.path().join("minilm"), 2).unwrap();
    let m = model.to_str().unwrap();
    let (_devnet, manifest, deployment) = devnet(dir.path(), m);
    let (rpc, d) =
        (manifest["rpc_url"].as_str().unwrap().to_owned(), deployment.to_str().unwrap().to_owned());
    let swarm = Swarm { model: m, rpc: &rpc, deployment: &d, dir: dir.path() };
    let nodes: Vec<Proc> = (0..2).map(|i| swarm.node(i, &i.to_string(), &[])).collect();
    let listen = format!("127.0.0.1:{}", free_port());
    let _gateway = swarm.gateway(&listen, &[]);
    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;

    let texts =
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."];
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let script = "import sys,json\nfrom openai import OpenAI\nc=OpenAI(base_url=sys.argv[1], api_key='unused')\nr=c.embeddings.create(model=sys.argv[2], input=json.loads(sys.argv[3]))\nprint(json.dumps([d.embedding for d in r.data]))";
    let out = Command::new(python)
        .args([
            "-c",
            script,
            &format!("http://{listen}/v1"),
            &name,
            &serde_json::to_string(&texts).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "openai SDK: {}", String::from_utf8_lossy(&out.stderr));
    let remote: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();

    let runtime = Runtime::new(Device::Cpu, None).unwrap();
    let local = Pipeline::load(&model, &runtime, CacheLimits::default()).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let expected = infergrid::generate::embed_texts(&local, &tokenizer, &owned).unwrap();
    for (r, e) in remote.iter().zip(&expected) {
        let cos = infergrid::generate::cosine(r, e);
        assert!(cos >= 0.9999, "cosine {cos} between swarm and local embeddings");
    }
    // Encoder requests are whole: each is paid with its own voucher, so nothing is left owed.
    let health = get(&format!("http://{listen}/healthz"));
    let payments = health["routing"]["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 2, "{health}");
    for tab in payments {
        assert!(tab["metered_block_tokens"].as_u64().unwrap() > 0, "{tab}");
        assert_eq!(tab["owed"], tab["signed"], "an encoder request left unpaid: {tab}");
    }
    let published = infergrid::generate::cosine(&remote[0], &remote[1]);
    assert!((published - 0.6660).abs() < 1e-3, "{published}");
    // A text-generation request to an embedding model is a clear 400.
    let (status, body) = post(
        &format!("http://{listen}/v1/completions"),
        &serde_json::json!({"model": name, "prompt": "x"}),
    );
    assert_eq!(status, 400, "{body}");
    drop(nodes);
}

#[test]
fn gateway_over_four_node_processes_matches_single_process_inference() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hf = make_checkpoint(
        dir.path(),
        "llama",
        &["--layers", "5", "--seed", "21", "--max-pos", "4096"],
    )
    .unwrap();
    let model = import(&hf, &dir.path().join("model"), 3).unwrap();
    let m = model.to_str().unwrap();

    let (_devnet, manifest, deployment) = devnet(dir.path(), m);
    let rpc = manifest["rpc_url"].as_str().unwrap().to_owned();
    let d = deployment.to_str().unwrap();

    // Operators 0..4 serve blocks 0, 1, 2, 0 (devnet: operator i serves block i mod 3).
    let swarm = Swarm { model: m, rpc: &rpc, deployment: d, dir: dir.path() };
    let mut nodes: Vec<Proc> = (0..4).map(|i| swarm.node(i, &(i % 3).to_string(), &[])).collect();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _gateway = swarm.gateway(&listen, &[]);
    let api = format!("http://{listen}/v1");
    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;

    // Greedy completion through the swarm vs the same model in one process.
    let prompt = "the quick brown fox";
    let (status, body) = post(
        &format!("{api}/completions"),
        &serde_json::json!({
            "model": name, "prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 2
        }),
    );
    assert_eq!(status, 200, "{body}");
    let remote_ids: Vec<u32> =
        serde_json::from_value(body["choices"][0]["token_ids"].clone()).unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 24);
    assert_eq!(
        body["choices"][0]["logprobs"]["top_logprobs"][0].as_object().map(|o| o.len()),
        Some(2)
    );

    let (local_ids, local_text) = local_greedy(&model, prompt, 24).unwrap();
    assert_eq!(remote_ids, local_ids, "swarm and single-process greedy outputs differ");
    let infer = Command::new(binary())
        .args(["infer", "--model", m, "--prompt", prompt, "--max-tokens", "24", "--json"])
        .output()
        .unwrap();
    let infer: serde_json::Value = serde_json::from_slice(&infer.stdout).expect("infer --json");
    let infer_ids: Vec<u32> = serde_json::from_value(infer["token_ids"].clone()).unwrap();
    assert_eq!(remote_ids, infer_ids, "swarm output differs from `infergrid infer`");
    assert_eq!(body["choices"][0]["text"].as_str(), Some(local_text.as_str()));

    // Malformed requests get OpenAI-shaped errors.
    let (status, body) = post(&format!("{api}/completions"), &serde_json::json!({"model": name}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) =
        post(&format!("{api}/completions"), &serde_json::json!({"model": "nope", "prompt": "x"}));
    assert_eq!(status, 404, "{body}");
    let (status, _) = post(
        &format!("{api}/chat/completions"),
        &serde_json::json!({"model": name, "messages": [], "temperature": 0}),
    );
    assert_eq!(status, 400);

    // The official openai SDK, unmodified: a streamed chat completion.
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let script = "import sys\nfrom openai import OpenAI\nc=OpenAI(base_url=sys.argv[1], api_key='unused')\ns=c.chat.completions.create(model=sys.argv[2], messages=[{'role':'user','content':'hello'}], max_tokens=8, temperature=0, stream=True)\nparts=[ch.choices[0].delta.content or '' for ch in s]\nr=c.chat.completions.create(model=sys.argv[2], messages=[{'role':'user','content':'hello'}], max_tokens=8, temperature=0)\nassert ''.join(parts)==r.choices[0].message.content, (parts, r.choices[0].message.content)\nassert r.usage.completion_tokens==8\nprint('openai-sdk-ok', len(parts))";
    let out = Command::new(python).args(["-c", script, &api, &name]).output().unwrap();
    assert!(out.status.success(), "openai SDK: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai-sdk-ok"));

    // kill -9 of the node serving the replicated block 0, mid-stream: the stream completes
    // with exactly the output of a run without failure.
    let long = serde_json::json!({"model": name, "prompt": "once upon a time", "max_tokens": 600, "temperature": 0});
    let (status, clean) = post(&format!("{api}/completions"), &long);
    assert_eq!(status, 200);
    assert_eq!(
        clean["usage"]["completion_tokens"], 600,
        "the fixture hit EOS early; pick another prompt"
    );
    let stream = PausedStream::start(&format!("{api}/completions"), &long, 10);
    let (victim, index) = first_hop(&listen);
    nodes[index].0.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    let text = stream.finish();
    assert_eq!(text, clean["choices"][0]["text"].as_str().unwrap(), "failover changed the output");
    let health = get(&format!("http://{listen}/healthz"));
    let failovers = health["routing"]["failovers"].as_array().unwrap();
    assert_eq!(failovers.len(), 1, "{health}");
    assert_eq!(failovers[0]["failed_peer"], victim.as_str());
    // The replica that took over block 0 was paid for its work (the replayed steps included),
    // as was every node the stream went through.
    let replica = dev(Role::Operator, 3 - index).address.to_string();
    let payments = health["routing"]["payments"].as_array().unwrap();
    let tab = payments.iter().find(|t| t["operator"] == replica.as_str()).expect("replica paid");
    assert!(tab["metered_block_tokens"].as_u64().unwrap() > 0, "{tab}");
    assert_eq!(tab["owed"], tab["signed"], "the finished request is settled: {tab}");
    eprintln!(
        "failover: killed {victim} after 10 streamed tokens; stall {:.1} ms; stream finished {:.0} ms after the kill",
        failovers[0]["stall_ms"].as_f64().unwrap(),
        killed_at.elapsed().as_secs_f64() * 1e3
    );
    drop(nodes);
}

/// A streamed completion (a Python client) that stops reading after `tokens` chunks until
/// told to go on: what happens meanwhile (a node killed) happens mid-stream.
struct PausedStream {
    reader: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl PausedStream {
    /// Starts streaming `body` to `url`; returns once `tokens` chunks have arrived.
    fn start(url: &str, body: &serde_json::Value, tokens: usize) -> Self {
        let mut body = body.clone();
        body["stream"] = serde_json::json!(true);
        let client = "import sys,json,urllib.request\nr=urllib.request.urlopen(urllib.request.Request(sys.argv[1],data=sys.argv[2].encode(),headers={'Content-Type':'application/json'}),timeout=120)\ntext='';n=0\nfor raw in r:\n line=raw.decode().strip()\n if not line.startswith('data: '): continue\n data=line[6:]\n if data=='[DONE]': break\n obj=json.loads(data)\n if 'error' in obj: print('ERROR',json.dumps(obj),flush=True); sys.exit(1)\n text+=obj['choices'][0]['text']; n+=1\n if n==int(sys.argv[3]): print('PAUSED',flush=True); sys.stdin.readline()\nprint('TEXT',json.dumps(text),flush=True)";
        let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
        let mut reader = Command::new(&python)
            .args(["-c", client, url, &body.to_string(), &tokens.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "PAUSED");
        Self { reader, lines }
    }

    /// Reads the rest of the stream; returns its whole text.
    fn finish(mut self) -> String {
        use std::io::Write;
        writeln!(self.reader.stdin.as_mut().unwrap()).unwrap();
        let last = self.lines.next().unwrap().unwrap();
        let text = serde_json::from_str(
            last.strip_prefix("TEXT ").unwrap_or_else(|| panic!("stream failed: {last}")),
        )
        .unwrap();
        assert!(self.reader.wait().unwrap().success());
        text
    }
}

/// The peer serving the first hop of the gateway's current route (once a step has finished),
/// and its devnet operator index (one of the replicated block 0's).
fn first_hop(listen: &str) -> (String, usize) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let victim = loop {
        let health = get(&format!("http://{listen}/healthz"));
        if let Some(peer) = health["routing"]["route"][0]["peer"].as_str() {
            break peer.to_owned();
        }
        assert!(Instant::now() < deadline, "no step finished: {health}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let index = (0..4)
        .find(|&i| {
            NodeIdentity::derive(&dev(Role::Operator, i).private_key).peer_id().to_string()
                == victim
        })
        .expect("a node");
    assert_eq!(index % 3, 0, "hop 0 serves the replicated block");
    (victim, index)
}

fn get(url: &str) -> serde_json::Value {
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let out = Command::new(python)
        // A 503 (a block unserved for a moment) still carries the JSON.
        .args(["-c", "import sys,urllib.request,urllib.error\ntry: r=urllib.request.urlopen(sys.argv[1],timeout=30)\nexcept urllib.error.HTTPError as e: r=e\nprint(r.read().decode())", url])
        .output()
        .unwrap();
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

/// Six users stream at once, their decode steps batched at every node; the node serving
/// block 0 on their route is killed mid-stream: the streams it served fail over to the
/// replica, and every stream completes with exactly the output of the model run in one
/// process.
#[test]
fn a_failover_mid_batch_leaves_every_stream_exact() {
    let prompts = ["once upon a time", "in the beginning", "hello", "a b c", "the end", "why"];
    let after = streams_survive_a_kill(&[], &prompts, 400);
    eprintln!(
        "killed {} under 6 concurrent streams: {} sessions failed over, all exact",
        after.victim, after.failed_over
    );
}

/// A gateway speculating (`--speculate 4`: prompt-lookup drafts, `k + 1` positions verified
/// in one round trip per hop) streams exactly the greedy output of the model run in one
/// process, and keeps doing so when the node serving block 0 is killed mid-generation: the
/// verify steps replayed on the replica roll back like any other step.
#[test]
fn a_speculating_gateway_gives_the_plain_output_through_a_failover() {
    let prompts = ["once upon a time", "the cat sat on the mat. the cat sat on", "a b c"];
    let after = streams_survive_a_kill(&["--speculate", "4"], &prompts, 300);
    let count = |name: &str| infergrid_e2e::http::sample(&after.metrics, name).unwrap_or(0.0);
    let (drafted, accepted) = (
        count("infergrid_gateway_drafted_tokens_total"),
        count("infergrid_gateway_accepted_tokens_total"),
    );
    eprintln!(
        "speculating, killed {} under 3 streams: {} sessions failed over, all exact; \
         {accepted} of {drafted} drafted tokens accepted",
        after.victim, after.failed_over
    );
    assert!(drafted > 0.0 && accepted > 0.0, "nothing was speculated: {}", after.metrics);
    let speculation = &after.health["routing"]["speculation"];
    assert_eq!(speculation["max_drafts"], 4, "{speculation}");
    assert_eq!(
        speculation["drafted_tokens"].as_f64(),
        Some(drafted),
        "/healthz and /metrics agree"
    );
    assert_eq!(speculation["accepted_tokens"].as_f64(), Some(accepted));
}

/// A draft node — devnet operator 3, re-registered for the fixture's int8 import and serving
/// it whole — drafts for a gateway started with `--draft-nodes`: the greedy output is the
/// model's run in one process, most drafts are accepted, and the draft node is paid through a
/// channel of its own, settled when each generation ends. Hung mid-stream (stopped, its
/// connection still open), it holds up no decode step past the draft deadline, and leaves the
/// stream to decode plainly, to the same output.
#[test]
fn a_draft_node_drafts_is_paid_and_its_loss_leaves_the_stream_exact() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (_devnet, manifest, deployment, model) = infergrid_e2e::procs::llama_devnet(dir.path());
    let hf = dir.path().join("llama-hf");
    let draft = import_with(&hf, &dir.path().join("draft"), 1, &["--quantize", "int8"]).unwrap();
    let (m, d) = (model.to_str().unwrap(), draft.to_str().unwrap());
    let rpc = manifest["rpc_url"].as_str().unwrap().to_owned();
    let swarm =
        Swarm { model: m, rpc: &rpc, deployment: deployment.to_str().unwrap(), dir: dir.path() };
    let _nodes: Vec<Proc> = (0..3).map(|i| swarm.node(i, &i.to_string(), &[])).collect();
    let mut draft_node = Swarm { model: d, ..swarm }.node(3, "0", &["--update-registration"]);
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = ["--speculate", "4", "--draft-model", d, "--draft-nodes"];
    let (_gateway, log) = swarm.gateway_logged(0, &listen, &flags, &[]);
    let api = format!("http://{listen}/v1");
    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;

    let (mut drafted, mut accepted) = (0, 0);
    for prompt in ["once upon a time", "the cat sat on the mat", "a b c"] {
        let body = serde_json::json!({"model": name, "prompt": prompt, "max_tokens": 40, "temperature": 0});
        let (status, answer) = post(&format!("{api}/completions"), &body);
        assert_eq!(status, 200, "{answer}");
        let ids: Vec<u32> =
            serde_json::from_value(answer["choices"][0]["token_ids"].clone()).unwrap();
        assert_eq!(ids, local_greedy(&model, prompt, 40).unwrap().0, "{prompt:?}");
        let speculation = &answer["usage"]["speculation"];
        drafted += speculation["drafted_tokens"].as_u64().unwrap();
        accepted += speculation["accepted_tokens"].as_u64().unwrap();
    }
    eprintln!("draft node: {accepted} of {drafted} drafted tokens accepted");
    assert!(drafted > 0 && accepted * 10 >= drafted * 8, "{accepted} of {drafted} accepted");
    let health = get(&format!("http://{listen}/healthz"));
    assert_eq!(health["routing"]["speculation"]["drafts_from"], "draft_nodes", "{health}");
    // The payments report is refreshed every 2 s: the draft sessions' Close steps, which
    // carry their final vouchers, may come after the last refresh.
    let draft_operator = dev(Role::Operator, 3).address.to_string();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let tab = loop {
        let health = get(&format!("http://{listen}/healthz"));
        let payments = health["routing"]["payments"].as_array().unwrap().clone();
        let tab = payments.into_iter().find(|t| t["operator"] == draft_operator.as_str());
        let tab = tab.unwrap_or_else(|| panic!("the draft node was not paid: {health}"));
        if tab["owed"] == tab["signed"] || Instant::now() > deadline {
            break tab;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(tab["metered_block_tokens"].as_u64().unwrap() > 0, "{tab}");
    assert_eq!(tab["owed"], tab["signed"], "every draft session is settled: {tab}");

    // The draft node hangs mid-stream (SIGSTOP: its connections stay open, nothing answers):
    // the stream goes on without drafts, exactly.
    let prompt = "in the beginning";
    let long =
        serde_json::json!({"model": name, "prompt": prompt, "max_tokens": 400, "temperature": 0});
    let stream = PausedStream::start(&format!("{api}/completions"), &long, 10);
    let signal = |name: &str| {
        let pid = draft_node.0.id().to_string();
        let status = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    let text = stream.finish();
    signal("-CONT");
    draft_node.0.kill().unwrap();
    let plain = local_greedy(&model, prompt, 400).unwrap().1;
    assert_eq!(text, plain, "losing the draft node changed the output");
    // Proof that the draft node hung while the stream still needed it, and that the decode
    // step waited only the draft deadline for it, not the network's request timeout.
    let within = format!(
        "the draft node gave no guesses within {} ms",
        infergrid::gateway::DRAFT_DEADLINE.as_millis()
    );
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let noticed = std::iter::from_fn(|| {
        log.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
    })
    .any(|line| line.contains(&within));
    assert!(noticed, "the draft node hung after the stream had finished");
}

/// What [`streams_survive_a_kill`] saw.
struct AfterKill {
    victim: String,
    /// Sessions that failed over off the killed node.
    failed_over: usize,
    /// The gateway's `/healthz` and `/metrics` after every stream finished.
    health: serde_json::Value,
    metrics: String,
}

/// Streams `prompts` at once (`tokens` each, greedy) through a gateway started with
/// `gateway_args`, kills the node their route uses for block 0 once all of them run, and
/// checks that every stream ends with exactly the greedy output of the model run in one
/// process and that at least one failed over.
fn streams_survive_a_kill(gateway_args: &[&str], prompts: &[&str], tokens: usize) -> AfterKill {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (_devnet, manifest, deployment, model) = infergrid_e2e::procs::llama_devnet(dir.path());
    let m = model.to_str().unwrap();
    let rpc = manifest["rpc_url"].as_str().unwrap().to_owned();
    let swarm =
        Swarm { model: m, rpc: &rpc, deployment: deployment.to_str().unwrap(), dir: dir.path() };
    // Operators 0..4 serve blocks 0, 1, 2, 0.
    let mut nodes: Vec<Proc> = (0..4).map(|i| swarm.node(i, &(i % 3).to_string(), &[])).collect();
    let listen = format!("127.0.0.1:{}", free_port());
    let _gateway = swarm.gateway(&listen, gateway_args);
    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;

    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let script = infergrid_e2e::models::repo_root().join("tests/py/streams.py");
    let users = Command::new(&python)
        .arg(&script)
        .args([&format!("http://{listen}/v1"), &name, "unused", &tokens.to_string()])
        .args(prompts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once all of them run, kill the node their route uses for block 0.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while get(&format!("http://{listen}/healthz"))["sessions"]["active"] != prompts.len() {
        assert!(Instant::now() < deadline, "the streams never ran at once");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (victim, index) = first_hop(&listen);
    nodes[index].0.kill().unwrap(); // SIGKILL, while every session streams through it
    let out = users.wait_with_output().unwrap();
    assert!(out.status.success(), "streams.py: {}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (prompt, result) in prompts.iter().zip(&results) {
        assert!(result.get("error").is_none(), "{prompt:?}: {result}");
        let (_, expected) = local_greedy(&model, prompt, tokens).unwrap();
        assert_eq!(
            result["text"].as_str(),
            Some(expected.as_str()),
            "{prompt:?}: failover changed the output"
        );
    }
    let health = get(&format!("http://{listen}/healthz"));
    let failovers = health["routing"]["failovers"].as_array().unwrap();
    let failed_over = failovers.iter().filter(|f| f["failed_peer"] == victim.as_str()).count();
    assert!(failed_over >= 1, "no session failed over: {health}");
    let (status, metrics) = infergrid_e2e::http::get(&listen, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    AfterKill { victim, failed_over, health, metrics }
}
