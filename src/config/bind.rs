//! Listening addresses: parsing the `-b/--bind` forms and printing them the way the server announces
//! them ("Listening at: ...") and the way `--print-config` shows them.

use std::fmt;
use std::path::PathBuf;

/// Port used when a bind gives only a host, as gunicorn does.
pub const DEFAULT_PORT: u16 = 8000;

/// One place to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindAddress {
    /// `host` is stored without brackets, lower-cased (an IPv6 literal contains ':').
    Tcp {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
    /// A socket inherited from the parent process (systemd-style socket activation, `fd://N`).
    Fd(i32),
}

/// Why a bind string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindError {
    Empty,
    EmptyUnixPath,
    BadFd(String),
    BadPort(String),
    PortOutOfRange(String),
    MissingPort(String),
    UnbracketedIpv6(String),
    BadBrackets(String),
    UnknownScheme(String),
    BadHost(String),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Empty => f.write_str("empty address"),
            BindError::EmptyUnixPath => f.write_str("unix: address without a path"),
            BindError::BadFd(s) => write!(f, "'{s}' is not a valid file descriptor"),
            BindError::BadPort(s) => write!(f, "'{s}' is not a valid port number"),
            BindError::PortOutOfRange(s) => write!(f, "port {s} is out of range (0-65535)"),
            BindError::MissingPort(s) => write!(f, "'{s}' has no port after ':'"),
            BindError::UnbracketedIpv6(s) => {
                write!(f, "'{s}': put an IPv6 address in brackets, e.g. [::1]:8000")
            }
            BindError::BadBrackets(s) => {
                write!(f, "'{s}' is not of the form [IPv6] or [IPv6]:PORT")
            }
            BindError::UnknownScheme(s) => write!(
                f,
                "'{s}': unknown scheme (use HOST:PORT, unix:PATH or fd://N)"
            ),
            BindError::BadHost(s) => write!(f, "'{s}' is not a valid host"),
        }
    }
}

impl std::error::Error for BindError {}

impl BindAddress {
    /// Parse one bind string; the message names what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::try_parse(s).map_err(|e| e.to_string())
    }

    /// Same as [`BindAddress::parse`] with a typed error.
    pub fn try_parse(s: &str) -> Result<Self, BindError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(BindError::Empty);
        }
        // gunicorn accepts both `unix:PATH` and `unix://PATH`; the longer prefix must be tried first.
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(BindError::EmptyUnixPath);
            }
            return Ok(BindAddress::Unix(PathBuf::from(path)));
        }
        if let Some(fd) = s.strip_prefix("fd://") {
            return match fd.parse::<i32>() {
                Ok(n) if n >= 0 && fd.bytes().all(|b| b.is_ascii_digit()) => Ok(BindAddress::Fd(n)),
                _ => Err(BindError::BadFd(fd.to_string())),
            };
        }
        let netloc = s.strip_prefix("tcp://").unwrap_or(s);
        if netloc.is_empty() {
            return Err(BindError::Empty);
        }
        if netloc.contains("://") {
            return Err(BindError::UnknownScheme(s.to_string()));
        }
        if let Some(rest) = netloc.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(BindError::BadBrackets(s.to_string()));
            };
            if host.is_empty() || host.contains(['[', ']']) {
                return Err(BindError::BadBrackets(s.to_string()));
            }
            let port = if after.is_empty() {
                DEFAULT_PORT
            } else {
                match after.strip_prefix(':') {
                    Some(p) => parse_port(p, s)?,
                    None => return Err(BindError::BadBrackets(s.to_string())),
                }
            };
            return Ok(tcp(host, port));
        }
        let (host, port) = match netloc.matches(':').count() {
            0 => (netloc, DEFAULT_PORT),
            1 => {
                let (h, p) = netloc.split_once(':').unwrap_or((netloc, ""));
                // An empty host means every interface (gunicorn binds "" which is the same).
                (if h.is_empty() { "0.0.0.0" } else { h }, parse_port(p, s)?)
            }
            _ => return Err(BindError::UnbracketedIpv6(s.to_string())),
        };
        if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '[' || c == ']') {
            return Err(BindError::BadHost(host.to_string()));
        }
        Ok(tcp(host, port))
    }

    /// The form used in settings and by `--print-config`: `127.0.0.1:8000`, `[::1]:8000`,
    /// `unix:/path`, `fd://3`. Parsing it gives the same address back.
    pub fn spec(&self) -> String {
        match self {
            BindAddress::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            BindAddress::Tcp { host, port } => format!("{host}:{port}"),
            BindAddress::Unix(path) => format!("unix:{}", path.display()),
            BindAddress::Fd(fd) => format!("fd://{fd}"),
        }
    }
}

fn tcp(host: &str, port: u16) -> BindAddress {
    BindAddress::Tcp {
        host: host.to_ascii_lowercase(),
        port,
    }
}

fn parse_port(p: &str, whole: &str) -> Result<u16, BindError> {
    if p.is_empty() {
        return Err(BindError::MissingPort(whole.to_string()));
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BindError::BadPort(p.to_string()));
    }
    // All digits, so a parse failure can only be an overflow: out of range as well.
    match p.parse::<u64>() {
        Ok(n) if n <= u64::from(u16::MAX) => Ok(n as u16),
        _ => Err(BindError::PortOutOfRange(p.to_string())),
    }
}

