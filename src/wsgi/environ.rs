//! Building the WSGI environ (PEP 3333 plus gunicorn's extra keys) from a parsed request, in Rust.
//! Over TLS it also carries mod_ssl's variables (`HTTPS`, `SSL_PROTOCOL`, `SSL_CLIENT_*`: `tls_keys`).
//!
//! Per request the work is: copy a prebuilt dict of the constant keys, then set the request's own keys with
//! interned key strings. Header names are turned into `HTTP_*` keys once and cached per thread.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::exchange::ConnInfo;
use crate::http::RequestHead;
use crate::tls::TlsInfo;

/// How many distinct header names a thread remembers as ready `HTTP_*` keys; a client sending endless new
/// names must not grow the cache without bound.
const HEADER_KEY_CACHE: usize = 256;

macro_rules! keys {
    ($($field:ident = $text:expr),* $(,)?) => {
        struct Keys { $($field: Py<PyString>,)* }
        impl Keys {
            fn new(py: Python<'_>) -> Keys {
                Keys { $($field: PyString::intern(py, $text).unbind(),)* }
            }
        }
    };
}

keys! {
    request_method = "REQUEST_METHOD",
    script_name = "SCRIPT_NAME",
    path_info = "PATH_INFO",
    query_string = "QUERY_STRING",
    raw_uri = "RAW_URI",
    server_protocol = "SERVER_PROTOCOL",
    server_name = "SERVER_NAME",
    server_port = "SERVER_PORT",
    remote_addr = "REMOTE_ADDR",
    remote_port = "REMOTE_PORT",
    content_type = "CONTENT_TYPE",
    content_length = "CONTENT_LENGTH",
    url_scheme = "wsgi.url_scheme",
    input = "wsgi.input",
}

pub struct EnvironBuilder {
    keys: Keys,
    base: Py<PyDict>,
    header_keys: HashMap<Vec<u8>, Py<PyString>>,
    script_name: String,
    http: Py<PyString>,
    https: Py<PyString>,
    proto_10: Py<PyString>,
    proto_11: Py<PyString>,
    proto_20: Py<PyString>,
}

impl EnvironBuilder {
    /// `constants` holds the keys that never change within a worker (wsgi.version, wsgi.errors, ...).
    pub fn new(py: Python<'_>, constants: Bound<'_, PyDict>) -> EnvironBuilder {
        // gunicorn takes SCRIPT_NAME from the process environment (after --env is applied).
        let script_name = std::env::var("SCRIPT_NAME").unwrap_or_default();
        let script_name = script_name.trim_end_matches('/').to_string();
        EnvironBuilder {
            keys: Keys::new(py),
            base: constants.unbind(),
            header_keys: HashMap::new(),
            script_name,
            http: PyString::intern(py, "http").unbind(),
            https: PyString::intern(py, "https").unbind(),
            proto_10: PyString::intern(py, "HTTP/1.0").unbind(),
            proto_11: PyString::intern(py, "HTTP/1.1").unbind(),
            proto_20: PyString::intern(py, "HTTP/2.0").unbind(),
        }
    }

    fn header_key<'py>(&mut self, py: Python<'py>, name: &str) -> Bound<'py, PyString> {
        if let Some(k) = self.header_keys.get(name.as_bytes()) {
            return k.bind(py).clone();
        }
        let mut key = String::with_capacity(name.len() + 5);
        key.push_str("HTTP_");
        for c in name.chars() {
            key.push(if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            });
        }
        let k = PyString::new(py, &key);
        if self.header_keys.len() < HEADER_KEY_CACHE {
            self.header_keys
                .insert(name.as_bytes().to_vec(), k.clone().unbind());
        }
        k
    }

    pub fn build<'py>(
        &mut self,
        py: Python<'py>,
        head: &RequestHead,
        conn: &ConnInfo,
        input: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (peer, server, https) = (&*conn.peer, &*conn.server, conn.https);
        let env = self.base.bind(py).copy()?;
        let k = &self.keys;
        env.set_item(k.request_method.bind(py), head.method.as_str())?;
        env.set_item(k.raw_uri.bind(py), head.target.as_str())?;
        env.set_item(k.query_string.bind(py), head.query.as_str())?;
        env.set_item(
            k.server_protocol.bind(py),
            match head.protocol() {
                "HTTP/1.0" => self.proto_10.bind(py),
                "HTTP/2.0" => self.proto_20.bind(py),
                _ => self.proto_11.bind(py),
            },
        )?;
        env.set_item(k.remote_addr.bind(py), peer.ip.as_str())?;
        env.set_item(
            k.remote_port.bind(py),
            itoa::Buffer::new().format(peer.port),
        )?;
        env.set_item(k.input.bind(py), input)?;
        if let Some(tls) = &conn.tls {
            tls_keys(&env, tls)?;
        }
        if let Some(proxy) = &peer.proxy {
            // As gunicorn: a PROXY header also tells the app which of the proxy's addresses was used.
            env.set_item("PROXY_PROTOCOL", proxy.protocol)?;
            env.set_item("PROXY_ADDR", proxy.ip.as_str())?;
            env.set_item("PROXY_PORT", itoa::Buffer::new().format(proxy.port))?;
        }

        // Header names with '_' were already dropped or refused by the parser (`--header-map`).
        let mut host: Option<&[u8]> = None;
        for (name, value) in &head.headers {
            let pyvalue = latin1(py, value);
            if name.eq_ignore_ascii_case("content-type") {
                env.set_item(self.keys.content_type.bind(py), pyvalue)?;
                continue;
            }
            if name.eq_ignore_ascii_case("content-length") {
                env.set_item(self.keys.content_length.bind(py), pyvalue)?;
                continue;
            }
            if name.eq_ignore_ascii_case("host") {
                host = Some(value.as_slice());
            }
            let key = self.header_key(py, name);
            let joined = match env.get_item(&key)? {
                Some(prev) => {
                    let prev: String = prev.extract()?;
                    let mut s = prev;
                    s.push(',');
                    s.push_str(&latin1_string(value));
                    Some(s)
                }
                None => None,
            };
            match joined {
                Some(s) => env.set_item(key, s)?,
                None => env.set_item(key, pyvalue)?,
            }
        }
        let k = &self.keys;
        env.set_item(
            k.url_scheme.bind(py),
            if https {
                self.https.bind(py)
            } else {
                self.http.bind(py)
            },
        )?;
        let (server_name, server_port) = match host {
            Some(h) => split_host(&latin1_string(h), https),
            None => (server.name.clone(), server.port.clone()),
        };
        env.set_item(k.server_name.bind(py), server_name)?;
        env.set_item(k.server_port.bind(py), server_port)?;

        let path = percent_decode_latin1(head.path.as_bytes());
        let (script, path_info) =
            if !self.script_name.is_empty() && path.starts_with(self.script_name.as_str()) {
                (self.script_name.as_str(), &path[self.script_name.len()..])
            } else {
                (self.script_name.as_str(), path.as_str())
            };
        env.set_item(k.script_name.bind(py), script)?;
        env.set_item(k.path_info.bind(py), path_info)?;
        Ok(env)
    }
}

