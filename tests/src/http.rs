//! Raw HTTP/1.1 against a gateway: for what an SDK would hide (status lines, headers, bodies
//! cut short) and for reading `/healthz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP/1.1 exchange on a fresh connection: the status, the headers (lower-cased names)
/// and the body, read until the server closes.
pub fn exchange(addr: &str, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    exchange_on(TcpStream::connect(addr).unwrap(), request)
}

/// [`exchange`] on a connection already open.
pub fn exchange_on(mut stream: TcpStream, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(request).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

pub fn post_request(path: &str, key: Option<&str>, body: &str) -> Vec<u8> {
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `/healthz`: 200, or 503 while some block has no usable peer (the body says which).
/// `GET path` on `addr`: the status and the body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: infergrid\r\nConnection: close\r\n\r\n");
    let (status, _, body) = exchange(addr, request.as_bytes());
    (status, body)
}

/// The value of the sample `series` (name and labels, exactly as exposed) in a Prometheus
/// text exposition, or `None` if it is not there.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Waits until the gateway at `api` can serve every block (`/healthz` ok); how long it took.
pub fn await_servable(api: &str, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    while health(api)["status"] != "ok" {
        assert!(started.elapsed() < within, "not servable after {within:?}: {}", health(api));
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

/// A greedy, whole (not streamed) completion of `prompt` from the gateway at `api`.
pub fn complete(api: &str, model: &str, prompt: &str, max_tokens: usize) -> serde_json::Value {
    let body = serde_json::json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0
    });
    let (status, _, answer) =
        exchange(api, &post_request("/v1/completions", None, &body.to_string()));
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap()
}

pub fn health(addr: &str) -> serde_json::Value {
    let request = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n";
    let (status, _, body) = exchange(addr, request);
    assert!(status == 200 || status == 503, "{status}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Block-tokens the gateway has metered to all nodes, as of its last finished request.
pub fn metered(addr: &str) -> u64 {
    health(addr)["routing"]["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["metered_block_tokens"].as_u64().unwrap())
        .sum()
}
