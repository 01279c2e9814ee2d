//! `/metrics` of a gateway and of its nodes after N requests: the request, token and step
//! counters equal what N requests of known lengths make, and the wei figures equal the
//! node's live ledger, the gateway's vouchers and, after a close, what `cast` reads on-chain.

use std::process::Command;
use std::time::{Duration, Instant};

use infergrid::devnet::Role;
use infergrid_e2e::http::{await_servable, exchange, get, post_request, sample};
use infergrid_e2e::procs::{SWARM, TestNet, binary, free_port};

const REQUESTS: usize = 3;

fn scrape(addr: &str) -> String {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// Bytes libp2p carried (`libp2p_bandwidth_bytes_total`, every protocol stack), (in, out);
/// checks the exposition is one OpenMetrics document, its own metrics and libp2p's.
fn libp2p_traffic(exposition: &str) -> (f64, f64) {
    assert_eq!(exposition.matches("# EOF").count(), 1, "{exposition}");
    assert!(exposition.ends_with("# EOF\n"), "{exposition}");
    let bytes = |direction: &str| -> f64 {
        exposition
            .lines()
            .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{"))
            .filter(|l| l.contains(&format!("direction=\"{direction}\"")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    (bytes("Inbound"), bytes("Outbound"))
}

fn status(addr: &str) -> serde_json::Value {
    let (code, body) = get(addr, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn wei(value: &serde_json::Value) -> f64 {
    value.as_str().unwrap().parse::<u128>().unwrap() as f64
}

#[test]
fn metrics_count_what_requests_did_and_match_the_ledger_and_the_chain() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::start(dir.path());
    let (swarm, manifest, rpc) = (net.swarm(), &net.manifest, net.rpc.as_str());
    let http: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let (_nodes, node_logs): (Vec<_>, Vec<_>) = (0..3)
        .map(|i| {
            let blocks = i.to_string();
            swarm.node_logged(i, &blocks, &["--http", &http[i], "--redeem-check-secs", "1"])
        })
        .unzip();
    let api = format!("127.0.0.1:{}", free_port());
    let (_gateway, gateway_log) = swarm.gateway_logged(0, &api, &[], &[]);
    await_servable(&api, Duration::from_secs(30));

    // N completions of different lengths, one of them streamed.
    let name = net.model_name();
    let (mut prompt_tokens, mut completion_tokens, mut ids) = (0, Vec::new(), Vec::new());
    for i in 0..REQUESTS {
        let stream = i == REQUESTS - 1;
        let body = serde_json::json!({
            "model": name, "prompt": format!("request number {i}"), "max_tokens": 3 + i,
            "temperature": 0, "stream": stream, "stream_options": if stream { serde_json::json!({"include_usage": true}) } else { serde_json::Value::Null },
        });
        let (code, _, answer) =
            exchange(&api, &post_request("/v1/completions", None, &body.to_string()));
        assert_eq!(code, 200, "{answer}");
        let first = answer.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or(&answer);
        let id = serde_json::from_str::<serde_json::Value>(first).unwrap()["id"].clone();
        ids.push(id.as_str().unwrap().to_owned());
        let usage = if stream {
            let last = answer
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .rfind(|d| *d != "[DONE]")
                .unwrap();
            serde_json::from_str::<serde_json::Value>(last).unwrap()["usage"].clone()
        } else {
            serde_json::from_str::<serde_json::Value>(&answer).unwrap()["usage"].clone()
        };
        prompt_tokens += usage["prompt_tokens"].as_u64().unwrap();
        completion_tokens.push(usage["completion_tokens"].as_u64().unwrap());
    }
    let generated: u64 = completion_tokens.iter().sum();
    assert_eq!(completion_tokens, [3, 4, 5], "max_tokens reached, no EOS in the random model");
    let n = REQUESTS as f64;

    // The gateway: requests, tokens, one first token per request, the rest inter-token.
    let gateway = scrape(&api);
    let at = |series: &str| {
        sample(&gateway, series).unwrap_or_else(|| panic!("no {series} in:\n{gateway}"))
    };
    assert_eq!(
        at(r#"infergrid_gateway_requests_total{endpoint="/v1/completions",status="200"}"#),
        n
    );
    assert_eq!(at("infergrid_gateway_prompt_tokens_total"), prompt_tokens as f64);
    assert_eq!(at("infergrid_gateway_completion_tokens_total"), generated as f64);
    assert_eq!(at("infergrid_gateway_time_to_first_token_seconds_count"), n);
    assert_eq!(at("infergrid_gateway_inter_token_seconds_count"), generated as f64 - n);
    assert_eq!(at("infergrid_gateway_failovers_total"), 0.0);
    assert!(gateway.contains("# TYPE infergrid_gateway_hop_latency_seconds histogram"));
    assert!(
        at("infergrid_gateway_peers_connected") >= 3.0,
        "the gateway is connected to the nodes"
    );
    let (inbound, outbound) = libp2p_traffic(&gateway);
    assert!(inbound > 0.0 && outbound > 0.0, "gateway libp2p bytes: {inbound} in, {outbound} out");
    assert!(gateway.contains("\nlibp2p_swarm_connections_established_total{"), "{gateway}");
    let mut vouchers_received = 0.0;

    // Each node: a prefill, k-1 decode steps and a close per request of k tokens; what it
    // metered and was vouched equals its live ledger and what the gateway signed it.
    for (i, addr) in http.iter().enumerate() {
        let node = scrape(addr);
        let at = |series: &str| {
            sample(&node, series).unwrap_or_else(|| panic!("node {i}: no {series} in:\n{node}"))
        };
        assert_eq!(at(r#"infergrid_node_steps_total{kind="prefill",outcome="ok"}"#), n);
        assert_eq!(
            at(r#"infergrid_node_steps_total{kind="decode",outcome="ok"}"#),
            generated as f64 - n
        );
        assert_eq!(at(r#"infergrid_node_steps_total{kind="close",outcome="ok"}"#), n);
        // Requests one after another: every decode step ran in an engine call of its own.
        let decoded = generated as f64 - n;
        assert_eq!(at("infergrid_node_batch_steps_sum"), decoded);
        assert_eq!(at("infergrid_node_batch_steps_count"), decoded);
        assert!(at("infergrid_node_peers_connected") >= 1.0, "node {i} is connected");
        let (inbound, outbound) = libp2p_traffic(&node);
        assert!(inbound > 0.0 && outbound > 0.0, "node {i} libp2p: {inbound} in, {outbound} out");
        vouchers_received += at("infergrid_node_vouchers_received_total");
        let ledger = status(addr);
        let totals = &ledger["totals"];
        assert_eq!(
            at("infergrid_node_metered_block_tokens"),
            totals["metered_block_tokens"].as_f64().unwrap()
        );
        assert_eq!(at("infergrid_node_vouched_wei"), wei(&totals["vouched"]));
        assert_eq!(at("infergrid_node_owed_wei"), wei(&totals["owed"]));
        let operator = ledger["operator"].as_str().unwrap();
        let signed = sample(
            &gateway,
            &format!("infergrid_gateway_node_signed_wei{{operator=\"{operator}\"}}"),
        );
        assert_eq!(
            signed,
            Some(wei(&totals["vouched"])),
            "node {i}: gateway signed vs node vouched"
        );
        let metered = sample(
            &gateway,
            &format!("infergrid_gateway_node_metered_block_tokens{{operator=\"{operator}\"}}"),
        );
        assert_eq!(metered, Some(at("infergrid_node_metered_block_tokens")), "node {i}");
    }

    // Every voucher the gateway signed went with a step a node accepted.
    assert_eq!(at("infergrid_gateway_vouchers_signed_total"), vouchers_received);

    // The log follows each request by its session id, at the default level: the gateway
    // generating, routing, signing vouchers and finishing it; every node opening the session,
    // taking its vouchers and closing it.
    let gateway_lines: Vec<String> = gateway_log.try_iter().collect();
    let node_lines: Vec<Vec<String>> = node_logs.iter().map(|l| l.try_iter().collect()).collect();
    let mentions = |lines: &[String], session: &str, what: &str| {
        lines.iter().any(|l| l.contains(&format!("session={session}")) && l.contains(what))
    };
    // Vouchers signed mid-stream too (the first to each node, with a step's route on the
    // runtime), not only those of the Close steps.
    let signed: Vec<&String> =
        gateway_lines.iter().filter(|l| l.contains("voucher signed")).collect();
    assert!(
        signed.iter().all(|l| l.contains("session=")),
        "a voucher without its session: {signed:#?}"
    );
    for id in &ids {
        let session = id.strip_prefix("cmpl-").unwrap();
        for what in ["generating", "routed", "voucher signed", "finished"] {
            assert!(
                mentions(&gateway_lines, session, what),
                "gateway: {id}: no {what:?} in {gateway_lines:#?}"
            );
        }
        for (i, lines) in node_lines.iter().enumerate() {
            for what in ["session opened", "voucher received", "session closed"] {
                assert!(
                    mentions(lines, session, what),
                    "node {i}: {id}: no {what:?} in {lines:#?}"
                );
            }
        }
    }
    let trail: Vec<&String> = gateway_lines
        .iter()
        .chain(&node_lines[1])
        .filter(|l| l.contains(&format!("session={}", ids[0].strip_prefix("cmpl-").unwrap())))
        .collect();
    eprintln!(
        "the trail of {}:\n{}",
        ids[0],
        trail.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
    );

    // The payer closes its channels: each node redeems its latest voucher, and what it
    // reports redeemed equals what the channel paid on-chain.
    let payer = infergrid_e2e::dev(Role::Payer, 0).private_key.to_string();
    let closed = Command::new(binary())
        .args(["channels", "close", "--rpc-url", rpc, "--deployment", swarm.deployment])
        .env("INFERGRID_PAYER_KEY", &payer)
        .output()
        .unwrap();
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    let channels = manifest["contracts"]["channels"].as_str().unwrap();
    for (i, addr) in http.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ledger = loop {
            let ledger = status(addr);
            if ledger["totals"]["redeemed"] == ledger["totals"]["vouched"] {
                break ledger;
            }
            assert!(Instant::now() < deadline, "node {i} never redeemed: {ledger}");
            std::thread::sleep(Duration::from_millis(250));
        };
        let mut paid_on_chain = 0u128;
        for channel in ledger["channels"].as_array().unwrap() {
            let signature = "getChannel(uint256)((address,uint64,address,uint128,uint128))";
            let id = channel["channel"].as_str().unwrap();
            let words = infergrid_e2e::cast_call(rpc, channels, signature, &[id], None);
            paid_on_chain += words[4].parse::<u128>().unwrap();
        }
        let node = scrape(addr);
        assert_eq!(
            sample(&node, "infergrid_node_redeemed_wei"),
            Some(paid_on_chain as f64),
            "node {i}"
        );
        assert_eq!(
            sample(&node, "infergrid_node_redeemed_by_this_run_wei_total"),
            Some(paid_on_chain as f64)
        );
        assert!(sample(&node, "infergrid_node_redemptions_total").unwrap() >= 1.0);
        eprintln!(
            "node {i}: metered {}, vouched = redeemed = {paid_on_chain} wei (cast)",
            ledger["totals"]["metered_block_tokens"]
        );
    }
}
