//! The trust loop as it runs: `infergrid devnet` with six node processes (three blocks, two
//! nodes each), three `infergrid validator run` processes and short epochs. One node cheats;
//! the validators challenge every node through the swarm as paid traffic, report the cheat
//! with its evidence, vote by re-executing it, and the chain slashes and jails it, while the
//! honest nodes are scored above neutral. Everything is read back through `cast` and
//! `infergrid audit`, independently of the validators' own logs.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use infergrid::devnet::Role;
use infergrid_e2e::dev;
use infergrid_e2e::http::get;
use infergrid_e2e::models::{import, local_greedy, make_checkpoint, teacher_forced_greedy};
use infergrid_e2e::procs::{
    Proc, SWARM, Streamed, binary, devnet_with, free_port, post, stream_completion,
};
use infergrid_e2e::proxy::HangingProxy;

const EPOCH_SECS: u64 = 20;
/// The node `--testing-cheat` names: operator 1 serves block 1 mod 3 = 1, a middle block, so
/// a lazy node has a block to skip; operator 4 serves it too, dearer (the devnet prices
/// operator i at i + 1 units) and the gateway is told to let price decide every route (it
/// weighs latency and reputation too, and measured compute swings by tens of milliseconds on
/// a loaded machine), so the gateway routes users through the cheater until it is jailed,
/// then through operator 4.
const CHEAT: usize = 1;

/// Runs `scenario`, and once more on a fresh devnet if anvil stopped answering during it.
/// Anvil 1.7 can deadlock when a block is mined while requests read its state (a gdb
/// backtrace showed `do_mine_block` waiting for readers that were all parked); no client
/// recovers from that, and these scenarios mine and read all the time. A stalled anvil shows
/// as a read that times out or, once its accept backlog is full, as a connection that does.
/// Any other failure fails the test at once.
fn once_more_if_anvil_stalls(scenario: impl Fn()) {
    let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&scenario)) else {
        return;
    };
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    let stalled = ["operation timed out", "Connection timed out"];
    if !stalled.iter().any(|symptom| message.contains(symptom)) {
        std::panic::resume_unwind(panic);
    }
    eprintln!("anvil stopped answering (its deadlock under concurrent mining); once more");
    scenario();
}

/// `cast call` on the devnet at the latest block: each word of the answer.
fn cast_call(rpc: &str, to: &str, signature: &str, args: &[String]) -> Vec<String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    infergrid_e2e::cast_call(rpc, to, signature, &args, None)
}

/// A node's record as `Validation.getNodeRecord` returns it.
#[derive(Debug)]
struct Record {
    reputation_bps: u64,
    epochs_scored: u64,
    faults: u64,
    total_slashed: String,
}

struct Devnet {
    rpc: String,
    validation: String,
    registry: String,
    deployment: String,
}

impl Devnet {
    fn record(&self, operator: &str) -> Record {
        let words = cast_call(
            &self.rpc,
            &self.validation,
            "getNodeRecord(address)((uint32,uint32,uint64,uint64,uint32,uint256))",
            &[operator.to_owned()],
        );
        let number = |i: usize| words[i].parse::<u64>().unwrap();
        Record {
            reputation_bps: number(0),
            epochs_scored: number(1),
            faults: number(4),
            total_slashed: words[5].clone(),
        }
    }

    fn reputation(&self, operator: &str) -> u64 {
        let words = cast_call(
            &self.rpc,
            &self.validation,
            "reputationOf(address)(uint32)",
            &[operator.into()],
        );
        words[0].parse().unwrap()
    }

    fn active(&self, operator: &str) -> bool {
        let words =
            cast_call(&self.rpc, &self.registry, "isActive(address)(bool)", &[operator.into()]);
        words[0] == "true"
    }

