//! `infergrid validator` against a devnet: register, stake, unbond, withdraw and status, read
//! back with `cast`, and the contract's custom errors surfacing as one clear line.

mod support;

use std::process::{Command, Output};

use infergrid::devnet::{Role, accounts_with};
use support::{BIN, Devnet, cast, one_line_error, stdout};

fn validator(devnet: &Devnet, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["validator", "--rpc-url", devnet.rpc(), "--deployment"])
        .arg(devnet.deployment())
        .args(["--key-env", "VALIDATOR_KEY"])
        .args(args)
        .env("VALIDATOR_KEY", key)
        .output()
        .expect("run infergrid")
}

#[test]
fn validator_lifecycle_on_a_devnet() {
    let devnet = Devnet::start();
    let rpc = devnet.rpc();
    // The devnet's three validators hold 10,000 BTT each; a funded payer joins them.
    let account = &accounts_with(Role::Payer)[1];
    let (key, address) = (account.private_key.to_string(), account.address.to_string());

    let below = one_line_error(&validator(&devnet, &key, &["register", "--stake", "10BTT"]));
    assert!(below.contains("StakeBelowMinimum"), "{below}");
    let out = stdout(&validator(&devnet, &key, &["register", "--stake", "10000BTT"]));
    assert!(out.contains("register: tx 0x"), "{out}");
    assert!(
        out.contains("stake            10000 BTT") && out.contains("active           true"),
        "{out}"
    );
    assert!(
        out.contains("weight           25.00% of the active validator stake (40000 BTT)"),
        "{out}"
    );
    let out = stdout(&validator(&devnet, &key, &["stake", "2000"]));
    assert!(out.contains("stake            12000 BTT"), "{out}");
    let on_chain = cast(&[
        "call",
        devnet.contract("validation"),
        "validatorStake(address)(uint256)",
        &address,
        "--rpc-url",
        rpc,
    ]);
    assert!(on_chain.starts_with("12000000000000000000000"), "{on_chain}");

    // Unbonding below the minimum makes it inactive; withdrawing early is the contract's error.
    let out = stdout(&validator(&devnet, &key, &["unbond", "11500BTT"]));
    assert!(
        out.contains("unbonding        11500 BTT") && out.contains("active           false"),
        "{out}"
    );
    let early = one_line_error(&validator(&devnet, &key, &["withdraw"]));
    assert!(early.contains("UnbondingNotElapsed"), "{early}");
    cast(&["rpc", "evm_increaseTime", "604801", "--rpc-url", rpc]);
    cast(&["rpc", "evm_mine", "--rpc-url", rpc]);
    let out = stdout(&validator(&devnet, &key, &["withdraw"]));
    assert!(out.contains("withdraw: tx 0x") && out.contains("unbonding        0 BTT"), "{out}");

    // Anyone's standing, read without touching their key.
    let other = accounts_with(Role::Validator)[0].address.to_string();
    let out = stdout(&validator(&devnet, &key, &["status", "--address", &other]));
    assert!(
        out.contains(&format!("validator {other}")) && out.contains("active           true"),
        "{out}"
    );
    let zero = one_line_error(&validator(&devnet, &key, &["stake", "0"]));
    assert!(zero.contains("greater than zero"), "{zero}");
}
