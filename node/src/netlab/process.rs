//! `infergrid` processes as users start them, inside a network namespace or not: started,
//! followed line by line, and stopped whatever happens.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::LabError;

/// Stops the process when dropped, whatever happens: Ctrl-C first, so a devnet takes its
/// anvil down with it, then SIGKILL after 5 s.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: kill(2) has no memory effects; the pid is our own child's, not yet reaped.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `binary`, run inside network namespace `netns` if one is given (`ip netns exec`, which
/// execs it: the process is the binary itself).
pub fn in_namespace(binary: &Path, netns: Option<&str>) -> Command {
    match netns {
        Some(netns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns]).arg(binary);
            cmd
        }
        None => Command::new(binary),
    }
}

/// Where a followed process's log (its stderr) goes besides the line channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// Copied to this process's stderr (tests: it shows when one fails).
    Echo,
    /// Only to the line channel.
    Quiet,
}

/// Set once anything in this process panicked: echoed logs stop there.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Makes the first panic end every echo, so that a failed test's panic message comes last in
/// its output, not buried under the logs its processes print while they are stopped (CI shows
/// the end of a failure's output). Other tests of the same binary lose their echo from then
/// on too; their line channels are unaffected.
fn silence_echoes_after_a_panic() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PANICKED.swap(true, Ordering::Relaxed) {
                eprintln!("(logs of the processes started here are not shown after this panic)");
            }
            previous(info);
        }));
    });
}

/// Longest a process may take to print its ready line (a node loads its model and reads
/// the chain first).
const READY_WITHIN: Duration = Duration::from_secs(300);

/// Starts `cmd` and waits (up to 5 minutes) for a stdout line starting with `ready`: the
/// process, that line, and every line it prints after (stdout and its log together). Lines
/// nobody reads are dropped; the pipes are drained either way.
pub fn follow(
    mut cmd: Command,
    ready: &str,
    log: Log,
) -> Result<(Proc, String, Receiver<String>), LabError> {
    let command = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    let (sender, following) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    let to_log = sender.clone();
    if log == Log::Echo {
        silence_echoes_after_a_panic();
    }
    let log_drained = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if log == Log::Echo && !PANICKED.load(Ordering::Relaxed) {
                eprintln!("{line}");
            }
            let _ = to_log.send(line);
        }
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let proc = Proc(child);
    // The ready line comes through `ready_line`; what stdout says after it joins the log.
    let (ready_sender, ready_line) = std::sync::mpsc::channel();
    let ready_prefix = ready.to_owned();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let Some(line) = lines.by_ref().find(|line| line.starts_with(&ready_prefix)) else {
            return;
        };
        if ready_sender.send(line).is_err() {
            return;
        }
        for line in lines {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let line = match ready_line.recv_timeout(READY_WITHIN) {
        Ok(line) => line,
        Err(waited) => {
            let exited = matches!(waited, std::sync::mpsc::RecvTimeoutError::Disconnected);
            if exited {
                // Its log to the end, for the error.
                let _ = log_drained.join();
            }
            let seen: Vec<String> = following.try_iter().collect();
            let detail = seen[seen.len().saturating_sub(20)..].join("\n");
            return Err(if exited {
                LabError::Exited { what: command, detail }
            } else {
                LabError::Timeout { what: command, seconds: READY_WITHIN.as_secs(), detail }
            });
        }
    };
    Ok((proc, line, following))
}

/// Waits up to `within` for a line containing `text`: the line, or every line seen.
pub fn expect_line(
    lines: &Receiver<String>,
    text: &str,
    within: Duration,
) -> Result<String, Vec<String>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    Err(seen)
}

/// [`expect_line`], failing with the last lines seen.
pub fn wait_for(
    lines: &Receiver<String>,
    text: &str,
    within: Duration,
    what: &str,
) -> Result<String, LabError> {
    expect_line(lines, text, within).map_err(|seen| LabError::Timeout {
        what: format!("{what}: a line with {text:?}"),
        seconds: within.as_secs(),
        detail: seen.iter().rev().take(20).rev().cloned().collect::<Vec<_>>().join("\n"),
    })
}

/// `infergrid devnet` for `model` (`cmd` runs the binary, in a namespace or not), its files
/// in `dir` and its log to `stderr`, with `extra` arguments; waits for its ready file. The
/// devnet, the manifest it wrote, its deployment file.
pub fn devnet(
    mut cmd: Command,
    dir: &Path,
    model: &str,
    extra: &[&str],
    stderr: Stdio,
) -> Result<(Proc, serde_json::Value, PathBuf), LabError> {
    // Absolute: the devnet records itself under `dir` (XDG_CONFIG_HOME), which must be.
    let dir = &std::path::absolute(dir)?;
    let ready_file = dir.join("ready.json");
    // A ready file left by an earlier run would be read as this one's.
    let _ = std::fs::remove_file(&ready_file);
    let out = dir.join("devnet");
    // Anvil on any free port, unless the caller chose one (to put a proxy in front of it).
    let port = if extra.contains(&"--port") { None } else { Some(["--port", "0"]) };
    cmd.arg("devnet")
        .args(port.iter().flatten())
        .args(["--model", model, "--out"])
        .arg(&out)
        .arg("--ready-file")
        .arg(&ready_file)
        .args(extra)
        // The devnet records itself as the user's current one: here, in `dir`.
        .env("XDG_CONFIG_HOME", dir)
        .stdout(Stdio::null())
        .stderr(stderr);
    let command = format!("{cmd:?}");
    let mut devnet =
        Proc(cmd.spawn().map_err(|source| LabError::Spawn { command: command.clone(), source })?);
    let started = Instant::now();
    while !ready_file.is_file() {
        if started.elapsed() > Duration::from_secs(180) {
            let detail = "no ready file".to_owned();
            return Err(LabError::Timeout { what: command, seconds: 180, detail });
        }
        if devnet.0.try_wait()?.is_some() {
            let log = std::fs::read_to_string(dir.join("devnet.log")).unwrap_or_default();
            return Err(LabError::Exited { what: command, detail: log });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&ready_file)?;
    let manifest = serde_json::from_str(&text).map_err(|e| LabError::Unexpected {
        what: format!("the devnet's ready file {}", ready_file.display()),
        detail: e.to_string(),
    })?;
    Ok((devnet, manifest, out.join("deployment.json")))
}
