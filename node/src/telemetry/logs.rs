//! Logs: `tracing` events and spans written to stderr, filtered by `RUST_LOG` (default: this
//! program at `info`, everything else, libp2p included, at `warn`), as text or one JSON object
//! per line. A gateway's request runs in a span naming its session (`cmpl-<session>`), which
//! is also the session id every node logs for it: one id follows a request through the
//! gateway, every hop, its vouchers and their redemption.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span's fields: for log collectors.
    Json,
}

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "warn,infergrid=info";

/// Installs the global subscriber; a second call (a test) is a no-op.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: a log file or a devnet's prefixed lines get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}
