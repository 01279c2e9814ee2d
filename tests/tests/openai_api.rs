//! The OpenAI API as a dApp developer meets it: the official Python SDK checks every
//! parameter (implemented with its effect shown, or refused with a 400 naming it), the official
//! JS SDK the common paths, and raw HTTP what SDKs hide — against a gateway routing over three
//! node processes on anvil, its greedy output compared with the model run whole in-process.

use std::path::Path;
use std::process::Command;

use infergrid_e2e::http::{exchange, metered, post_request};
use infergrid_e2e::models::{local_greedy, repo_root};
use infergrid_e2e::procs::{Proc, TestNet, free_port};

const ORIGIN: &str = "http://app.example";

#[test]
fn the_openai_sdks_find_every_parameter_implemented_or_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::start(dir.path());
    let (swarm, model) = (net.swarm(), Path::new(&net.model));
    let _nodes: Vec<Proc> = (0..3).map(|i| swarm.node(i, &i.to_string(), &[])).collect();
    let addr = format!("127.0.0.1:{}", free_port());
    let timeouts = ["--header-timeout-secs", "2", "--body-timeout-secs", "2"];
    let _gateway = swarm.gateway(&addr, &[&["--cors-origin", ORIGIN][..], &timeouts].concat());
    let served = infergrid::model::ModelManifest::load(model).unwrap();
    let (name, config) = (served.name.clone(), &served.config);
    let api = format!("http://{addr}/v1");

    // The Python SDK: every parameter.
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    let out = Command::new(&python)
        .arg(repo_root().join("tests/py/openai_conformance.py"))
        .args([&api, &name, &config.max_positions.to_string(), &config.vocab_size.to_string()])
        .arg(
            served.tokenizer.eos_token_ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "openai_conformance.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks = stdout.lines().filter(|l| l.starts_with("ok: ")).count();
    assert_eq!(checks, 15, "the script ran {checks} of its 15 checks");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let (expected_ids, expected_text) = local_greedy(model, "once upon a time", 16).unwrap();
    assert_eq!(report["greedy_ids"], serde_json::json!(expected_ids), "the swarm's greedy output");

    // The JS SDK: a completion, a streamed chat, an error.
    let npm = repo_root().join(".infergrid/npm/node_modules");
    let out = Command::new("node")
        .arg(repo_root().join("tests/js/openai_conformance.cjs"))
        .args([&api, &name, &expected_text])
        .env("NODE_PATH", &npm)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "openai_conformance.cjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the SDKs hide. Refused requests are refused before anything is paid for.
    let before = metered(&addr);
    for max_tokens in ["0", "-5", "18446744073709551615", "1e23", &config.max_positions.to_string()]
    {
        for stream in [false, true] {
            let body = format!(
                r#"{{"model":"{name}","prompt":"hi","max_tokens":{max_tokens},"stream":{stream}}}"#
            );
            let started = std::time::Instant::now();
            let (status, _, answer) =
                exchange(&addr, &post_request("/v1/completions", None, &body));
            assert_eq!(status, 400, "max_tokens {max_tokens}: {answer}");
            let error: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(error["error"]["param"], "max_tokens", "{answer}");
            assert!(started.elapsed().as_secs() < 5, "max_tokens {max_tokens} took a while");
        }
    }
    assert_eq!(metered(&addr), before, "a refused request was paid for");

    // A body that is not declared JSON: 415; a wrong method: 405 with Allow, as JSON.
    let text = "POST /v1/completions HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
    let (status, _, answer) = exchange(&addr, text.as_bytes());
    assert_eq!(status, 415, "{answer}");
    let get = "GET /v1/completions HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n";
    let (status, headers, answer) = exchange(&addr, get.as_bytes());
    assert_eq!(status, 405, "{answer}");
    assert!(headers.iter().any(|(k, v)| k == "allow" && v.contains("POST")), "{headers:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["error"]["type"],
        "invalid_request_error"
    );

    // CORS: the configured origin is allowed with the SDK's own headers; another is not.
    let preflight = |origin: &str| {
        let request = format!(
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: g\r\nConnection: close\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type, x-stainless-os\r\n\r\n"
        );
        exchange(&addr, request.as_bytes()).1
    };
    let allowed = preflight(ORIGIN);
    let header = |headers: &[(String, String)], name: &str| {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some(ORIGIN));
    let allowed_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    assert!(allowed_headers.contains("x-stainless-os"), "{allowed:?}");
    assert_eq!(header(&preflight("http://evil.example"), "access-control-allow-origin"), None);
    let body = format!(r#"{{"model":"{name}","prompt":"hi","max_tokens":2,"temperature":0}}"#);
    let mut request = post_request("/v1/completions", None, &body);
    let at = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    request.splice(at..at, format!("\r\nOrigin: {ORIGIN}").into_bytes());
    let (status, headers, answer) = exchange(&addr, &request);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "access-control-allow-origin").as_deref(), Some(ORIGIN));

    half_open_connections_do_not_stop_a_normal_client(&addr, &name);
}

/// 1,000 connections from 127.0.0.1 held open idle, stalled mid-header or stalled mid-body:
/// a client from 127.0.0.2 is served meanwhile, and the gateway (header and body timeouts of
/// 2 s) closes every one within 10 s — a stalled body with a 408.
fn half_open_connections_do_not_stop_a_normal_client(addr: &str, name: &str) {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let opened = Instant::now();
    let held: Vec<(usize, std::net::TcpStream)> = (0..1000)
        .map(|i| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            let _ = match i % 3 {
                0 => Ok(()),
                1 => stream.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: g\r\n"),
                _ => stream.write_all(
                    b"POST /v1/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"",
                ),
            };
            (i % 3, stream)
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let normal = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(addr.parse().unwrap()).await.unwrap().into_std().unwrap()
    });
    normal.set_nonblocking(false).unwrap();
    let body = format!(r#"{{"model":"{name}","prompt":"hi","max_tokens":2,"temperature":0}}"#);
    let (status, _, answer) =
        infergrid_e2e::http::exchange_on(normal, &post_request("/v1/completions", None, &body));
    assert_eq!(status, 200, "a normal client behind 1,000 half-open connections: {answer}");
    let mut stalled_bodies = Vec::new();
    for (kind, mut stream) in held {
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if kind == 2 && !answer.is_empty() {
            stalled_bodies.push(String::from_utf8_lossy(&answer).into_owned());
        }
    }
    let closed = opened.elapsed();
    assert!(closed < Duration::from_secs(10), "the last held connection closed after {closed:?}");
    assert!(!stalled_bodies.is_empty(), "no stalled body was answered");
    assert!(stalled_bodies.iter().all(|a| a.starts_with("HTTP/1.1 408")), "{stalled_bodies:?}");
    eprintln!(
        "1,000 half-open connections: a client from 127.0.0.2 served 200; all closed after {:.1} s, {} stalled bodies answered 408",
        closed.as_secs_f64(),
        stalled_bodies.len()
    );
}
