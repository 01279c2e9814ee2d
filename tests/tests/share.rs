//! Weights through the swarm, with real `infergrid node` processes on a devnet: nodes with
//! empty disks fetch their blocks from seeders (pieces checked against the model id) and
//! serve them; a seeder sending bad pieces is refused and banned; a fetch killed halfway
//! resumes with only the missing pieces; bad requests and a forged manifest are refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use infergrid::model::{ModelManifest, verify_block_files};
use infergrid::net::pieces::{PieceRequest, PieceResponse, Refusal};
use infergrid_e2e::http::{await_servable, complete, health};
use infergrid_e2e::models::{import_with, local_greedy, make_checkpoint};
use infergrid_e2e::procs::{SWARM, Swarm, TestNet, binary, devnet_with};
use libp2p::{Multiaddr, PeerId};

/// A random llama with ~2 MB blocks cut into 16 KiB pieces: a hundred or more per block.
fn model(dir: &Path) -> PathBuf {
    let flags = ["--layers", "3", "--hidden", "128", "--intermediate", "512", "--vocab", "2048"];
    let hf = make_checkpoint(dir, "llama", &[&flags[..], &["--seed", "3"]].concat()).unwrap();
    import_with(&hf, &dir.join("model"), 3, &["--piece-bytes", "16384"]).unwrap()
}

fn operator_peer(net: &TestNet, index: usize) -> (PeerId, Multiaddr) {
    let peer: PeerId =
        net.manifest["roles"]["operators"][index]["peer_id"].as_str().unwrap().parse().unwrap();
    let port = usize::from(infergrid::devnet::NODE_PORT_BASE) + index;
    (peer, format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap())
}

/// `infergrid model fetch` of `blocks` into `out` (from the registry's nodes and `extra`).
fn fetch_command(net: &TestNet, blocks: &str, out: &Path, extra: &[&str]) -> Command {
    let model_id = ModelManifest::load(Path::new(&net.model)).unwrap().model_id;
    let mut command = Command::new(binary());
    command.args(["model", "fetch", "--model-id", &model_id, "--blocks", blocks, "--out"]);
    command.arg(out).args(["--rpc-url", &net.rpc, "--deployment", &net.deployment]).args(extra);
    command
}

