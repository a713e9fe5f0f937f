//! X.509 certificates read for people and apps: a client certificate's fields as mod_ssl names them
//! for the environ (`SSL_CLIENT_S_DN` and friends: distinguished names in RFC 4514 form, the serial in
//! hex, validity as `Dec  3 13:43:01 2026 GMT`), PEM text, and the server certificate's summary for the
//! log. Certificates reach this module already parsed and verified by rustls (the client's) or loaded
//! from the operator's file (the server's); a field that cannot be read is left empty, never a panic.

use rustls_pki_types::CertificateDer;
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// A client certificate as the app sees it.
#[derive(Debug)]
pub struct ClientCert {
    /// The chain the client sent, PEM, its own certificate first.
    pub chain_pem: Vec<String>,
    /// Subject and issuer distinguished names (RFC 4514).
    pub subject: String,
    pub issuer: String,
    /// The subject's common name, when it has one.
    pub subject_cn: Option<String>,
    /// The serial number in upper-case hex.
    pub serial: String,
    /// Start and end of validity, as mod_ssl writes them.
    pub not_before: String,
    pub not_after: String,
}

impl ClientCert {
    /// The fields of a verified chain (not empty).
    pub fn of(chain: &[CertificateDer<'_>]) -> ClientCert {
        let chain_pem = chain.iter().map(|c| pem(c)).collect();
        match Certificate::from_der(chain[0].as_ref()) {
            Ok(c) => {
                let tbs = &c.tbs_certificate;
                ClientCert {
                    chain_pem,
                    subject: tbs.subject.to_string(),
                    issuer: tbs.issuer.to_string(),
                    subject_cn: common_name(&tbs.subject),
                    serial: hex(tbs.serial_number.as_bytes()),
                    not_before: mod_ssl_time(tbs.validity.not_before),
                    not_after: mod_ssl_time(tbs.validity.not_after),
                }
            }
            Err(_) => ClientCert {
                chain_pem,
                subject: String::new(),
                issuer: String::new(),
                subject_cn: None,
                serial: String::new(),
                not_before: String::new(),
                not_after: String::new(),
            },
        }
    }
}

/// The server certificate as the log shows it.
pub struct ServerCert {
    /// `subject CN=example.com, serial 0A3F, valid until Dec  3 13:43:01 2027 GMT`.
    pub summary: String,
    /// Why the certificate is not valid now, if it is not.
    pub out_of_date: Option<String>,
}

/// Read the server's own certificate (from the operator's file: a certificate that does not parse is
/// an error here, while rustls would only refuse it at the first handshake).
pub fn describe(der: &CertificateDer<'_>) -> Result<ServerCert, String> {
    let c = Certificate::from_der(der.as_ref())
        .map_err(|e| format!("the first certificate cannot be read: {e}"))?;
    let tbs = &c.tbs_certificate;
    let not_after = tbs.validity.not_after.to_unix_duration();
    let not_before = tbs.validity.not_before.to_unix_duration();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let out_of_date = if now > not_after {
        Some(format!(
            "it expired on {}",
            mod_ssl_time(tbs.validity.not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "it is not valid before {}",
            mod_ssl_time(tbs.validity.not_before)
        ))
    } else {
        None
    };
    Ok(ServerCert {
        summary: format!(
            "subject {}, serial {}, valid until {}",
            tbs.subject,
            hex(tbs.serial_number.as_bytes()),
            mod_ssl_time(tbs.validity.not_after)
        ),
        out_of_date,
    })
}

/// A certificate as PEM text.
pub fn pem(der: &CertificateDer<'_>) -> String {
    use pkcs8::der::pem::{encode_string, LineEnding};
    encode_string("CERTIFICATE", LineEnding::LF, der.as_ref()).unwrap_or_default()
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    // The most specific CN: the last one in the sequence.
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .rfind(|atv| atv.oid == CN)
        .map(|atv| {
            // `CN=value`, escaped as RFC 4514 writes it; the value is what follows the first `=`.
            let text = atv.to_string();
            text.split_once('=')
                .map_or(text.clone(), |(_, v)| v.to_string())
        })
}

/// Upper-case hex of a serial number's bytes, without the sign byte DER may put in front.
fn hex(bytes: &[u8]) -> String {
    let trimmed = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    trimmed.iter().map(|b| format!("{b:02X}")).collect()
}

/// `Dec  3 13:43:01 2026 GMT`, as mod_ssl (OpenSSL's `ASN1_TIME_print`) writes a validity date.
fn mod_ssl_time(t: x509_cert::time::Time) -> String {
    let secs = t.to_unix_duration().as_secs() as i64;
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%b %e %H:%M:%S %Y GMT").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_drop_the_sign_byte() {
        assert_eq!(hex(&[0x00, 0x9A, 0x01]), "9A01");
        assert_eq!(hex(&[0x00]), "00");
        assert_eq!(hex(&[0x12]), "12");
    }
}
