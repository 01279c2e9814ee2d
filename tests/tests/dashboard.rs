//! The dashboard in a real browser (headless Chromium): served by a gateway after a request,
//! it shows one row per operator with the stake and reputation `cast` reads at the block the
//! page names, the route of the last request, a node's history page, and no console error.
//! A screenshot is saved as `target/tmp/dashboard.png`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use infergrid_e2e::http::{await_servable, complete, health};
use infergrid_e2e::procs::{SWARM, TestNet, free_port};

/// Headless Chromium (Debian's `chromium`, installed by `scripts/setup`) on `url`, with
/// `extra` flags: what it printed on stdout (the DOM with `--dump-dom`), and its console
/// messages.
fn chromium(url: &str, extra: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--enable-logging=stderr", "--v=0", "--window-size=1400,1100"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium is installed by scripts/setup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Chromium logs every console message at INFO whatever its level; the pages run no
    // script, so any message at all (a failed load, an error) is one too many.
    let console_errors =
        stderr.lines().filter(|l| l.contains(":CONSOLE")).map(str::to_owned).collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console_errors)
}

/// The values of `attribute="…"` in `html`, in order.
fn attributes<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
    let marker = format!("{attribute}=\"");
    html.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &html[at + marker.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// The first word `cast call` answers at `block`.
fn cast_call(rpc: &str, block: &str, contract: &str, signature: &str, arg: &str) -> String {
    infergrid_e2e::cast_call(rpc, contract, signature, &[arg], Some(block)).swap_remove(0)
}

#[test]
fn the_dashboard_shows_the_chain_and_the_route_in_a_real_browser() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::start(dir.path());
    let (swarm, manifest, rpc) = (net.swarm(), &net.manifest, net.rpc.as_str());
    let _nodes: Vec<_> = (0..3).map(|i| swarm.node(i, &i.to_string(), &[])).collect();
    let api = format!("127.0.0.1:{}", free_port());
    let _gateway = swarm.gateway(&api, &[]);
    await_servable(&api, Duration::from_secs(30));
    complete(&api, &net.model_name(), "hello", 4);
    let route: Vec<String> = health(&api)["routing"]["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["peer"].as_str().unwrap().to_owned())
        .collect();

    // The console check catches what it should.
    let broken = "data:text/html,<script>console.error('boom')</script>";
    let (_, caught) = chromium(broken, &["--dump-dom"]);
    assert!(caught.iter().any(|l| l.contains("boom")), "{caught:?}");

    let url = format!("http://{api}/dashboard");
    let (dom, errors) = chromium(&url, &["--dump-dom"]);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let block = attributes(&dom, "data-block")[0].to_owned();
    let operators = attributes(&dom, "data-operator");
    let registered = manifest["roles"]["operators"].as_array().unwrap();
    assert_eq!(operators.len(), registered.len(), "one row per operator:\n{dom}");
    let (registry, validation) = (
        manifest["contracts"]["registry"].as_str().unwrap(),
        manifest["contracts"]["validation"].as_str().unwrap(),
    );
    let stakes = attributes(&dom, "data-stake-wei");
    let reputations = attributes(&dom, "data-reputation-bps");
    for (i, operator) in operators.iter().enumerate() {
        let stake = cast_call(rpc, &block, registry, "stakeOf(address)(uint256)", operator);
        assert_eq!(stakes[i], stake, "{operator}'s stake at block {block}");
        let reputation =
            cast_call(rpc, &block, validation, "reputationOf(address)(uint32)", operator);
        assert_eq!(reputations[i], reputation, "{operator}'s reputation at block {block}");
    }
    let validators = attributes(&dom, "data-validator");
    let registered = manifest["roles"]["validators"].as_array().unwrap();
    assert_eq!(validators.len(), registered.len(), "one row per validator:\n{dom}");
    for (validator, stake) in validators.iter().zip(attributes(&dom, "data-validator-stake-wei")) {
        let bonded =
            cast_call(rpc, &block, validation, "validatorStake(address)(uint256)", validator);
        assert_eq!(stake, bonded, "{validator}'s stake at block {block}");
    }
    let hops = attributes(&dom, "data-peer");
    assert_eq!(hops, route, "the route of the last request");
    // The gateway opened a channel to each node of the route; every row equals the contract.
    let payments = manifest["contracts"]["channels"].as_str().unwrap();
    let opened =
        infergrid_e2e::cast_call(rpc, payments, "channelCount()(uint256)", &[], Some(&block))
            .swap_remove(0);
    let channels = attributes(&dom, "data-channel");
    assert_eq!(channels.len().to_string(), opened, "one row per channel opened:\n{dom}");
    assert!(channels.len() >= route.len(), "a channel to every node of the route: {channels:?}");
    let (deposits, paid) =
        (attributes(&dom, "data-deposit-wei"), attributes(&dom, "data-paid-wei"));
    for (i, channel) in channels.iter().enumerate() {
        let signature = "getChannel(uint256)((address,uint64,address,uint128,uint128))";
        let words = infergrid_e2e::cast_call(rpc, payments, signature, &[channel], Some(&block));
        assert_eq!(
            (deposits[i], paid[i]),
            (words[3].as_str(), words[4].as_str()),
            "channel {channel}"
        );
    }

    // Each operator links to its history, with the same figures.
    let operator = operators[1];
    let (page, errors) = chromium(&format!("{url}/node/{operator}"), &["--dump-dom"]);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    assert!(page.contains("NodeRegistry.NodeRegistered"), "{page}");
    assert!(page.contains("PaymentChannels.ChannelOpened"), "a channel was opened to it: {page}");
    let block = attributes(&page, "data-block")[0];
    let stake = cast_call(rpc, block, registry, "stakeOf(address)(uint256)", operator);
    assert_eq!(attributes(&page, "data-stake-wei"), [stake.as_str()]);

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    // Tall enough for every section, payments last.
    let screenshot = format!("--screenshot={}", shot.display());
    let (_, errors) = chromium(&url, &[&screenshot, "--window-size=1400,1900"]);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "the screenshot {} is {size} bytes", shot.display());
    eprintln!(
        "dashboard at block {block}: {} operators; screenshot {}",
        operators.len(),
        shot.display()
    );
}
