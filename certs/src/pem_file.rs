//! Reading certificate files: PEM (the usual) or DER, with errors that say
//! what the file holds instead when it is not a certificate.

use std::fs;
use std::io;
use std::path::Path;

use x509_parser::pem::Pem;
use x509_parser::prelude::X509Certificate;

use crate::error::CertsError;

/// The PEM label of a certificate.
const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CertsError> {
    fs::read(path).map_err(|source| CertsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a file that must exist for a CA: `NotFound` becomes [`CertsError::CaMissing`].
pub(crate) fn read_ca_file(dir: &Path, path: &Path) -> Result<Vec<u8>, CertsError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => CertsError::CaMissing {
            dir: dir.to_owned(),
            missing: path.to_owned(),
        },
        _ => CertsError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// The DER of the first certificate in `data` (PEM or DER), read from `path`.
pub(crate) fn certificate_der(path: &Path, data: &[u8]) -> Result<Vec<u8>, CertsError> {
    let mut first = certificates(path, data, Some(1))?;
    // `certificates` returns at least one certificate or an error.
    Ok(first.swap_remove(0))
}

/// The DER of every certificate in `data` (PEM or DER), in file order, read
/// from `path`: a CA bundle. Never empty.
pub(crate) fn all_certificates_der(path: &Path, data: &[u8]) -> Result<Vec<Vec<u8>>, CertsError> {
    certificates(path, data, None)
}

/// Up to `limit` certificates of `data` (all without one), at least one.
/// Blocks past the limit are not read, so not checked either.
fn certificates(
    path: &Path,
    data: &[u8],
    limit: Option<usize>,
) -> Result<Vec<Vec<u8>>, CertsError> {
    let not_a_cert = |found: String| CertsError::NotACertificate {
        path: path.to_owned(),
        found,
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(not_a_cert("nothing (the file is empty)".into()));
    }
    if !contains(data, b"-----BEGIN ") {
        // Not PEM: accept a bare DER certificate, refuse anything else.
        return match x509_parser::parse_x509_certificate(data) {
            Ok(_) => Ok(vec![data.to_vec()]),
            Err(_) => Err(not_a_cert("neither a PEM nor a DER certificate".into())),
        };
    }
    let mut found = Vec::new();
    let mut first_label = None;
    for block in Pem::iter_from_buffer(data) {
        let block = block.map_err(|e| CertsError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        if block.label == CERTIFICATE_LABEL {
            found.push(block.contents);
            if limit.is_some_and(|limit| found.len() >= limit) {
                break;
            }
        } else {
            first_label.get_or_insert(block.label);
        }
    }
    if !found.is_empty() {
        return Ok(found);
    }
    Err(match first_label {
        Some(label) if label.contains("PRIVATE KEY") => {
            not_a_cert(format!("a private key (PEM {label:?})"))
        }
        Some(label) => not_a_cert(format!("a PEM {label:?} block")),
        None => CertsError::Pem {
            path: path.to_owned(),
            detail: "no complete PEM block".into(),
        },
    })
}

/// Parses certificate DER read from `path`.
pub(crate) fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, CertsError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertsError::Certificate {
            path: path.to_owned(),
            detail: e.to_string(),
        })
}

/// The first common name of an X.509 name, if it is a string.
pub(crate) fn common_name(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// PEM text for certificate DER, as rcgen writes it: 64-character lines, LF.
pub(crate) fn certificate_pem(der: &[u8]) -> String {
    let body = base64(der);
    let mut out = format!("-----BEGIN {CERTIFICATE_LABEL}-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {CERTIFICATE_LABEL}-----\n"));
    out
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("x.pem")
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn refuses_empty_garbage_and_keys_with_what_they_hold() {
        let empty = certificate_der(path(), b"  \n").unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");

        let garbage = certificate_der(path(), b"hello world")
            .unwrap_err()
            .to_string();
        assert!(garbage.contains("neither a PEM nor a DER"), "{garbage}");

        let key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let msg = certificate_der(path(), key).unwrap_err().to_string();
        assert!(msg.contains("private key"), "{msg}");

        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let msg = certificate_der(path(), broken).unwrap_err().to_string();
        assert!(msg.contains("malformed PEM"), "{msg}");

        let cut = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        let msg = certificate_der(path(), cut).unwrap_err().to_string();
        assert!(msg.contains("malformed PEM"), "{msg}");

        let msg = all_certificates_der(path(), key).unwrap_err().to_string();
        assert!(msg.contains("private key"), "{msg}");
    }

    #[test]
    fn a_bundle_yields_every_certificate_in_order_and_the_first_alone() {
        let first = [0x30, 0x01, 0xaa];
        let second = [0x30, 0x01, 0xbb];
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let bundle = format!(
            "{}{key}{}",
            certificate_pem(&first),
            certificate_pem(&second)
        );
        assert_eq!(
            all_certificates_der(path(), bundle.as_bytes()).unwrap(),
            [first.to_vec(), second.to_vec()]
        );
        assert_eq!(certificate_der(path(), bundle.as_bytes()).unwrap(), first);

        // Only the whole bundle is read to its end, so only it sees a broken tail.
        let broken = format!(
            "{}-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            certificate_pem(&first)
        );
        assert_eq!(certificate_der(path(), broken.as_bytes()).unwrap(), first);
        let err = all_certificates_der(path(), broken.as_bytes()).unwrap_err();
        assert!(matches!(err, CertsError::Pem { .. }), "{err}");
    }
}