    fn audit(&self, operator: &str) -> serde_json::Value {
        let out = Command::new(binary())
            .args(["audit", "--rpc-url", &self.rpc, "--deployment", &self.deployment])
            .args(["node", operator, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "audit: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A devnet of 6 node processes on a random 3-block llama, 3 validators and short epochs,
/// started with `extra` arguments; the devnet, the chain, its manifest and the folder holding
/// the model (`model/`) and the processes' log (`devnet.log`).
fn start(extra: &[&str]) -> (Proc, Devnet, serde_json::Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hf = make_checkpoint(dir.path(), "llama", &["--layers", "3", "--seed", "21"]).unwrap();
    let model = import(&hf, &dir.path().join("model"), 3).unwrap();
    let epoch = EPOCH_SECS.to_string();
    let mut args = vec!["--nodes", "6", "--validators", "3", "--epoch-secs", &epoch];
    args.extend(["--challenges-per-epoch", "8", "--api", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    let (devnet, manifest, deployment) = devnet_with(dir.path(), model.to_str().unwrap(), &args);
    let chain = Devnet {
        rpc: manifest["rpc_url"].as_str().unwrap().to_owned(),
        validation: manifest["contracts"]["validation"].as_str().unwrap().to_owned(),
        registry: manifest["contracts"]["registry"].as_str().unwrap().to_owned(),
        deployment: deployment.to_str().unwrap().to_owned(),
    };
    (devnet, chain, manifest, dir)
}

/// How users reach the cheater before it is jailed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Users {
    /// Through a cross-checking gateway (`--cross-check`): every stream is the model's greedy
    /// output, wrong answers and all.
    CrossChecked,
    /// Through a plain gateway, which moves them off the cheater once it is jailed.
    Plain,
}

/// Runs a devnet with node `CHEAT` cheating as `cheat` (`perturb:0.05`, `lazy`), users
/// streaming through its gateway all along, and checks the whole loop; returns after the
/// honest nodes are scored.
fn convicts(cheat: &str, users: Users) {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let cheat_spec = format!("{CHEAT}:{cheat}");
    // 1 wei per microsecond: the price gap between the cheater and operator 4 outweighs
    // seconds of latency.
    let mut args = vec!["--testing-cheat", &cheat_spec, "--wei-per-ms", "1000"];
    if users == Users::CrossChecked {
        args.push("--cross-check");
    }
    let (_devnet, chain, manifest, dir) = start(&args);
    let model = dir.path().join("model");
    let operators: Vec<String> =
        (0..6).map(|i| dev(Role::Operator, i).address.to_string()).collect();
    let cheater = &operators[CHEAT];
    assert_eq!(chain.reputation(cheater), 5_000, "neutral before any epoch is scored");
    let name = infergrid::model::ModelManifest::load(&model).unwrap().name;
    let api = manifest["api_url"].as_str().unwrap();
    // Users stream through the gateway all along: the cheapest route runs through the cheater.
    let streams = UserStreams::start(api, &name);

    // Epoch 0 has no committed challenge set (roots are committed before an epoch begins):
    // the first challenged epoch is the one after the devnet came up. Conviction is due
    // within three challenged epochs.
    let deadline = started + Duration::from_secs(EPOCH_SECS * 5);
    while chain.active(cheater) {
        assert!(Instant::now() < deadline, "the {cheat} node was not convicted within 3 epochs");
        std::thread::sleep(Duration::from_secs(2));
    }
    let convicted_after = started.elapsed().as_secs_f64();
    let log = || std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
    match users {
        Users::CrossChecked => {
            check_cross_checked_streams(&log(), &model, &streams.stop());
            let authority = api.trim_start_matches("http://").trim_end_matches("/v1");
            // The routing report, whatever the status (503 while a dispute has left the
            // cheater's block without a usable node for a moment).
            let (_, health) = get(authority, "/healthz");
            let health: serde_json::Value = serde_json::from_str(&health).unwrap();
            let checks = &health["routing"]["cross_check"];
            eprintln!("the gateway's cross-checks: {checks}");
            assert_eq!(checks["enabled"], true, "{checks}");
            assert!(checks["caught_total"].as_u64() >= Some(1), "{checks}");
        }
        Users::Plain => {
            // The gateway sees the jail at its next directory refresh (every 5 s) and moves the
            // streams running through the cheater off it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !log().lines().any(moved_off) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
            }
            check_streams_moved_off_the_cheater(&log(), &model, &streams.stop(), cheat == "lazy");
        }
    }
    let record = chain.record(cheater);
    eprintln!("{cheat} node convicted {convicted_after:.0} s after start: {record:?}");
    assert!(record.faults >= 1, "{record:?}");
    // The validators' own count, scraped from their /metrics: the wrong answers they judged
    // and the reports they filed and voted guilty on stand behind every fault on-chain.
    let log = std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
    assert_no_key_in(&log);
    let counted = validator_counts(&log);
    eprintln!("validators' metrics: {counted:?}");
    assert!(counted.sessions_completed >= 1.0 && counted.answers_right >= 1.0, "{counted:?}");
    assert!(counted.answers_wrong >= 1.0, "{counted:?}");
    assert!(counted.reports_filed >= record.faults as f64, "{counted:?} vs {record:?}");
    assert!(counted.votes_guilty >= 1.0, "{counted:?}");
    assert_ne!(record.total_slashed, "0", "{record:?}");
    assert_eq!(chain.reputation(cheater), 0, "cast reads a convicted node's reputation as 0");
    let audit = chain.audit(cheater);
    assert_eq!(audit["node"]["reputation_bps"], 0, "{audit}");
    // The auditor's per-epoch view names the epoch of the conviction.
    let epochs = audit["epochs"].as_array().expect("epochs");
    assert!(
        epochs.iter().any(|e| e["reports"].as_u64() >= Some(1) && e["guilty"].as_u64() >= Some(1)),
        "{epochs:?}"
    );

    // Honest nodes: scored above neutral by the validators' revealed results, never slashed.
    let honest: Vec<&String> = operators.iter().filter(|o| *o != cheater).collect();
    let deadline = Instant::now() + Duration::from_secs(EPOCH_SECS * 6);
    loop {
        let records: Vec<Record> = honest.iter().map(|o| chain.record(o)).collect();
        for record in &records {
            assert_eq!((record.faults, record.total_slashed.as_str()), (0, "0"), "{records:?}");
        }
        if records.iter().all(|r| r.epochs_scored >= 1 && r.reputation_bps > 5_000) {
            eprintln!("honest nodes scored: {records:?}");
            let audit = chain.audit(honest[0]);
            let scored = audit["epochs"].as_array().expect("epochs").iter().any(|e| {
                e["score_bps"].as_u64() == Some(10_000) && e["revealed"].as_u64() >= Some(2)
            });
            assert!(scored, "an epoch finalized at 10000 bps: {}", audit["epochs"]);
            break;
        }
        assert!(Instant::now() < deadline, "honest nodes not all scored: {records:?}");
        std::thread::sleep(Duration::from_secs(2));
    }

    // Users are routed around the jailed node: greedy output through the gateway matches the
    // model run in one process.
    let prompt = "the quick brown fox";
    let (status, body) = post(
        &format!("{api}/completions"),
        &serde_json::json!({"model": name, "prompt": prompt, "max_tokens": 16, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let remote: Vec<u32> = serde_json::from_value(body["choices"][0]["token_ids"].clone()).unwrap();
    let (expected, _) = local_greedy(&model, prompt, 16).unwrap();
    assert_eq!(remote, expected, "the gateway's greedy output differs from the local run");
}

/// No dev account's private key, in any spelling, appears in the devnet's log (every node,
/// the gateway and the validators, each holding keys).
fn assert_no_key_in(log: &str) {
    let log = log.to_ascii_lowercase();
    let roles = [Role::Deployer, Role::Operator, Role::Validator, Role::Payer, Role::Treasury];
    for role in roles {
        for account in infergrid::devnet::accounts_with(role) {
            let key = hex::encode(account.private_key.as_slice());
            assert!(
                !log.contains(&key),
                "the private key of {role:?} {} is logged",
                account.address
            );
        }
    }
}

/// The validators' metrics, summed over every validator of the devnet.
#[derive(Debug, Default)]
struct ValidatorCounts {
    sessions_completed: f64,
    answers_right: f64,
    answers_wrong: f64,
    reports_filed: f64,
    votes_guilty: f64,
}

/// Scrapes the `/metrics` of every validator the devnet log names and sums the counts.
fn validator_counts(log: &str) -> ValidatorCounts {
    let urls: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("validator "))
        .filter_map(|l| l.split_once("metrics on http://")?.1.split_once("/metrics"))
        .map(|(address, _)| address)
        .collect();
    assert_eq!(urls.len(), 3, "every validator serves its metrics: {urls:?}");
    let mut counts = ValidatorCounts::default();
    for address in urls {
        let (status, text) = infergrid_e2e::http::get(address, "/metrics");
        assert_eq!(status, 200, "{text}");
        let at = |series: &str| infergrid_e2e::http::sample(&text, series).unwrap_or(0.0);
        counts.sessions_completed +=
            at(r#"infergrid_validator_challenge_sessions_total{outcome="completed"}"#);
        counts.answers_right += at(r#"infergrid_validator_answers_judged_total{outcome="right"}"#);
        counts.answers_wrong += at(r#"infergrid_validator_answers_judged_total{outcome="wrong"}"#);
        counts.reports_filed += at(r#"infergrid_validator_fault_reports_total{outcome="filed"}"#);
        counts.votes_guilty += at(r#"infergrid_validator_fault_votes_total{outcome="guilty"}"#);
    }
    counts
}

/// What the users stream: a prompt the fixture continues for all of `USER_TOKENS`.
const USER_PROMPT: &str = "the quick brown fox";
const USER_TOKENS: usize = 200;
/// Users streaming at once.
const USERS: usize = 3;
/// How the gateway logs a failover off a node that left the directory: found gone before a
/// step was sent, or, when the directory refreshed while the step was in flight, found by the
/// answer's signature check no longer naming a registered operator.
const LEFT: [&str; 2] = [
    "failing over: left the directory",
    "failing over: invalid answer: no registered operator is known for the peer",
];

/// Whether a gateway log line is a failover off a node that left the directory.
fn moved_off(line: &str) -> bool {
    line.starts_with("gateway | ") && LEFT.iter().any(|reason| line.contains(reason))
}

/// Users streaming greedy completions through the devnet's gateway, back to back.
struct UserStreams {
    stop: Arc<AtomicBool>,
    users: Vec<JoinHandle<Vec<Streamed>>>,
}

impl UserStreams {
    fn start(api: &str, model: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let body = serde_json::json!({
            "model": model, "prompt": USER_PROMPT, "max_tokens": USER_TOKENS, "temperature": 0
        });
        let users = (0..USERS)
            .map(|_| {
                let (api, body, stop) = (api.to_owned(), body.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut streams = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        streams.push(stream_completion(&api, &body));
                    }
                    streams
                })
            })
            .collect();
        Self { stop, users }
    }

    /// Lets every user finish the stream it is reading; every stream read.
    fn stop(self) -> Vec<Streamed> {
        self.stop.store(true, Ordering::SeqCst);
        self.users.into_iter().flat_map(|user| user.join().unwrap()).collect()
    }
}

/// The streams of a cross-checking gateway: every one completed and is identical to the
/// model's greedy output run in one process, though the cheater perturbed answers to some of
/// them (its log names the sessions).
fn check_cross_checked_streams(log: &str, model: &Path, streams: &[Streamed]) {
    let (expected, _) = local_greedy(model, USER_PROMPT, USER_TOKENS).unwrap();
    let node = format!("node {CHEAT} | ");
    let perturbed_in = |id: &str| {
        let marker = format!("TESTING: perturbed the answer to session {} ", &id[5..]);
        log.lines().filter(|l| l.starts_with(&node) && l.contains(&marker)).count()
    };
    let mut through_wrong_answers = 0;
    for stream in streams {
        assert!(stream.error.is_none(), "a user stream broke: {stream:?}");
        assert_eq!(
            stream.token_ids, expected,
            "{} differs from the local greedy output",
            stream.id
        );
        let perturbed = perturbed_in(&stream.id);
        if perturbed > 0 {
            eprintln!("user stream {}: identical despite {perturbed} perturbed answers", stream.id);
            through_wrong_answers += 1;
        }
    }
    eprintln!(
        "{} user streams, all identical to the local greedy output; {through_wrong_answers} of \
         them were given perturbed answers",
        streams.len()
    );
    assert!(through_wrong_answers >= 1, "the cheater perturbed no user's answer");
}

/// The user streams that ran through the cheater when it was jailed: the gateway moved each
/// off it mid-stream (its log names the session and position) and each completed. Every token
/// decided before the cheater's first wrong answer in the session is the model's greedy output
/// run in one process; every token decided after the move is the honest model's greedy choice
/// given the stream so far (teacher-forced); so a stream the cheater answered right throughout
/// is identical to the local greedy output. Tokens decided between a wrong answer and the
/// move came from a node later convicted for it: they are reported, not asserted. A lazy
/// cheater answers every step wrong; a perturbing one logs the answers it perturbed.
fn check_streams_moved_off_the_cheater(log: &str, model: &Path, streams: &[Streamed], lazy: bool) {
    for stream in streams {
        assert!(stream.error.is_none(), "a user stream broke: {stream:?}");
        assert!(stream.finish_reason.is_some(), "a user stream never finished: {stream:?}");
    }
    // (session, position) of every failover off a node that left the directory.
    let moved: Vec<(u64, usize)> = log
        .lines()
        .filter(|l| moved_off(l))
        .filter_map(|l| {
            let (session, rest) = l.split_once("session ")?.1.split_once(" position ")?;
            Some((session.parse().ok()?, rest.split_once(':')?.0.parse().ok()?))
        })
        .collect();
    let (expected, _) = local_greedy(model, USER_PROMPT, USER_TOKENS).unwrap();
    assert_eq!(expected.len(), USER_TOKENS, "the fixture stops early after {USER_PROMPT:?}");
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let prompt_len =
        infergrid::generate::Prompt::Text(USER_PROMPT).encode(&tokenizer).unwrap().len();
    let mut mid_stream = 0;
    for (session, moved_at) in moved {
        let id = format!("cmpl-{session}");
        let stream = streams.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no {id}"));
        let (node, marker) = (
            format!("node {CHEAT} | "),
            format!("TESTING: perturbed the answer to session {session} position "),
        );
        let perturbed: Vec<usize> = log
            .lines()
            .filter(|l| l.starts_with(&node))
            .filter_map(|l| l.split_once(marker.as_str()))
            .filter_map(|(_, rest)| rest.split(' ').next()?.parse().ok())
            .collect();
        let first_wrong = match lazy {
            true => 0,
            false => perturbed.iter().min().copied().unwrap_or(usize::MAX),
        };
        let honest = teacher_forced_greedy(model, USER_PROMPT, &stream.token_ids).unwrap();
        // A token a wrong answer flipped may lead to an end-of-sequence; otherwise every
        // stream runs its whole length.
        let right_throughout = first_wrong == usize::MAX;
        if right_throughout || stream.finish_reason.as_deref() != Some("stop") {
            assert_eq!(stream.token_ids.len(), USER_TOKENS, "{id} came short: {stream:?}");
        }
        for (i, &token) in stream.token_ids.iter().enumerate() {
            // The step that decided token i: the prefill, then one decode step per token.
            let step = if i == 0 { 0 } else { prompt_len + i - 1 };
            if step < first_wrong {
                assert_eq!(token, expected[i], "{id}: token {i} differs before any wrong answer");
            }
            if step >= moved_at {
                assert_eq!(
                    token, honest[i],
                    "{id}: token {i} after the move is not the greedy one"
                );
            }
        }
        let identical = stream.token_ids == expected;
        eprintln!(
            "user stream {id}: moved off the jailed node at position {moved_at}; {} of its \
             answers wrong; identical to the local greedy output: {identical}",
            if lazy { "all".to_owned() } else { perturbed.len().to_string() }
        );
        if right_throughout {
            assert!(identical, "{id} differs from the local greedy output");
        }
        mid_stream += usize::from(moved_at > 0);
    }
    let failovers: Vec<&str> = log.lines().filter(|l| l.contains("failing over")).collect();
    assert!(
        mid_stream >= 1,
        "no user stream was running through the node when it was jailed ({} streams); \
         failovers: {failovers:#?}",
        streams.len()
    );
}

#[test]
fn validators_convict_a_node_perturbing_five_percent_of_answers() {
    once_more_if_anvil_stalls(|| {
        convicts("perturb:0.05", Users::CrossChecked);
    });
}

#[test]
fn validators_convict_a_lazy_node() {
    once_more_if_anvil_stalls(|| {
        convicts("lazy", Users::Plain);
    });
}

/// A lying validator (perturbed expected answers, forged evidence published first) reports
/// honest nodes: the others refuse the forged evidence, re-execute the genuine one, vote
/// innocent, and no honest node is slashed; the report is closed without a conviction.
#[test]
fn a_lying_validator_is_outvoted_and_no_honest_node_is_slashed() {
    once_more_if_anvil_stalls(|| {
        let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
        let (_devnet, chain, _manifest, dir) = start(&["--testing-false-reporter", "0"]);
        let count = || {
            let words =
                cast_call(&chain.rpc, &chain.validation, "faultReportCount()(uint256)", &[]);
            words[0].parse::<u64>().unwrap()
        };
        // (status: 0 pending, 1 guilty, 2 rejected; guilty stake; innocent stake)
        let report = |id: u64| {
            let words = cast_call(
                &chain.rpc,
                &chain.validation,
                "getFaultReport(uint256)((address,address,uint64,uint64,bytes32,uint256,uint256,uint256,uint8))",
                &[id.to_string()],
            );
            (words[8].parse::<u8>().unwrap(), words[6].clone(), words[7].clone())
        };
        let deadline = Instant::now() + Duration::from_secs(EPOCH_SECS * 6);
        while count() == 0 {
            assert!(Instant::now() < deadline, "the lying validator reported nothing");
            std::thread::sleep(Duration::from_secs(2));
        }
        // The two honest validators hold 2/3 of the stake, one basis point short of the devnet's
        // quorum: their innocent votes cannot reject the report outright, and it is closed as
        // rejected when its vote window (one epoch) runs out.
        let closes = Instant::now() + Duration::from_secs(EPOCH_SECS * 3);
        let (status, guilty, innocent) = loop {
            let (status, guilty, innocent) = report(1);
            if status != 0 {
                break (status, guilty, innocent);
            }
            assert!(Instant::now() < closes, "report 1 still pending");
            std::thread::sleep(Duration::from_secs(2));
        };
        eprintln!("report 1: status {status}, guilty stake {guilty}, innocent stake {innocent}");
        assert_eq!(status, 2, "rejected");
        assert_eq!(innocent, "20000000000000000000000", "both honest validators voted innocent");
        for i in 0..6 {
            let operator = dev(Role::Operator, i).address.to_string();
            let record = chain.record(&operator);
            assert_eq!((record.faults, record.total_slashed.as_str()), (0, "0"), "node {i}");
            assert!(chain.active(&operator), "node {i} jailed");
        }
        let log = std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
        assert!(log.contains("refused: the evidence does not match the report"), "{log}");
        assert!(log.contains("voting innocent"), "{log}");
    });
}

/// A validator that commits its results and never reveals them stalls every round it took
/// part in (2/3 of the stake is one basis point short of the devnet's quorum): no node's
/// score moves on a minority's word, no node is slashed, and the other validators penalize the
/// withholder for each reveal it missed.
#[test]
fn a_validator_withholding_its_reveals_is_penalized_and_moves_nothing() {
    once_more_if_anvil_stalls(|| {
        let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
        let (_devnet, chain, _manifest, dir) = start(&["--testing-silent-validator", "0"]);
        let silent = dev(Role::Validator, 0).address.to_string();
        // (missedReveals, dissents, totalPenalized)
        let record = || {
            cast_call(
                &chain.rpc,
                &chain.validation,
                "getValidatorRecord(address)((uint32,uint32,uint256))",
                std::slice::from_ref(&silent),
            )
        };
        let deadline = Instant::now() + Duration::from_secs(EPOCH_SECS * 6);
        let missed = loop {
            let words = record();
            let missed = words[0].parse::<u64>().unwrap();
            if missed > 0 {
                break missed;
            }
            assert!(Instant::now() < deadline, "the withheld reveals were never penalized");
            std::thread::sleep(Duration::from_secs(2));
        };
        eprintln!("the silent validator was penalized for {missed} missed reveals: {:?}", record());
        for i in 0..6 {
            let operator = dev(Role::Operator, i).address.to_string();
            let record = chain.record(&operator);
            assert_eq!((record.faults, record.total_slashed.as_str()), (0, "0"), "node {i}");
            assert_eq!(record.epochs_scored, 0, "node {i}: scored without a quorum: {record:?}");
            assert_eq!(chain.reputation(&operator), 5_000, "node {i} left neutral");
        }
        let log = std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
        assert!(log.contains("never revealed it; the round did not finalize: penalized"), "{log}");
    });
}

/// A validator whose RPC endpoint stops answering mid-epoch (a proxy freezing every
/// connection, open or new, for an epoch and a half): it cannot pay for its challenges, commit
/// its next challenge root or its results, and says so in its log; nothing it could not check
/// is counted against a node, no node is slashed or jailed, and once the endpoint answers
/// again it challenges, commits and reveals as before, so the honest nodes are scored.
#[test]
fn a_validator_losing_its_rpc_mid_epoch_slashes_nobody_and_recovers() {
    once_more_if_anvil_stalls(|| {
        let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
        let anvil_port = free_port();
        let proxy = HangingProxy::start(&format!("127.0.0.1:{anvil_port}"));
        let (port, rpc) = (anvil_port.to_string(), format!("0=http://{}", proxy.addr));
        let (_devnet, chain, _manifest, dir) =
            start(&["--port", &port, "--testing-validator-rpc", &rpc]);
        let log = || std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
        let outage = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| l.starts_with("validator 0 | "))
                .filter(|l| l.contains("refused") || l.contains("failed") || l.contains("stopped"))
                .map(str::to_owned)
                .collect()
        };
        // Mid-epoch: validator 0 has committed the challenge root of the next epoch.
        let deadline = Instant::now() + Duration::from_secs(EPOCH_SECS * 3);
        while !log()
            .lines()
            .any(|l| l.starts_with("validator 0 | ") && l.contains("committed challenge root"))
        {
            assert!(Instant::now() < deadline, "validator 0 never committed a challenge root");
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(outage(&log()).is_empty(), "failures before the outage: {:?}", outage(&log()));
        proxy.hang(true);
        std::thread::sleep(Duration::from_secs(EPOCH_SECS * 3 / 2));
        proxy.hang(false);
        let said = outage(&log());
        eprintln!("validator 0 during the outage:\n{}", said.join("\n"));
        assert!(!said.is_empty(), "the outage left no log line");

        // Recovery: every node scored above neutral needs all three validators' reveals (2/3 of
        // the stake is one basis point short of the quorum), validator 0's included.
        let deadline = Instant::now() + Duration::from_secs(EPOCH_SECS * 6);
        loop {
            let records: Vec<Record> =
                (0..6).map(|i| chain.record(&dev(Role::Operator, i).address.to_string())).collect();
            for (i, record) in records.iter().enumerate() {
                assert_eq!((record.faults, record.total_slashed.as_str()), (0, "0"), "node {i}");
            }
            if records.iter().all(|r| r.epochs_scored >= 1 && r.reputation_bps > 5_000) {
                eprintln!("after the outage, every node scored: {records:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every node scored after the outage: {records:?}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        for i in 0..6 {
            assert!(chain.active(&dev(Role::Operator, i).address.to_string()), "node {i} jailed");
        }
        let log = log();
        let recovered = log
            .lines()
            .filter(|l| l.starts_with("validator 0 | "))
            .any(|l| l.contains("reveal of the result") && l.contains("done"));
        assert!(recovered, "validator 0 never revealed a result after the outage");
    });
}