/// Runs a fetch to its end: its stdout (the report) and stderr.
fn fetch(net: &TestNet, blocks: &str, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = fetch_command(net, blocks, out, extra).output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The figure before `label` in a fetch report, e.g. "12 bad piece(s) refused".
fn figure(report: &str, label: &str) -> usize {
    let at = report.find(label).unwrap_or_else(|| panic!("no {label:?} in {report}"));
    report[..at].split_whitespace().last().unwrap().parse().unwrap()
}

/// The fetched folder holds `blocks`' files exactly as the original does.
fn assert_same_files(fetched: &Path, original: &Path, blocks: std::ops::RangeInclusive<usize>) {
    let manifest = ModelManifest::load(fetched).unwrap();
    assert_eq!(
        manifest,
        ModelManifest { dir: fetched.into(), ..ModelManifest::load(original).unwrap() }
    );
    for block in blocks {
        verify_block_files(&manifest, &manifest.blocks[block]).unwrap();
    }
    let tokenizer = std::fs::read(fetched.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer, std::fs::read(original.join("tokenizer.json")).unwrap());
    assert!(!fetched.join(".partial").exists(), "the partial folder is cleaned up");
}

/// The acceptance run: `infergrid devnet --nodes 4 --seeders 2`. Nodes 0 and 1 hold the
/// files and serve blocks 0 and 1; nodes 2 and 3 start with empty folders, choose their
/// blocks, fetch them from the seeders, register them and are routed.
#[test]
fn empty_nodes_choose_their_blocks_fetch_them_and_serve_the_same_completion() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let extra = ["--nodes", "4", "--seeders", "2", "--api", "127.0.0.1:0"];
    let (_devnet, ready, _) = devnet_with(dir.path(), model.to_str().unwrap(), &extra);
    let log = std::fs::read_to_string(dir.path().join("devnet.log")).unwrap();
    // Blocks 0 and 1 are served (node 3, registered on block 0, is not running yet: it is
    // not heard, so it counts nothing): block 2 has nobody.
    assert!(log.contains("node 2 | auto: serving blocks 2-2"), "{log}");
    // Then every block has one server heard, so node 3 takes the first.
    assert!(log.contains("node 3 | auto: serving blocks 0-0"), "{log}");
    for (node, folder) in [(2, "node-2-model"), (3, "node-3-model")] {
        let fetched = dir.path().join("devnet").join(folder);
        let block = ModelManifest::load(&fetched).map(|m| m.blocks.len()).unwrap();
        assert!(block == 3, "node {node} holds the manifest");
        let served: Vec<usize> =
            (0..3).filter(|b| fetched.join(format!("block-{b}.weights")).exists()).collect();
        assert_eq!(served.len(), 1, "node {node} fetched one block: {served:?}");
        assert_same_files(&fetched, &model, served[0]..=served[0]);
        let line = log.lines().find(|l| l.starts_with(&format!("node {node} | fetched "))).unwrap();
        eprintln!("{line}");
        for share in log.lines().filter(|l| l.starts_with(&format!("node {node} |   from "))) {
            eprintln!("{share}");
        }
    }
    // Registered on-chain where it chose, as cast reads it.
    let rpc = ready["rpc_url"].as_str().unwrap();
    let registry = ready["contracts"]["registry"].as_str().unwrap();
    let operator = ready["roles"]["operators"][2]["address"].as_str().unwrap();
    let signature = "getNode(address)((bytes,bytes32,uint32,uint32,uint256,string[],uint256,uint256,uint64,uint64,uint64))";
    let node = infergrid_e2e::cast_call(rpc, registry, signature, &[operator], None);
    assert_eq!((node[2].as_str(), node[3].as_str()), ("2", "2"), "{node:?}");

    let api =
        ready["api_url"].as_str().unwrap().trim_start_matches("http://").trim_end_matches("/v1");
    await_servable(api, Duration::from_secs(30));
    let name = ModelManifest::load(&model).unwrap().name;
    let answer = complete(api, &name, "hello", 16);
    let (expected, _) = local_greedy(&model, "hello", 16).unwrap();
    let ids: Vec<u32> = serde_json::from_value(answer["choices"][0]["token_ids"].clone()).unwrap();
    assert_eq!(ids, expected, "the swarm's greedy ids equal the model run whole in-process");
    // Block 2 is served by node 2 alone, block 0 by node 0 and node 3.
    let route = health(api)["routing"]["route"].clone();
    let node_2 = ready["roles"]["operators"][2]["peer_id"].as_str().unwrap();
    assert!(route.to_string().contains(node_2), "routed through node 2: {route}");
    eprintln!("route {route}, completion {:?}", answer["choices"][0]["text"]);
}

#[test]
fn a_seeder_sending_bad_pieces_is_banned_and_the_fetch_completes_from_the_other() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let net = TestNet::for_model(dir.path(), &model);
    let swarm = net.swarm();
    let _honest = swarm.node(0, "0", &[]);
    let _corrupting = swarm.node(3, "0", &["--testing-corrupt-pieces", "10"]);
    let out = dir.path().join("fetched");
    let (ok, report, log) = fetch(&net, "0", &out, &[]);
    eprintln!("{log}{report}");
    assert!(ok, "{log}");
    let (honest, bad) = (operator_peer(&net, 0).0, operator_peer(&net, 3).0);
    assert!(figure(&report, "bad piece(s) refused") >= 1, "{report}");
    assert!(report.contains(&format!("banned {bad}")), "{report}");
    assert!(!report.contains(&format!("banned {honest}")), "{report}");
    assert!(log.contains(&format!("peer {bad} sent a bad piece")), "{log}");
    let (fetched, pieces) = (figure(&report, "of "), figure(&report, "pieces ("));
    assert_eq!(fetched, pieces, "every piece fetched: {report}");
    assert_same_files(&out, &model, 0..=0);
}

