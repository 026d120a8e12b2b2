//! The one place that sets up tracing: human-readable on a terminal, JSON when asked.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Installs the global subscriber writing to stderr. Call once, at start.
pub fn init(format: LogFormat, level: &str) {
    init_with_writer(format, level, std::io::stderr);
}

/// Installs the global subscriber with any writer (tests capture logs this way). A second
/// call is a no-op.
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    // Already installed (tests, or the demo re-entering): keep the first.
    let _ = result;
}
