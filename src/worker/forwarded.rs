//! Whether a request came in over https by what a trusted proxy says (`--forwarded-allow-ips` and
//! `--secure-scheme-headers`), decided on the I/O side for the request's connection info.

use crate::exchange::Peer;
use crate::http::RequestHead;

/// `--forwarded-allow-ips` and the secure scheme headers: which peers may tell the scheme, and how.
pub struct ForwardedTrust {
    any: bool,
    ips: Vec<String>,
    /// (lower-case header name, value meaning https)
    secure_headers: Vec<(String, String)>,
}

impl ForwardedTrust {
    pub fn new(cfg: &crate::config::Config) -> ForwardedTrust {
        ForwardedTrust {
            any: cfg.forwarded_allow_ips.iter().any(|ip| ip.trim() == "*"),
            ips: cfg
                .forwarded_allow_ips
                .iter()
                .map(|s| s.trim().to_string())
                .collect(),
            secure_headers: cfg
                .secure_scheme_headers
                .iter()
                .map(|(h, v)| (h.to_ascii_lowercase(), v.clone()))
                .collect(),
        }
    }

    /// Whether `peer` is in `--forwarded-allow-ips` (also who may speak cleartext HTTP/2).
    pub(super) fn trusts(&self, peer: &Peer) -> bool {
        // A unix-socket peer is the local proxy itself.
        self.any || peer.ip.is_empty() || self.ips.contains(&peer.ip)
    }

    /// Whether the request came in over https according to a trusted peer's headers. Headers that
    /// disagree are refused, as gunicorn does: the scheme would be a guess.
    pub fn https(&self, head: &RequestHead, peer: &Peer) -> Result<bool, crate::http::HttpError> {
        if self.secure_headers.is_empty() || !self.trusts(peer) {
            return Ok(false);
        }
        let mut seen: Option<bool> = None;
        for (name, value) in &head.headers {
            if let Some((_, want)) = self
                .secure_headers
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(name))
            {
                let https = value.as_slice() == want.as_bytes();
                if seen.is_some_and(|s| s != https) {
                    return Err(crate::http::HttpError::ContradictorySchemeHeaders);
                }
                seen = Some(https);
            }
        }
        Ok(seen.unwrap_or(false))
    }
}
