//! Flags every service binary takes; each is also an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log format: `pretty` for people, `json` for collectors.
    #[arg(long, env = "RUNGATE_LOG_FORMAT", default_value = "pretty")]
    pub log_format: crate::telemetry::LogFormat,

    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); unset keeps traces local.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Parses `250ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 10s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!(
            "`{text}` has unknown unit `{unit}` (use ms, s or m)"
        )),
    }
}

/// The text of a setting given either inline (which wins) or as a file path;
/// empty when neither is set.
pub fn inline_or_file(
    inline: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<String, String> {
    match (inline, file) {
        (Some(text), _) => Ok(text.to_owned()),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        (None, None) => Ok(String::new()),
    }
}

/// A listen address flag's parser, for symmetry with clap's own.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("`{text}` is not host:port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
