//! A second implementation of the protocol, written in Python from `protocol-spec/` alone
//! (`scripts/interop/`: its own libp2p, wire codec, EIP-712 and secp256k1), against the
//! Rust node: it reproduces every test vector, and it pays a real node on a real chain
//! for a step, gets the same logits as the model run whole in this process, checks the
//! operator's signature, and its voucher is redeemed on-chain for exactly what it signed.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use infergrid::chain::{Account, Deployment};
use infergrid::devnet::{DevAccount, Role};
use infergrid::engine::{CacheLimits, Device, Pipeline, Runtime};
use infergrid::identity::NodeIdentity;
use infergrid_e2e::models::repo_root;
use infergrid_e2e::procs::{SWARM, TestNet};
use infergrid_e2e::{btt, cast_call, dev};

/// Prompt positions: logits `[1, 1500, 512]`, a 3 MB answer, far over yamux's initial
/// 256 KiB window, so it flows only if the client gives the window back as it reads.
const PROMPT_TOKENS: usize = 1500;

/// `python -m scripts.interop.MODULE ARGS…` from the repository root.
fn interop(module: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let python = infergrid::tools::locate(infergrid::tools::Tool::Python).unwrap();
    Command::new(python)
        .current_dir(repo_root())
        .args(["-m", &format!("scripts.interop.{module}")])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the project python runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn python_reproduces_every_test_vector() {
    let out = interop("vectors", &[], &[]);
    let report = text(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    assert!(report.contains(" 0 failed"), "{report}");
}

/// Opens a channel from `payer` to `operator` holding `deposit`; its id.
fn open_channel(net: &TestNet, payer: &DevAccount, operator: Address, deposit: U256) -> U256 {
    let deployment = Deployment::load(Path::new(&net.deployment)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async {
            let contracts =
                Account::connect(&net.rpc, &payer.private_key).await?.contracts(&deployment);
            contracts.token.approve(deployment.contracts.channels, deposit).await?;
            anyhow::Ok(contracts.channels.open(operator, deposit).await?)
        })
        .expect("the payer opens a channel")
}

/// What the chain says `channel` has paid its node so far.
fn paid(net: &TestNet, channel: U256) -> U256 {
    let channels = net.manifest["contracts"]["channels"].as_str().unwrap();
    let signature = "getChannel(uint256)((address,uint64,address,uint128,uint128))";
    let words = cast_call(&net.rpc, channels, signature, &[&channel.to_string()], None);
    words[4].parse().unwrap()
}

#[test]
fn python_client_pays_a_node_and_checks_its_signed_answer() {
    let _one_swarm = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::start(dir.path());
    // Operator 0 serves the whole model (registered anew for blocks 0-2) and redeems any
    // voucher it holds at its next look, every second, whatever the gas.
    let flags = ["--update-registration", "--redeem-check-secs", "1", "--redeem-value-to-gas", "0"];
    let _node = net.swarm().node(0, "0-2", &flags);
    let (operator, payer) = (dev(Role::Operator, 0), dev(Role::Payer, 0));
    let channel = open_channel(&net, &payer, operator.address, btt("1"));

    let peer = NodeIdentity::derive(&operator.private_key).peer_id();
    let model_id = net.manifest["roles"]["operators"][0]["model_id"].as_str().unwrap().to_owned();
    let prompt: Vec<i64> = (0..PROMPT_TOKENS as i64).map(|i| (7 + 31 * i) % 512).collect();
    let tokens = prompt.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let node = format!("/ip4/127.0.0.1/tcp/{}/p2p/{peer}", infergrid::devnet::NODE_PORT_BASE);
    let channel_arg = channel.to_string();
    let args = [
        "--node",
        &node,
        "--rpc-url",
        &net.rpc,
        "--deployment",
        &net.deployment,
        "--key-env",
        "PAYER_KEY",
        "--channel",
        &channel_arg,
        "--model-id",
        &model_id,
        "--blocks",
        "0-2",
        "--tokens",
        &tokens,
    ];
    let env = [("PAYER_KEY", payer.private_key.to_string())];
    let started = Instant::now();
    let out = interop("client", &[&args[..], &["--values"]].concat(), &env);
    let elapsed = started.elapsed();
    assert!(out.status.success(), "client: {}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The operator's signature, checked by the client against the registry's operator.
    assert_eq!(answer["status"], "Ok");
    let recovered: Address = answer["recovered"].as_str().unwrap().parse().unwrap();
    assert_eq!(recovered, operator.address);
    // The same logits as the model run whole here.
    let runtime = Runtime::new(Device::Cpu, None).unwrap();
    let local = Pipeline::load(Path::new(&net.model), &runtime, CacheLimits::default()).unwrap();
    let expected = local.step(1, 0, &prompt).unwrap();
    let shape: Vec<usize> = serde_json::from_value(answer["output"]["shape"].clone()).unwrap();
    assert_eq!(shape, expected.shape());
    let values: Vec<f32> = serde_json::from_value(answer["output"]["values"].clone()).unwrap();
    let max_diff =
        values.iter().zip(expected.data()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-4, "the node's logits differ from local ones by {max_diff}");
    // Metering: 1500 positions × 3 blocks at the registered price for a 3-block span.
    assert_eq!(answer["block_tokens"], 3 * PROMPT_TOKENS);
    let amount: U256 = answer["amount_paid"].as_str().unwrap().parse().unwrap();
    let price = U256::from(1_000_000_000_000u64); // devnet operator 0's price per token
    assert_eq!(amount, price * U256::from(PROMPT_TOKENS));
    // The node's account of the channel, which comes with the answer: it holds the voucher
    // and counts this step, and owes nothing beyond it.
    let account = &answer["account"];
    assert_eq!(account["voucher"], amount.to_string(), "{account}");
    assert_eq!(account["owed"], amount.to_string(), "{account}");
    assert_eq!(account["metered_block_tokens"], 3 * PROMPT_TOKENS, "{account}");
    eprintln!(
        "python client: {} bytes of logits in {:.2} s, max |Δ| {max_diff:e}, epoch {}, paid {amount} wei",
        4 * values.len(),
        elapsed.as_secs_f64(),
        answer["epoch"],
    );

    // The same voucher again buys nothing more: the node refuses the step, and the client
    // reports the refusal's code and message.
    let out = interop("client", &args, &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let refusal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&refusal["status"], &refusal["code"]), (&"Err".into(), &9.into()), "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("sign a newer voucher"), "{refusal}");

    // The node stored the Python-signed voucher and the contract honoured it: the channel
    // pays exactly its amount.
    let deadline = Instant::now() + Duration::from_secs(60);
    while paid(&net, channel) != amount {
        assert!(
            Instant::now() < deadline,
            "channel {channel} paid {}, not {amount}",
            paid(&net, channel)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
