//! The ABI + bytecode artifacts the bindings are generated from must be what the committed
//! Solidity compiles to; otherwise the Rust client would talk to contracts that do not exist.

use std::process::Command;

#[test]
fn committed_artifacts_match_a_fresh_forge_build() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/export-artifacts");
    let out = Command::new("bash")
        .arg(script)
        .arg("--check")
        .output()
        .expect("run scripts/export-artifacts");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
