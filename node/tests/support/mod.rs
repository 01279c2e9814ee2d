//! Shared by the CLI tests that run against a devnet: the devnet process, `cast` as the
//! independent reference, and how a failed command must look.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use infergrid::tools::{Tool, locate};

pub const BIN: &str = env!("CARGO_BIN_EXE_infergrid");

/// `infergrid devnet` on a free port; Ctrl-C on drop takes its anvil down too.
pub struct Devnet {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The ready file: RPC URL, contracts, roles.
    pub manifest: serde_json::Value,
}

impl Devnet {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = dir.path().join("ready.json");
        let child = Command::new(BIN)
            .args(["devnet", "--port", "0", "--out"])
            .arg(dir.path().join("out"))
            .arg("--ready-file")
            .arg(&ready)
            // The devnet records itself as the user's current one: here, in the test's folder.
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the devnet");
        let started = Instant::now();
        while !ready.is_file() {
            assert!(started.elapsed() < Duration::from_secs(60), "devnet never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(&ready).expect("ready file");
        Self { child, dir, manifest: serde_json::from_str(&text).expect("ready file is JSON") }
    }

    pub fn rpc(&self) -> &str {
        self.manifest["rpc_url"].as_str().expect("rpc_url")
    }

    pub fn deployment(&self) -> PathBuf {
        self.dir.path().join("out/deployment.json")
    }

    /// A contract's address: `registry`, `validation`, …
    pub fn contract(&self, name: &str) -> &str {
        self.manifest["contracts"][name].as_str().expect("contract address")
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// Runs `cast` and returns its standard output, trimmed.
pub fn cast(args: &[&str]) -> String {
    let out = Command::new(locate(Tool::Cast).expect("cast")).args(args).output().expect("cast");
    assert!(out.status.success(), "cast {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// The standard output of a command that must have succeeded.
pub fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one `error:` line of a command that must have failed, with no panic.
pub fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "should fail: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    errors[0].to_owned()
}
