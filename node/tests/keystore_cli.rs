//! Keys from encrypted keystore files: `infergrid keystore` writes what `cast` decrypts,
//! `infergrid operator --keystore` reads what `cast` writes and acts as that operator, and a
//! wrong password is one clear error.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use alloy::primitives::{U256, utils::parse_ether};
use infergrid::devnet::{Role, accounts_with};
use support::{BIN, Devnet, cast, one_line_error, stdout};

const PASSWORD_VAR: &str = "INFERGRID_KEYSTORE_PASSWORD";

/// `infergrid ARGS` with only the given variables of the ones a key can come from.
fn infergrid(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove(PASSWORD_VAR)
        .env_remove("INFERGRID_OPERATOR_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run infergrid")
}

fn operator(devnet: &Devnet, keystore: &Path, password: &str, args: &[&str]) -> Output {
    let deployment = devnet.deployment();
    let mut all = vec!["operator", "--rpc-url", devnet.rpc()];
    all.extend(["--deployment", deployment.to_str().unwrap()]);
    all.extend(["--keystore", keystore.to_str().unwrap()]);
    all.extend(args);
    infergrid(&all, &[(PASSWORD_VAR, password)])
}

fn stake_of(devnet: &Devnet, operator: &str) -> U256 {
    let sig = "stakeOf(address)(uint256)";
    let answer =
        cast(&["call", devnet.contract("registry"), sig, operator, "--rpc-url", devnet.rpc()]);
    answer.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn operator_signs_with_a_keystore() {
    let devnet = Devnet::start();
    let dir = devnet.dir.path();
    let account = &accounts_with(Role::Operator)[1];
    let address = account.address.to_string();
    let key = account.private_key.to_string();

    // Import: the printed address is the one cast decrypts from the file.
    let file = dir.join("operator.json");
    let path = file.to_str().unwrap();
    let password = "correct horse battery staple";
    let imported = infergrid(
        &["keystore", "import", "--key-env", "OP_KEY", "--out", path],
        &[("OP_KEY", &key), (PASSWORD_VAR, password)],
    );
    assert_eq!(stdout(&imported).trim(), address);
    assert_eq!(cast(&["wallet", "address", "--keystore", path, "--password", password]), address);
    let again = infergrid(
        &["keystore", "import", "--key-env", "OP_KEY", "--out", path],
        &[("OP_KEY", &key), (PASSWORD_VAR, password)],
    );
    assert!(one_line_error(&again).contains("never overwritten"));

    // The operator commands act as the keystore's account.
    let status = stdout(&operator(&devnet, &file, password, &["status"]));
    assert!(status.contains(&format!("operator     {address}")), "{status}");
    let before = stake_of(&devnet, &address);
    stdout(&operator(&devnet, &file, password, &["stake", "1BTT"]));
    assert_eq!(stake_of(&devnet, &address), before + parse_ether("1").unwrap());

    // A wrong or missing password, a missing file: one clear line each, non-zero exit.
    let err = one_line_error(&operator(&devnet, &file, "wrong", &["status"]));
    assert!(err.contains(&format!("wrong password or corrupt keystore {path}")), "{err}");
    let deployment = devnet.deployment();
    let no_password = infergrid(
        &["operator", "--deployment", deployment.to_str().unwrap(), "--keystore", path, "status"],
        &[],
    );
    assert!(one_line_error(&no_password).contains(&format!("set {PASSWORD_VAR}")));
    let missing = operator(&devnet, &dir.join("absent.json"), password, &["status"]);
    assert!(one_line_error(&missing).contains("cannot read keystore"));

    // A keystore written by cast, with the password in another variable.
    let cast_dir = dir.join("cast");
    std::fs::create_dir(&cast_dir).unwrap();
    cast(&[
        "wallet",
        "import",
        "op",
        "--private-key",
        &key,
        "--keystore-dir",
        cast_dir.to_str().unwrap(),
        "--unsafe-password",
        "from cast",
    ]);
    let by_cast = cast_dir.join("op");
    let mut args = vec!["operator", "--rpc-url", devnet.rpc()];
    args.extend(["--deployment", deployment.to_str().unwrap()]);
    args.extend(["--keystore", by_cast.to_str().unwrap()]);
    args.extend(["--password-env", "CAST_PASSWORD", "status"]);
    let status = stdout(&infergrid(&args, &[("CAST_PASSWORD", "from cast")]));
    assert!(status.contains(&format!("operator     {address}")), "{status}");

    // A new random key.
    let fresh = dir.join("fresh.json");
    let fresh = fresh.to_str().unwrap();
    let created = infergrid(&["keystore", "new", "--out", fresh], &[(PASSWORD_VAR, password)]);
    let printed = stdout(&created).trim().to_owned();
    assert_eq!(cast(&["wallet", "address", "--keystore", fresh, "--password", password]), printed);
    assert_ne!(printed, address);
}
