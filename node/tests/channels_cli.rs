//! `infergrid channels` against a devnet: a payer lists its channels, closes them and takes
//! the unused deposits back after the close window, checked against `cast`.

mod support;

use std::process::{Command, Output};

use alloy::primitives::{U256, utils::parse_ether};
use infergrid::devnet::{Role, accounts_with};
use support::{BIN, Devnet, cast, one_line_error, stdout};

fn channels(devnet: &Devnet, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["channels", "--rpc-url", devnet.rpc(), "--deployment"])
        .arg(devnet.deployment())
        .args(args)
        .env("INFERGRID_PAYER_KEY", key)
        .output()
        .expect("run infergrid")
}

/// The first word of each field of `getChannel(id)`: payer, closesAt, node, deposit, paid.
fn channel(devnet: &Devnet, id: &str) -> Vec<String> {
    cast(&[
        "call",
        devnet.contract("channels"),
        "getChannel(uint256)((address,uint64,address,uint128,uint128))",
        id,
        "--rpc-url",
        devnet.rpc(),
    ])
    .trim_matches(|c| c == '(' || c == ')')
    .split(", ")
    .map(|field| field.split_whitespace().next().unwrap_or_default().to_owned())
    .collect()
}

fn balance(devnet: &Devnet, holder: &str) -> U256 {
    let out = cast(&[
        "call",
        devnet.contract("token"),
        "balanceOf(address)(uint256)",
        holder,
        "--rpc-url",
        devnet.rpc(),
    ]);
    out.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_payer_closes_its_channels_and_gets_the_unused_deposit_back() {
    let devnet = Devnet::start();
    let payer = &accounts_with(Role::Payer)[0];
    let (key, address) = (payer.private_key.to_string(), payer.address.to_string());
    let send = |to: &str, signature: &str, args: &[&str]| {
        let mut cast_args = vec!["send", to, signature];
        cast_args.extend_from_slice(args);
        cast_args.extend_from_slice(&["--private-key", &key, "--rpc-url", devnet.rpc()]);
        cast(&cast_args);
    };
    let operators: Vec<String> =
        accounts_with(Role::Operator).iter().take(2).map(|a| a.address.to_string()).collect();
    let deposits = [parse_ether("1").unwrap(), parse_ether("2").unwrap()];
    let total = (deposits[0] + deposits[1]).to_string();
    send(
        devnet.contract("token"),
        "approve(address,uint256)",
        &[devnet.contract("channels"), &total],
    );
    for (node, deposit) in operators.iter().zip(deposits) {
        send(devnet.contract("channels"), "open(address,uint256)", &[node, &deposit.to_string()]);
    }

    // The list is what the contract holds.
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&channels(&devnet, &key, &["list", "--json"]))).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for row in listed {
        let on_chain = channel(&devnet, row["channel"].as_str().unwrap());
        assert_eq!(on_chain[0].to_lowercase(), address.to_lowercase());
        assert_eq!(row["node"].as_str().unwrap().to_lowercase(), on_chain[2].to_lowercase());
        assert_eq!(row["deposit"].as_str().unwrap(), on_chain[3]);
        assert_eq!(row["paid"].as_str().unwrap(), on_chain[4]);
        assert_eq!(row["state"], "open");
        // Without the gateway's wallet, what is signed but unredeemed is unknown, not zero.
        assert!(row["unredeemed"].is_null(), "{row}");
    }
    let listing = channels(&devnet, &key, &["list", "--wallet", "/nonexistent/wallet.redb"]);
    let note = String::from_utf8_lossy(&listing.stderr);
    assert!(note.contains("note: no wallet at /nonexistent/wallet.redb"), "{note}");
    let table = stdout(&channels(&devnet, &key, &["list"]));
    assert!(table.contains("2 BTT") && table.contains("open"), "{table}");

    // Close both; finalizing is refused until the window has passed.
    let closed = stdout(&channels(&devnet, &key, &["close"]));
    assert_eq!(closed.lines().filter(|l| l.starts_with("close channel")).count(), 2, "{closed}");
    for id in ["1", "2"] {
        assert_ne!(channel(&devnet, id)[1], "0", "close requested on channel {id}");
    }
    let early = one_line_error(&channels(&devnet, &key, &["finalize", "1"]));
    assert!(early.contains("CloseWindowOpen"), "{early}");
    let unknown = one_line_error(&channels(&devnet, &key, &["close", "99"]));
    assert!(unknown.contains("was not opened by"), "{unknown}");
    // With nothing to do, each says so, and when the closing ones can be finalized.
    let again = stdout(&channels(&devnet, &key, &["close"]));
    assert!(again.contains("no open channel to close (2 channels"), "{again}");
    let waiting = stdout(&channels(&devnet, &key, &["finalize"]));
    assert!(
        waiting.contains("no channel is ready to finalize yet: channel 1 from 20"),
        "{waiting}"
    );
    assert!(waiting.contains("(in 1h)") || waiting.contains("(in 59m"), "{waiting}");

    // After the window, the whole unused deposits come back.
    cast(&["rpc", "evm_increaseTime", "3601", "--rpc-url", devnet.rpc()]);
    cast(&["rpc", "evm_mine", "--rpc-url", devnet.rpc()]);
    let before = balance(&devnet, &address);
    let out = stdout(&channels(&devnet, &key, &["finalize"]));
    assert!(out.contains("refunded 1 BTT") && out.contains("refunded 2 BTT"), "{out}");
    assert_eq!(balance(&devnet, &address) - before, deposits[0] + deposits[1]);
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&channels(&devnet, &key, &["list", "--json"]))).unwrap();
    // A closed channel still shows what was deposited, and what came back.
    for (row, deposit) in listed.as_array().unwrap().iter().zip(deposits) {
        let btt = deposit / parse_ether("1").unwrap();
        assert_eq!(row["state"], format!("closed, {btt} BTT refunded"), "{row}");
        assert_eq!(row["deposit"], deposit.to_string(), "{row}");
        assert_eq!(row["refunded"], deposit.to_string(), "{row}");
        assert_eq!(row["refundable"], "0", "{row}");
    }
    let done = stdout(&channels(&devnet, &key, &["finalize"]));
    assert!(done.contains("no channel is ready to finalize (none is closing)"), "{done}");
}