impl fmt::Display for BindAddress {
    /// The form of gunicorn's "Listening at: ..." line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddress::Tcp { .. } => write!(f, "http://{}", self.spec()),
            BindAddress::Unix(_) | BindAddress::Fd(_) => f.write_str(&self.spec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> BindAddress {
        match BindAddress::try_parse(s) {
            Ok(b) => b,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn t(host: &str, port: u16) -> BindAddress {
        BindAddress::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn tcp_forms() {
        assert_eq!(ok("127.0.0.1:8000"), t("127.0.0.1", 8000));
        assert_eq!(ok("localhost"), t("localhost", 8000));
        assert_eq!(ok("Example.COM:80"), t("example.com", 80));
        assert_eq!(ok("0.0.0.0:0"), t("0.0.0.0", 0));
        assert_eq!(ok(":9000"), t("0.0.0.0", 9000));
        assert_eq!(ok("tcp://10.0.0.1:81"), t("10.0.0.1", 81));
        assert_eq!(ok("  1.2.3.4:5  "), t("1.2.3.4", 5));
        assert_eq!(ok("1.2.3.4:65535"), t("1.2.3.4", 65535));
    }

    #[test]
    fn ipv6_forms() {
        assert_eq!(ok("[::1]:8080"), t("::1", 8080));
        assert_eq!(ok("[::1]"), t("::1", 8000));
        assert_eq!(ok("[FE80::1]:1"), t("fe80::1", 1));
        assert!(matches!(
            BindAddress::try_parse("::1"),
            Err(BindError::UnbracketedIpv6(_))
        ));
        assert!(matches!(
            BindAddress::try_parse("[::1"),
            Err(BindError::BadBrackets(_))
        ));
        assert!(matches!(
            BindAddress::try_parse("[]:80"),
            Err(BindError::BadBrackets(_))
        ));
        assert!(matches!(
            BindAddress::try_parse("[::1]80"),
            Err(BindError::BadBrackets(_))
        ));
    }

    #[test]
    fn unix_and_fd() {
        assert_eq!(
            ok("unix:/tmp/x.sock"),
            BindAddress::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            ok("unix:///tmp/x.sock"),
            BindAddress::Unix("/tmp/x.sock".into())
        );
        assert_eq!(ok("unix:rel.sock"), BindAddress::Unix("rel.sock".into()));
        assert_eq!(ok("fd://3"), BindAddress::Fd(3));
        assert_eq!(ok("fd://0"), BindAddress::Fd(0));
        for bad in ["fd://", "fd://-1", "fd://x", "fd://+3", "fd://99999999999"] {
            assert!(
                matches!(BindAddress::try_parse(bad), Err(BindError::BadFd(_))),
                "{bad}"
            );
        }
        assert_eq!(
            BindAddress::try_parse("unix:"),
            Err(BindError::EmptyUnixPath)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(BindAddress::try_parse(""), Err(BindError::Empty));
        assert_eq!(BindAddress::try_parse("   "), Err(BindError::Empty));
        assert_eq!(BindAddress::try_parse("tcp://"), Err(BindError::Empty));
        assert_eq!(
            BindAddress::try_parse("h:70000"),
            Err(BindError::PortOutOfRange("70000".into()))
        );
        assert_eq!(
            BindAddress::try_parse("h:99999999999999999999999"),
            Err(BindError::PortOutOfRange("99999999999999999999999".into()))
        );
        assert_eq!(
            BindAddress::try_parse("h:http"),
            Err(BindError::BadPort("http".into()))
        );
        assert_eq!(
            BindAddress::try_parse("h:-1"),
            Err(BindError::BadPort("-1".into()))
        );
        assert_eq!(
            BindAddress::try_parse("h:"),
            Err(BindError::MissingPort("h:".into()))
        );
        assert!(matches!(
            BindAddress::try_parse("http://h:80"),
            Err(BindError::UnknownScheme(_))
        ));
        assert!(matches!(
            BindAddress::try_parse("a b:80"),
            Err(BindError::BadHost(_))
        ));
        let msg = BindAddress::parse("h:70000").unwrap_err();
        assert!(
            msg.contains("70000") && msg.contains("out of range"),
            "{msg}"
        );
    }

    #[test]
    fn display_and_spec() {
        assert_eq!(ok("127.0.0.1:8000").to_string(), "http://127.0.0.1:8000");
        assert_eq!(ok("[::1]:8000").to_string(), "http://[::1]:8000");
        assert_eq!(ok("unix:/run/a.sock").to_string(), "unix:/run/a.sock");
        assert_eq!(ok("fd://3").to_string(), "fd://3");
        for s in ["127.0.0.1:8000", "[::1]:9", "unix:/run/a.sock", "fd://4"] {
            assert_eq!(ok(s).spec(), s);
            assert_eq!(ok(&ok(s).spec()), ok(s));
        }
    }
}
