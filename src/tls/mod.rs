//! TLS material and what a TLS connection tells the app, on rustls (never OpenSSL bindings).
//!
//! - `Material`: the certificate chain, private key and client CAs read from the files the TLS settings
//!   name (`--certfile`, `--keyfile` with `--keyfile-password`, `--ca-certs`), with `--cert-reqs`,
//!   `--ciphers` and `--ssl-version` applied. The master reads and checks it at boot and again on `HUP`
//!   (a broken new certificate keeps the old material); workers inherit it across fork and build their
//!   `rustls::ServerConfig` from it, so a worker never reads a file that may be half-written.
//! - `TlsInfo`: one connection's protocol, cipher, ALPN protocol and client certificate (`cert`), for the
//!   WSGI environ (`HTTPS`, `SSL_*`) and the ASGI `tls` extension.
//!
//! The handshake itself and the stream a connection runs on are the worker's (`worker::tls`).

pub mod cert;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::tls::{cipher_suites, min_version, MinVersion};
use crate::config::Config;
pub use cert::ClientCert;

/// The ALPN protocol of HTTP/1.1. The server offers only it for now; a client that offers ALPN without
/// it is refused in the handshake (RFC 7301's `no_application_protocol`).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// The ALPN name of HTTP/2 (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";

/// What the server needs to serve TLS, read and checked from the TLS settings' files.
pub struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The CAs of client certificates, when `--cert-reqs` asks for them.
    client_roots: Option<Arc<RootCertStore>>,
    /// `--cert-reqs 1`: a client may send no certificate.
    client_optional: bool,
    provider: Arc<CryptoProvider>,
    min: MinVersion,
    /// The server's own certificate, PEM (the ASGI `tls` extension's `server_cert`).
    pub server_pem: Arc<str>,
    /// The server certificate, for the log: subject, serial, end of validity.
    pub summary: String,
    /// Set when the server certificate is outside its validity now (the log warns: clients refuse it).
    pub out_of_date: Option<String>,
}

impl Material {
    /// Read the material the config names; None when TLS is off. Errors are one line naming the setting
    /// and the file.
    pub fn load(cfg: &Config) -> Result<Option<Material>, String> {
        if !cfg.is_ssl() {
            return Ok(None);
        }
        let Some(certfile) = cfg.certfile.as_deref() else {
            return Err("keyfile is set but certfile is not: TLS needs a certificate".to_string());
        };
        let cert_text = read("certfile", certfile)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_text)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certfile '{}': {e}", certfile.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "certfile '{}': no certificate in it (PEM, -----BEGIN CERTIFICATE-----)",
                certfile.display()
            ));
        }
        // As gunicorn (Python's `load_cert_chain`): without a keyfile the key is in the certfile.
        let (key_setting, key_path, key_text) = match cfg.keyfile.as_deref() {
            Some(k) => ("keyfile", k, read("keyfile", k)?),
            None => ("certfile", certfile, cert_text.clone()),
        };
        let key = private_key(&key_text, cfg.keyfile_password.as_deref())
            .map_err(|e| format!("{key_setting} '{}': {e}", key_path.display()))?;

        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(spec) = &cfg.ciphers {
            let codes = cipher_suites(spec).map_err(|e| format!("ciphers: {e}"))?;
            let all = std::mem::take(&mut provider.cipher_suites);
            provider.cipher_suites = codes
                .iter()
                .filter_map(|c| all.iter().find(|s| u16::from(s.suite()) == *c).copied())
                .collect();
        }
        let min = min_version(&cfg.ssl_version).map_err(|e| format!("ssl_version: {e}"))?;

        let client_roots = match (cfg.cert_reqs, cfg.ca_certs.as_deref()) {
            (0, _) => None,
            (_, None) => {
                return Err(format!(
                    "cert_reqs {} asks for client certificates: set ca_certs to the CAs they are checked against",
                    cfg.cert_reqs
                ))
            }
            (_, Some(path)) => {
                let text = read("ca_certs", path)?;
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&text) {
                    let c = c.map_err(|e| format!("ca_certs '{}': {e}", path.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("ca_certs '{}': {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "ca_certs '{}': no certificate in it",
                        path.display()
                    ));
                }
                Some(Arc::new(roots))
            }
        };
        let server = cert::describe(&chain[0])
            .map_err(|e| format!("certfile '{}': {e}", certfile.display()))?;
        let material = Material {
            server_pem: cert::pem(&chain[0]).into(),
            summary: server.summary,
            out_of_date: server.out_of_date,
            chain,
            key,
            client_roots,
            client_optional: cfg.cert_reqs == 1,
            provider: Arc::new(provider),
            min,
        };
        // Everything the handshake needs, checked now: the key matches the certificate, the suites
        // suit the versions.
        material
            .server_config(&[ALPN_HTTP1])
            .map_err(|e| format!("certfile '{}': {e}", certfile.display()))?;
        Ok(Some(material))
    }

    /// A server config for this material, offering the ALPN protocols `alpn` (in order of preference).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.min {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("ciphers and ssl_version leave nothing to serve: {e}"))?;
        let builder = match &self.client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    self.provider.clone(),
                );
                let verifier = if self.client_optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| format!("client certificate CAs: {e}"))?,
                )
            }
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{setting} '{}': cannot read it: {e}", path.display()))
}

