//! `gateway --cross-check` with no validators running: a node skipping its block's work
//! ("lazy") on every answer is outvoted on each hop by its witness and a referee, so users
//! get exactly the model's greedy output; the gateway counts the disputes it settled.

use infergrid_e2e::http::get;
use infergrid_e2e::models::{import, local_greedy, make_checkpoint};
use infergrid_e2e::procs::{SWARM, devnet_with, stream_completion};

/// The lazy node: operator 1 serves block 1 (of 3), as do operators 4 and 7, dearer (the
/// devnet prices operator i at i + 1 units, and price decides every route here), so the
/// lazy node is every session's primary for block 1, operator 4 its witness, 7 the referee.
const LAZY: usize = 1;
const PROMPT: &str = "the quick brown fox";
const TOKENS: usize = 24;

#[test]
fn a_cross_checked_user_gets_the_honest_output_through_a_lazy_node() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "3", "--seed", "21"]).unwrap();
    let model = import(&hf, &dir.path().join("model"), 3).unwrap();
    let cheat = format!("{LAZY}:lazy");
    let args = ["--nodes", "9", "--api", "127.0.0.1:0", "--wei-per-ms", "1000"];
    let args = [&args[..], &["--cross-check", "--testing-cheat", &cheat]].concat();
    let (_devnet, manifest, _) = devnet_with(dir.path(), model.to_str().unwrap(), &args);
    let api = manifest["api_url"].as_str().unwrap();
    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;
    let (expected, _) = local_greedy(&model, PROMPT, TOKENS).unwrap();
    assert_eq!(expected.len(), TOKENS, "the fixture stops early after {PROMPT:?}");

    let body = serde_json::json!({
        "model": name, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0
    });
    for _ in 0..3 {
        let stream = stream_completion(api, &body);
        assert!(stream.error.is_none(), "{stream:?}");
        assert_eq!(
            stream.token_ids, expected,
            "{} differs from the local greedy output",
            stream.id
        );
    }

    let authority = api.trim_start_matches("http://").trim_end_matches("/v1");
    // The routing report, whatever the status (503 while pings to some node are pending).
    let (_, health) = get(authority, "/healthz");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let checks = &health["routing"]["cross_check"];
    eprintln!("the gateway's cross-checks: {checks}");
    // The lazy node answers every step wrong: each session's first step through it is
    // disputed for all three rounds before the referee settles it, and the node is caught.
    assert!(checks["disputes_total"].as_u64() >= Some(3), "{checks}");
    assert!(checks["caught_total"].as_u64() >= Some(1), "{checks}");
    let log = std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
    let refereed = log.lines().filter(|l| l.contains("refereed the dispute")).count();
    let handed = log.lines().filter(|l| l.contains("its witness") && l.contains("takes over"));
    assert!(refereed >= 1, "no dispute went to a referee");
    assert!(handed.count() >= 1, "the lazy node kept its hop");
}