#[test]
fn a_fetch_killed_halfway_resumes_with_only_the_missing_pieces() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let net = TestNet::for_model(dir.path(), &model);
    let swarm = net.swarm();
    // Slow seeders (8 pieces in flight, 150 ms each: the second half takes over 1.3 s), so
    // that the fetch is still running when it is killed, even on a loaded machine.
    let slow = ["--testing-delay-ms", "150"];
    let _seeders = [swarm.node(0, "0", &slow), swarm.node(3, "0", &slow)];
    let out = dir.path().join("fetched");
    let mut first = fetch_command(&net, "0", &out, &[]).stderr(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let halfway = lines.map_while(Result::ok).find(|line| {
        line.strip_prefix("fetch: ")
            .and_then(|rest| rest.split_once("% "))
            .is_some_and(|(percent, _)| percent.parse::<u32>().is_ok_and(|p| p >= 50))
    });
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let halfway = halfway.expect("the fetch reported its progress");
    assert!(!out.join("manifest.json").exists(), "killed before the end ({halfway})");

    let (ok, report, log) = fetch(&net, "0", &out, &[]);
    eprintln!("killed at {halfway:?}; then: {report}");
    assert!(ok, "{log}");
    let (fetched, pieces) = (figure(&report, "of "), figure(&report, "pieces ("));
    let resumed = figure(&report, "already on disk");
    assert_eq!(fetched + resumed, pieces, "{report}");
    assert!(resumed * 10 >= pieces * 4, "about half was on disk already: {report}");
    assert!(fetched > 0, "the rest was fetched: {report}");
    assert_same_files(&out, &model, 0..=0);
}

#[test]
fn seeders_refuse_bad_requests_and_a_forged_manifest_is_refused() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let net = TestNet::for_model(dir.path(), &model);
    let swarm = net.swarm();
    let _seeder = swarm.node(0, "0", &[]);
    let model_id = ModelManifest::load(&model).unwrap().id().0;
    let (peer, addr) = operator_peer(&net, 0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ask = |request: Vec<u8>| {
        let asked =
            infergrid_e2e::versions::ask_over("/infergrid/pieces/1", peer, addr.clone(), request);
        runtime.block_on(asked).unwrap()
    };
    let refusal =
        |request: PieceRequest| match PieceResponse::decode(&ask(request.encode()).unwrap()) {
            Ok(PieceResponse::Refused { refusal, message }) => (refusal, message),
            other => panic!("not refused: {other:?}"),
        };
    let piece =
        |file: &str, index| PieceRequest::Piece { model: model_id, file: file.into(), index };
    let (why, message) = refusal(PieceRequest::Manifest { model: [9; 32] });
    assert_eq!(why, Refusal::UnknownModel, "{message}");
    let (why, message) = refusal(piece("block-9.weights", 0));
    assert_eq!(
        (why, message.as_str()),
        (Refusal::UnknownFile, "block-9.weights is not a file of this model")
    );
    let (why, message) = refusal(piece("../manifest.json", 0));
    assert_eq!(why, Refusal::UnknownFile, "{message}");
    let (why, message) = refusal(piece("block-0.weights", 100_000));
    assert_eq!(why, Refusal::OutOfRange, "{message}");
    assert!(message.contains("has 125 pieces"), "{message}");
    let garbage = PieceResponse::decode(&ask(vec![0x42; 40]).unwrap()).unwrap();
    assert!(
        matches!(garbage, PieceResponse::Refused { refusal: Refusal::Malformed, .. }),
        "{garbage:?}"
    );
    // A request far over its limit is cut off, not read into memory.
    let flood = ask(vec![2; 1 << 20]);
    assert!(flood.is_err(), "a 1 MiB request got an answer: {flood:?}");
    // The seeder still answers.
    let good = PieceResponse::decode(&ask(piece("block-0.onnx", 0).encode()).unwrap()).unwrap();
    assert!(matches!(good, PieceResponse::Piece(bytes) if !bytes.is_empty()));

    // A peer answering with an edited manifest (the model id it carries unchanged, another
    // model name): the fetcher derives another id from it, bans it, and has nobody else.
    let text = std::fs::read_to_string(model.join("manifest.json")).unwrap();
    let name = ModelManifest::load(&model).unwrap().name;
    let forged = PieceResponse::Manifest(text.replace(&name, "renamed").into_bytes()).encode();
    let (forger, forger_addr, _forging) = runtime
        .block_on(infergrid_e2e::versions::speaking_only("/infergrid/pieces/1", Some(forged)))
        .unwrap();
    let from = format!("{forger_addr}/p2p/{forger}");
    let out = dir.path().join("fetched");
    let (ok, _, log) = fetch(&net, "0", &out, &["--no-registry", "--fetch-from", &from]);
    assert!(!ok, "a forged manifest was taken: {log}");
    assert!(log.contains(&format!("peer {forger} sent a manifest that hashes to")), "{log}");
    assert!(log.contains("no peer sent a usable manifest"), "{log}");
    assert!(!out.join("manifest.json").exists());

    // A peer whose answer runs past the largest piece: cut off as it is read.
    let oversized = [&[2u8][..], &vec![0u8; 5 << 20]].concat();
    let speaking = infergrid_e2e::versions::speaking_only("/infergrid/pieces/1", Some(oversized));
    let (giant, giant_addr, _giant) = runtime.block_on(speaking).unwrap();
    let from = format!("{giant_addr}/p2p/{giant}");
    let (ok, _, log) = fetch(&net, "0", &out, &["--no-registry", "--fetch-from", &from]);
    assert!(!ok, "an oversized answer was taken: {log}");
    assert!(log.contains("pieces message over"), "{log}");
}

