//! What the TLS settings' values mean, checked where the settings are read: `--ciphers` (an OpenSSL
//! cipher string, of which the suites the TLS library offers are taken and any other suite named is
//! refused), `--ssl-version` (gunicorn's protocol names, read as the lowest version served) and
//! `--cert-reqs` (0, 1, 2 as Python's `ssl.CERT_*`). The suites are named here by their IANA numbers;
//! `crate::tls` turns them into the library's own.

/// One cipher suite the server can offer: its OpenSSL name, IANA number and properties, for the
/// OpenSSL aliases (`ECDHE+AESGCM`, `!SHA384`) that select by them.
struct Suite {
    name: &'static str,
    code: u16,
    /// TLS 1.3 suites are chosen apart from the TLS 1.2 ones, as in OpenSSL.
    tls13: bool,
    auth: &'static str,
    cipher: &'static str,
    bits: u16,
    mac: &'static str,
}

const fn s13(
    name: &'static str,
    code: u16,
    cipher: &'static str,
    bits: u16,
    mac: &'static str,
) -> Suite {
    // A TLS 1.3 suite names no authentication: that is the certificate's.
    Suite {
        tls13: true,
        ..s12(name, code, "", cipher, bits, mac)
    }
}

const fn s12(
    name: &'static str,
    code: u16,
    auth: &'static str,
    cipher: &'static str,
    bits: u16,
    mac: &'static str,
) -> Suite {
    Suite {
        name,
        code,
        tls13: false,
        auth,
        cipher,
        bits,
        mac,
    }
}

/// Every suite the server offers, in its default order of preference.
const SUITES: &[Suite] = &[
    s13("TLS_AES_256_GCM_SHA384", 0x1302, "AESGCM", 256, "SHA384"),
    s13("TLS_AES_128_GCM_SHA256", 0x1301, "AESGCM", 128, "SHA256"),
    s13(
        "TLS_CHACHA20_POLY1305_SHA256",
        0x1303,
        "CHACHA20",
        256,
        "SHA256",
    ),
    s12(
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        0xC02C,
        "ECDSA",
        "AESGCM",
        256,
        "SHA384",
    ),
    s12(
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        0xC02B,
        "ECDSA",
        "AESGCM",
        128,
        "SHA256",
    ),
    s12(
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        0xCCA9,
        "ECDSA",
        "CHACHA20",
        256,
        "",
    ),
    s12(
        "ECDHE-RSA-AES256-GCM-SHA384",
        0xC030,
        "RSA",
        "AESGCM",
        256,
        "SHA384",
    ),
    s12(
        "ECDHE-RSA-AES128-GCM-SHA256",
        0xC02F,
        "RSA",
        "AESGCM",
        128,
        "SHA256",
    ),
    s12(
        "ECDHE-RSA-CHACHA20-POLY1305",
        0xCCA8,
        "RSA",
        "CHACHA20",
        256,
        "",
    ),
];

/// The OpenSSL name of a suite by its IANA number (`SSL_CIPHER` in the environ).
pub fn cipher_name(code: u16) -> Option<&'static str> {
    SUITES.iter().find(|s| s.code == code).map(|s| s.name)
}

/// Whether the OpenSSL alias `word` selects `s`; None for a word that is not an alias known here.
fn alias_selects(word: &str, s: &Suite) -> Option<bool> {
    let tls12 = !s.tls13;
    Some(match word {
        // Every suite here is strong, forward-secret and AEAD.
        "ALL" | "DEFAULT" | "HIGH" | "AEAD" | "FIPS" => tls12,
        "ECDHE" | "EECDH" | "kECDHE" | "ECDH" | "kEECDH" | "TLSv1.2" => tls12,
        "aRSA" | "RSA" => tls12 && s.auth == "RSA",
        "aECDSA" | "ECDSA" => tls12 && s.auth == "ECDSA",
        "AESGCM" => tls12 && s.cipher == "AESGCM",
        "AES" => tls12 && s.cipher == "AESGCM",
        "AES128" => tls12 && s.cipher == "AESGCM" && s.bits == 128,
        "AES256" => tls12 && s.cipher == "AESGCM" && s.bits == 256,
        "CHACHA20" => tls12 && s.cipher == "CHACHA20",
        "SHA256" => tls12 && s.mac == "SHA256",
        "SHA384" => tls12 && s.mac == "SHA384",
        name => {
            if SUITES.iter().any(|x| x.name == name) {
                s.name == name
            } else {
                return None;
            }
        }
    })
}