const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The first private key in a PEM text: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), or an encrypted PKCS#8 key
/// opened with `password`. OpenSSL's older encrypted form (`Proc-Type: 4,ENCRYPTED`) is refused with
/// the command that converts it.
fn private_key(text: &[u8], password: Option<&str>) -> Result<PrivateKeyDer<'static>, String> {
    let s = String::from_utf8_lossy(text);
    if let Some(start) = s.find(ENCRYPTED_BEGIN) {
        let Some(len) = s[start..].find(ENCRYPTED_END) else {
            return Err("the encrypted key has no end line".to_string());
        };
        let block = &s[start..start + len + ENCRYPTED_END.len()];
        let Some(password) = password else {
            return Err(
                "the key is encrypted: set keyfile_password (--keyfile-password)".to_string(),
            );
        };
        let (_, der) = pkcs8::der::pem::decode_vec(block.as_bytes())
            .map_err(|e| format!("the encrypted key is not valid PEM: {e}"))?;
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
            .map_err(|e| format!("the encrypted key cannot be read: {e}"))?;
        let plain = info
            .decrypt(password)
            .map_err(|_| "the key cannot be decrypted: wrong keyfile_password?".to_string())?;
        return Ok(PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec()).into());
    }
    if s.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(
            "the key is encrypted in OpenSSL's legacy format; convert it to PKCS#8 with `openssl pkcs8 -topk8 -in OLD -out NEW`"
                .to_string(),
        );
    }
    if let Some(section) = AnyKey::pem_slice_iter(text).next() {
        return section.map(|k| k.0).map_err(|e| e.to_string());
    }
    Err("no private key in it (PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".to_string())
}

/// A PEM section that is a private key of any of the three unencrypted kinds (other sections skipped).
struct AnyKey(PrivateKeyDer<'static>);

impl PemObject for AnyKey {
    fn from_pem(kind: SectionKind, der: Vec<u8>) -> Option<Self> {
        PrivateKeyDer::from_pem(kind, der).map(AnyKey)
    }
}

/// What one TLS connection tells the app.
#[derive(Debug)]
pub struct TlsInfo {
    /// The protocol version's number (0x0303 for TLS 1.2, 0x0304 for 1.3) and its name as mod_ssl
    /// writes it (`TLSv1.2`).
    pub version: u16,
    pub protocol: &'static str,
    /// The cipher suite's IANA number and OpenSSL name.
    pub cipher_suite: u16,
    pub cipher: &'static str,
    /// The ALPN protocol agreed on, if the client offered ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    pub server_cert: Arc<str>,
    /// The client's certificate, verified against `--ca-certs` (a certificate that fails is refused in
    /// the handshake and never reaches the app).
    pub client: Option<ClientCert>,
}

impl TlsInfo {
    /// The facts of a connection whose handshake is complete.
    pub fn of(conn: &rustls::ServerConnection, server_cert: &Arc<str>) -> TlsInfo {
        let version = conn.protocol_version().map_or(0, u16::from);
        let cipher_suite = conn
            .negotiated_cipher_suite()
            .map_or(0, |s| u16::from(s.suite()));
        TlsInfo {
            version,
            protocol: match version {
                0x0304 => "TLSv1.3",
                0x0303 => "TLSv1.2",
                _ => "",
            },
            cipher_suite,
            cipher: crate::config::tls::cipher_name(cipher_suite).unwrap_or(""),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: conn.server_name().map(str::to_string),
            server_cert: server_cert.clone(),
            client: conn
                .peer_certificates()
                .filter(|chain| !chain.is_empty())
                .map(ClientCert::of),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_without_a_key_says_so() {
        let e = private_key(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            None,
        )
        .unwrap_err();
        assert!(e.contains("no private key"), "{e}");
    }

    #[test]
    fn an_encrypted_key_needs_its_password() {
        let text = format!("{ENCRYPTED_BEGIN}\nMAA=\n{ENCRYPTED_END}\n");
        let e = private_key(text.as_bytes(), None).unwrap_err();
        assert!(e.contains("keyfile_password"), "{e}");
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let e = private_key(legacy, Some("x")).unwrap_err();
        assert!(e.contains("openssl pkcs8 -topk8"), "{e}");
    }

    #[test]
    fn no_tls_without_a_certificate_or_key() {
        assert!(Material::load(&Config::default()).unwrap().is_none());
        let cfg = Config {
            keyfile: Some("/nonexistent/key.pem".into()),
            ..Config::default()
        };
        let e = Material::load(&cfg).err().unwrap();
        assert!(e.contains("certfile is not"), "{e}");
        let cfg = Config {
            certfile: Some("/nonexistent/cert.pem".into()),
            ..Config::default()
        };
        let e = Material::load(&cfg).err().unwrap();
        assert!(
            e.starts_with("certfile '/nonexistent/cert.pem': cannot read it"),
            "{e}"
        );
    }
}