/// `--blocks auto` keeps looking: a node that chose the block nobody served moves to the
/// block whose server left, registers it and serves it.
#[test]
fn an_auto_node_moves_to_the_block_its_server_left() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let net = TestNet::for_model(dir.path(), &model);
    let swarm = net.swarm();
    let node_0 = swarm.node(0, "0", &[]);
    let _node_1 = swarm.node(1, "1", &[]);
    let model_id = ModelManifest::load(&model).unwrap().model_id;
    let empty = dir.path().join("empty-3");
    let auto = Swarm { model: empty.to_str().unwrap(), ..net.swarm() };
    let flags = ["--fetch", &model_id, "--rebalance-secs", "2"];
    let (_node_3, lines) = auto.node_logged(3, "auto", &flags);
    let operator = net.manifest["roles"]["operators"][3]["address"].as_str().unwrap();
    let span = || {
        let signature = "getNode(address)((bytes,bytes32,uint32,uint32,uint256,string[],uint256,uint256,uint64,uint64,uint64))";
        let registry = net.manifest["contracts"]["registry"].as_str().unwrap();
        let node = infergrid_e2e::cast_call(&net.rpc, registry, signature, &[operator], None);
        (node[2].clone(), node[3].clone())
    };
    assert_eq!(span(), ("2".into(), "2".into()), "it chose block 2, which nobody served");

    // Block 2 gets its own server, and block 0's leaves.
    let _node_2 = swarm.node(2, "2", &[]);
    drop(node_0);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let moved = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("node ready") && line.contains("blocks 0-0") => {
                break line;
            }
            Ok(line) => seen.push(line),
            Err(_) => panic!("node 3 did not move to block 0: {seen:#?}"),
        }
    };
    eprintln!("{moved}");
    assert!(seen.iter().any(|l| l.contains("auto: serving blocks 0-0")), "{seen:#?}");
    assert_eq!(span(), ("0".into(), "0".into()), "registered where it moved");
    assert_same_files(&empty, &model, 0..=0);
}