/// The suites an OpenSSL cipher string selects, as IANA numbers in the order the string gives them
/// (TLS 1.3 ones first). As in OpenSSL, the string chooses among the TLS 1.2 suites and TLS 1.3's stay
/// all on, unless the string names TLS 1.3 suites itself: then those are taken. Elements are separated by
/// `:`, `,` or spaces; `!X` and `-X` remove, `+X` and `X` add, `A+B` is what both select; `@STRENGTH` and
/// `@SECLEVEL=n` are accepted and change nothing. Removing what is not offered anyway (`!aNULL`, `!MD5`)
/// is fine; asking for a suite (or alias) of which nothing is offered is an error naming each one.
pub fn cipher_suites(spec: &str) -> Result<Vec<u16>, String> {
    let mut chosen: Vec<&Suite> = Vec::new();
    let mut removed: Vec<&Suite> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for element in spec
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        if element.starts_with('@') {
            continue;
        }
        let (remove, body) = match element.as_bytes()[0] {
            b'!' | b'-' => (true, &element[1..]),
            b'+' => (false, &element[1..]),
            _ => (false, element),
        };
        let words: Vec<&str> = body.split('+').filter(|w| !w.is_empty()).collect();
        let mut unknown = false;
        let selected: Vec<&Suite> = SUITES
            .iter()
            .filter(|s| {
                words.iter().all(|w| match alias_selects(w, s) {
                    Some(yes) => yes,
                    None => {
                        unknown = true;
                        false
                    }
                })
            })
            .collect();
        if remove {
            removed.extend(selected);
        } else if words.is_empty() || unknown || selected.is_empty() {
            refused.push(element.to_string());
        } else {
            for s in selected {
                if !chosen.iter().any(|c| c.code == s.code) {
                    chosen.push(s);
                }
            }
        }
    }
    if !refused.is_empty() {
        let offered: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
        return Err(format!(
            "not offered by ferricorn's TLS: {} (it offers {})",
            refused.join(", "),
            offered.join(", ")
        ));
    }
    chosen.retain(|c| !removed.iter().any(|r| r.code == c.code));
    let tls13_named = chosen.iter().any(|s| s.tls13);
    let mut out: Vec<u16> = if tls13_named {
        chosen.iter().filter(|s| s.tls13).map(|s| s.code).collect()
    } else {
        SUITES.iter().filter(|s| s.tls13).map(|s| s.code).collect()
    };
    out.extend(chosen.iter().filter(|s| !s.tls13).map(|s| s.code));
    if out.is_empty() {
        return Err("selects no cipher suite".to_string());
    }
    Ok(out)
}

/// The lowest protocol version served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// `--ssl-version`: gunicorn's names (and `ssl.PROTOCOL_*` numbers) read as the lowest version served.
/// The negotiating ones (`TLS`, `SSLv23`, `TLS_SERVER`) and `TLSv1_2` mean TLS 1.2 and up; `TLSv1_3`
/// means TLS 1.3 only. Versions below 1.2 are refused: the TLS library has none.
pub fn min_version(value: &str) -> Result<MinVersion, String> {
    let v = value.trim();
    let v = v.strip_prefix("PROTOCOL_").unwrap_or(v);
    match v {
        "TLS" | "SSLv23" | "TLS_SERVER" | "TLSv1_2" | "TLSv1.2" | "1.2" | "2" | "5" | "17" => {
            Ok(MinVersion::Tls12)
        }
        "TLSv1_3" | "TLSv1.3" | "1.3" => Ok(MinVersion::Tls13),
        "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1_1" | "1" | "3" | "4" => Err(format!(
            "'{value}' is older than TLS 1.2, which ferricorn does not serve (use TLSv1_2 or TLSv1_3)"
        )),
        _ => Err(format!(
            "invalid choice: '{value}' (choose from TLS, TLSv1_2, TLSv1_3; SSLv23 and TLS_SERVER mean TLS)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(spec: &str) -> Vec<&'static str> {
        cipher_suites(spec)
            .unwrap()
            .into_iter()
            .map(|c| cipher_name(c).unwrap())
            .collect()
    }

    #[test]
    fn exact_names_in_their_order_with_tls13_kept() {
        assert_eq!(
            names("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305"),
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_AES_128_GCM_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-CHACHA20-POLY1305"
            ]
        );
    }

    #[test]
    fn aliases_intersections_and_removals() {
        assert_eq!(
            names("ECDHE+AESGCM:!SHA384:!aNULL:!MD5:@STRENGTH")[3..],
            [
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256"
            ]
        );
        assert_eq!(names("HIGH").len(), 9);
        assert_eq!(names("aRSA+CHACHA20")[3..], ["ECDHE-RSA-CHACHA20-POLY1305"]);
        // Naming TLS 1.3 suites chooses among them too.
        assert_eq!(
            names("TLS_AES_128_GCM_SHA256 ECDHE-ECDSA-AES128-GCM-SHA256"),
            ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"]
        );
    }

    #[test]
    fn suites_not_offered_are_named() {
        let e = cipher_suites(
            "ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256:AES128-SHA:DHE+AESGCM",
        )
        .unwrap_err();
        assert!(
            e.starts_with("not offered by ferricorn's TLS: DHE-RSA-AES128-GCM-SHA256, AES128-SHA, DHE+AESGCM (it offers TLS_AES_256_GCM_SHA384"),
            "{e}"
        );
        assert!(cipher_suites("NOSUCH").is_err());
        assert!(cipher_suites("!ALL").is_ok(), "TLS 1.3 stays on");
    }

    #[test]
    fn versions() {
        assert_eq!(min_version("TLS"), Ok(MinVersion::Tls12));
        assert_eq!(min_version("PROTOCOL_TLS_SERVER"), Ok(MinVersion::Tls12));
        assert_eq!(min_version("2"), Ok(MinVersion::Tls12));
        assert_eq!(min_version("TLSv1_3"), Ok(MinVersion::Tls13));
        assert!(min_version("TLSv1")
            .unwrap_err()
            .contains("older than TLS 1.2"));
        assert!(min_version("bogus").unwrap_err().contains("invalid choice"));
    }
}
