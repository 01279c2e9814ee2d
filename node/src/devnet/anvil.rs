use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Why anvil could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AnvilError {
    #[error("cannot start anvil at {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("anvil exited before it was ready: {0}")]
    Exited(String),
    #[error("anvil did not report `Listening on` within {0:?}")]
    Timeout(Duration),
}

/// A running anvil process, killed when dropped.
#[derive(Debug)]
pub struct AnvilProcess {
    child: Child,
    url: String,
}

impl AnvilProcess {
    /// Starts anvil on `host:port` (port 0 lets the OS choose) and waits until it listens.
    pub async fn spawn(
        anvil: &Path,
        host: &str,
        port: u16,
        chain_id: u64,
    ) -> Result<Self, AnvilError> {
        let mut child = Command::new(anvil)
            .args([
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--chain-id",
                &chain_id.to_string(),
                // Every account of anvil-fixtures/dev-accounts.json gets ether for gas.
                "--accounts",
                &super::dev_accounts().len().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| AnvilError::Spawn { path: anvil.to_path_buf(), source })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();

        const READY_TIMEOUT: Duration = Duration::from_secs(30);
        let listening = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.trim().strip_prefix("Listening on ") {
                    return Some(addr.trim().to_owned());
                }
            }
            None
        })
        .await
        .map_err(|_| AnvilError::Timeout(READY_TIMEOUT))?;

        let Some(addr) = listening else {
            let mut reason = String::new();
            let mut err_lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = err_lines.next_line().await {
                reason.push_str(line.trim());
                reason.push(' ');
            }
            let _ = child.wait().await;
            return Err(AnvilError::Exited(reason.trim().to_owned()));
        };
        // Keep draining both pipes, as bytes, so anvil never blocks on a full pipe: a line
        // reader would stop at the first byte that is not UTF-8, and anvil would then hang on
        // its next log line (every RPC call logs one).
        let mut stdout = lines.into_inner();
        tokio::spawn(async move { tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await });
        let mut stderr = stderr;
        tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
        Ok(Self { child, url: format!("http://{addr}") })
    }

    /// The HTTP RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until anvil exits on its own (e.g. it got the terminal's Ctrl-C too).
    pub async fn exited(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Stops anvil with SIGTERM, then SIGKILL if it has not exited after a grace period.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_ok() {
                return Ok(());
            }
        }
        self.child.kill().await
    }
}
