//! The values of the observability settings: where statsd datagrams go (`--statsd-host`, read as
//! gunicorn reads it) and where the metrics listener binds (`--metrics-bind`). Only parsing lives
//! here; the `metrics` module sends and serves.

use std::fmt;
use std::path::PathBuf;

use super::bind::BindAddress;

/// gunicorn's default statsd port, used when `--statsd-host` names only a host.
pub const DEFAULT_STATSD_PORT: u16 = 8125;

/// Where statsd datagrams go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsdAddress {
    /// UDP to a host name or address and a port.
    Udp { host: String, port: u16 },
    /// A unix datagram socket.
    Unix(PathBuf),
}

impl fmt::Display for StatsdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsdAddress::Udp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            StatsdAddress::Udp { host, port } => write!(f, "{host}:{port}"),
            StatsdAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl StatsdAddress {
    /// `HOST`, `HOST:PORT`, `[IPv6]:PORT`, `unix:PATH` or `unix://PATH`, as gunicorn accepts them
    /// (`unix:8125`, all digits, is the host `unix` on that port, as gunicorn keeps it).
    pub fn parse(s: &str) -> Result<StatsdAddress, String> {
        let s = s.trim();
        if let Some(port) = s.strip_prefix("unix:") {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("port {port} is out of range (0-65535)"))?;
                return Ok(StatsdAddress::Udp {
                    host: "unix".to_string(),
                    port,
                });
            }
        }
        let with_port = match s.strip_prefix('[') {
            Some(rest) if rest.ends_with(']') => format!("{s}:{DEFAULT_STATSD_PORT}"),
            Some(_) => s.to_string(),
            None if !s.contains(':') && !s.is_empty() => format!("{s}:{DEFAULT_STATSD_PORT}"),
            None => s.to_string(),
        };
        match BindAddress::try_parse(&with_port) {
            Ok(BindAddress::Tcp { host, port }) => Ok(StatsdAddress::Udp { host, port }),
            Ok(BindAddress::Unix(p)) => Ok(StatsdAddress::Unix(p)),
            Ok(BindAddress::Fd(_)) => Err(format!(
                "'{s}': use HOST:PORT or unix:PATH for a statsd server"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `--metrics-bind`: a TCP address or a unix socket path (never an inherited descriptor).
pub fn parse_metrics_bind(s: &str) -> Result<BindAddress, String> {
    match BindAddress::try_parse(s) {
        Ok(BindAddress::Fd(_)) => Err(format!(
            "'{}': the metrics listener takes HOST:PORT or unix:PATH",
            s.trim()
        )),
        Ok(a) => Ok(a),
        Err(e) => Err(e.to_string()),
    }
}

/// `--dogstatsd-tags`: `key:value,key2:value2` (or bare tags), as gunicorn passes them through; a
/// tag may not contain `|`, `#` or a newline, which would break the datagram.
pub fn check_dogstatsd_tags(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Some(c) = s.chars().find(|c| matches!(c, '|' | '#' | '\n' | '\r')) {
        return Err(format!("'{s}': a tag may not contain {c:?}"));
    }
    Ok(s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statsd_addresses() {
        let udp = |h: &str, p| StatsdAddress::Udp {
            host: h.to_string(),
            port: p,
        };
        assert_eq!(
            StatsdAddress::parse("localhost:9125"),
            Ok(udp("localhost", 9125))
        );
        assert_eq!(
            StatsdAddress::parse("localhost"),
            Ok(udp("localhost", 8125))
        );
        assert_eq!(StatsdAddress::parse("[::1]:9"), Ok(udp("::1", 9)));
        assert_eq!(StatsdAddress::parse("[::1]"), Ok(udp("::1", 8125)));
        assert_eq!(StatsdAddress::parse("unix:8125"), Ok(udp("unix", 8125)));
        assert_eq!(
            StatsdAddress::parse("unix:/run/statsd.sock"),
            Ok(StatsdAddress::Unix("/run/statsd.sock".into()))
        );
        assert_eq!(
            StatsdAddress::parse("unix:///run/statsd.sock"),
            Ok(StatsdAddress::Unix("/run/statsd.sock".into()))
        );
        assert!(StatsdAddress::parse("").is_err());
        assert!(StatsdAddress::parse("host:port").is_err());
        assert!(StatsdAddress::parse("fd://3").is_err());
        assert_eq!(udp("::1", 9).to_string(), "[::1]:9");
        assert_eq!(StatsdAddress::Unix("/x".into()).to_string(), "unix:/x");
    }

    #[test]
    fn metrics_bind_and_tags() {
        assert!(parse_metrics_bind("127.0.0.1:9100").is_ok());
        assert!(parse_metrics_bind("unix:/tmp/m.sock").is_ok());
        assert!(parse_metrics_bind("fd://3").is_err());
        assert!(parse_metrics_bind("x:y").is_err());
        assert_eq!(check_dogstatsd_tags(" a:b, c ,,"), Ok("a:b,c".to_string()));
        assert!(check_dogstatsd_tags("a|b").is_err());
    }
}