/// mod_ssl's variables for a TLS connection, under mod_ssl's names (gunicorn itself sets none but
/// `wsgi.url_scheme`): `HTTPS`, the protocol, cipher and SNI name, and — when the client sent a
/// certificate, verified against `--ca-certs` — its subject, issuer, serial, validity and PEM.
fn tls_keys(env: &Bound<'_, PyDict>, tls: &TlsInfo) -> PyResult<()> {
    env.set_item("HTTPS", "on")?;
    env.set_item("SSL_PROTOCOL", tls.protocol)?;
    env.set_item("SSL_CIPHER", tls.cipher)?;
    if let Some(name) = &tls.server_name {
        env.set_item("SSL_TLS_SNI", name.as_str())?;
    }
    let Some(client) = &tls.client else {
        env.set_item("SSL_CLIENT_VERIFY", "NONE")?;
        return Ok(());
    };
    env.set_item("SSL_CLIENT_VERIFY", "SUCCESS")?;
    env.set_item("SSL_CLIENT_S_DN", client.subject.as_str())?;
    env.set_item("SSL_CLIENT_I_DN", client.issuer.as_str())?;
    if let Some(cn) = &client.subject_cn {
        env.set_item("SSL_CLIENT_S_DN_CN", cn.as_str())?;
    }
    env.set_item("SSL_CLIENT_M_SERIAL", client.serial.as_str())?;
    env.set_item("SSL_CLIENT_V_START", client.not_before.as_str())?;
    env.set_item("SSL_CLIENT_V_END", client.not_after.as_str())?;
    if let Some((own, rest)) = client.chain_pem.split_first() {
        env.set_item("SSL_CLIENT_CERT", own.as_str())?;
        for (i, c) in rest.iter().enumerate() {
            env.set_item(format!("SSL_CLIENT_CERT_CHAIN_{i}"), c.as_str())?;
        }
    }
    Ok(())
}

/// Header bytes as a Python str, one code point per byte (PEP 3333's "native strings" are latin-1).
fn latin1<'py>(py: Python<'py>, value: &[u8]) -> Bound<'py, PyAny> {
    if value.is_ascii() {
        // SAFETY-free fast path: ASCII is valid UTF-8.
        return PyString::new(py, std::str::from_utf8(value).unwrap_or_default()).into_any();
    }
    PyString::new(py, &latin1_string(value)).into_any()
}

fn latin1_string(value: &[u8]) -> String {
    value.iter().map(|&b| b as char).collect()
}

/// `Host` into SERVER_NAME and SERVER_PORT, defaulting the port by scheme.
fn split_host(host: &str, https: bool) -> (String, String) {
    let default_port = if https { "443" } else { "80" };
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, after)) = rest.split_once(']') {
            let port = after
                .strip_prefix(':')
                .filter(|p| !p.is_empty())
                .unwrap_or(default_port);
            return (format!("[{addr}]"), port.to_string());
        }
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() => (name.to_string(), port.to_string()),
        _ => (
            host.trim_end_matches(':').to_string(),
            default_port.to_string(),
        ),
    }
}

/// Percent-decode a path into a latin-1 "native string": each decoded byte becomes one code point.
pub fn percent_decode_latin1(raw: &[u8]) -> String {
    crate::http::percent_decode(raw)
        .into_iter()
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_latin1() {
        assert_eq!(percent_decode_latin1(b"/caf%C3%A9"), "/caf\u{c3}\u{a9}");
        assert_eq!(percent_decode_latin1(b"/a%20b"), "/a b");
        assert_eq!(percent_decode_latin1(b"/bad%2"), "/bad%2");
        assert_eq!(percent_decode_latin1(b"/bad%zz"), "/bad%zz");
        assert_eq!(percent_decode_latin1(b"%41"), "A");
    }

    #[test]
    fn host_splitting() {
        assert_eq!(
            split_host("example.com", false),
            ("example.com".into(), "80".into())
        );
        assert_eq!(
            split_host("example.com:8080", false),
            ("example.com".into(), "8080".into())
        );
        assert_eq!(
            split_host("example.com", true),
            ("example.com".into(), "443".into())
        );
        assert_eq!(
            split_host("[::1]:9000", false),
            ("[::1]".into(), "9000".into())
        );
        assert_eq!(split_host("[::1]", false), ("[::1]".into(), "80".into()));
    }
}
