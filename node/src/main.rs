//! The `infergrid` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    infergrid::telemetry::init_logs(args.log_format);
    if !args.serves() {
        // Rust ignores SIGPIPE, so a short command piped into `head` would panic writing to
        // the closed pipe; the default action ends it quietly, as any Unix tool. Serving
        // processes keep it ignored: a peer closing a socket mid-write must not kill them.
        // SAFETY: signal(2) setting SIG_DFL has no memory-safety preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole cause chain, no backtrace.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
