//! TLS, configured once for both network clients: which certificate authorities are trusted
//! (the built-in web roots, or exactly the ones of `--ca-file`), the protocol versions (TLS 1.3
//! and 1.2, nothing older), and the words a refused handshake is reported in.
//!
//! It owns reading `--ca-file` (the one file the configuration reads; a bad one is a
//! `ConfigError`, exit 2) and building the rustls `ClientConfig` the reader hands to every
//! WebSocket connect. The REST client (`recovery::rest`) turns the same `Roots` into ureq's
//! settings itself. Handshakes happen elsewhere; `explain` turns the rustls error they end with
//! into a sentence that names the cause and what to do.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, CertificateError, PeerIncompatible, SupportedProtocolVersion};

use crate::config::ConfigError;

/// The protocol versions both clients offer: TLS 1.2 is the floor. (rustls implements nothing
/// older; naming the versions keeps that a decision here rather than a library default.)
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Most certificates a `--ca-file` may hold (Mozilla's whole bundle is about 150).
pub const CA_FILE_CERTS_MAX: usize = 1000;
/// Largest `--ca-file` read (a system bundle is about 200 KiB).
pub const CA_FILE_BYTES_MAX: u64 = 4 << 20;

/// The certificate authorities a server's certificate must chain to. Debug shows where they
/// come from, not the certificates' bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Roots {
    /// Mozilla's web roots, built into the binary (`webpki-roots`): the default.
    BuiltIn,
    /// Exactly the certificates of `--ca-file`, instead of the built-in roots (as curl's
    /// `--cacert`): a private CA or a TLS-intercepting proxy is trusted without trusting the
    /// whole web PKI too.
    CaFile { path: PathBuf, certs: Arc<Vec<CertificateDer<'static>>> },
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Roots {
    /// Where the trusted roots come from, for log lines and refusals.
    pub fn describe(&self) -> String {
        match self {
            Roots::BuiltIn => "the built-in web roots".to_string(),
            Roots::CaFile { path, certs } => {
                format!("the {} CA certificate(s) of --ca-file {}", certs.len(), path.display())
            }
        }
    }
}

fn refuse(path: &Path, problem: impl std::fmt::Display, fix: &str) -> ConfigError {
    ConfigError { flag: "--ca-file", problem: format!("{}: {problem}", path.display()), fix: fix.to_string() }
}

/// Reads `--ca-file`: PEM, one or more `CERTIFICATE` blocks (other blocks, such as a key, are
/// ignored). Missing, unreadable, too large, not PEM, or without a certificate that rustls
/// accepts as a trust anchor: refused, naming the path and what to do.
pub fn load_ca_file(path: &Path) -> Result<Roots, ConfigError> {
    const FIX: &str = "give a PEM file of the CA certificate(s) to trust (-----BEGIN CERTIFICATE-----), or drop --ca-file to use the built-in web roots";
    let meta = std::fs::metadata(path).map_err(|e| refuse(path, format!("cannot read it: {e}"), FIX))?;
    if !meta.is_file() {
        return Err(refuse(path, "is not a file", FIX));
    }
    if meta.len() > CA_FILE_BYTES_MAX {
        return Err(refuse(path, format!("is {} bytes, more than {CA_FILE_BYTES_MAX}", meta.len()), FIX));
    }
    let bytes = std::fs::read(path).map_err(|e| refuse(path, format!("cannot read it: {e}"), FIX))?;
    parse_ca_pem(&bytes)
        .map(|certs| Roots::CaFile { path: path.to_path_buf(), certs: Arc::new(certs) })
        .map_err(|p| refuse(path, p, FIX))
}

/// The certificates of a PEM text, each checked to be usable as a trust anchor.
fn parse_ca_pem(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    let mut others = 0usize;
    for item in <(pem::SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        match item {
            Ok((pem::SectionKind::Certificate, der)) => certs.push(CertificateDer::from(der)),
            Ok(_) => others += 1,
            Err(e) => return Err(format!("is not valid PEM ({e})")),
        }
        if certs.len() > CA_FILE_CERTS_MAX {
            return Err(format!("holds more than {CA_FILE_CERTS_MAX} certificates"));
        }
    }
    if certs.is_empty() {
        return Err(if others > 0 {
            format!("holds {others} PEM block(s) but no CERTIFICATE")
        } else {
            "holds no PEM certificate".to_string()
        });
    }
    // rustls parses each into a trust anchor when it is added: a block that is not a
    // certificate (bad DER) is refused here, at start, not at the first connect.
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store
            .add(cert.clone())
            .map_err(|e| format!("certificate {} of {} cannot be a trust anchor ({e})", i + 1, certs.len()))?;
    }
    Ok(certs)
}

/// The rustls configuration every WebSocket connect uses: ring (passed explicitly, so no
/// process-wide crypto provider is needed), `PROTOCOL_VERSIONS`, `roots`, no client certificate.
pub fn client_config(roots: &Roots) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::BuiltIn => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::CaFile { certs, .. } => {
            for cert in certs.iter() {
                // Checked by `load_ca_file` already.
                if let Err(e) = store.add(cert.clone()) {
                    log::warn!("--ca-file: a certificate was not added to the trusted roots: {e}");
                }
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

/// The rustls error somewhere in `error`'s chain. rustls errors reach callers wrapped: in an
/// `io::Error` (the lazy handshake of a stream, as tungstenite and ureq drive it) or as a
/// `source()`.
pub fn find_rustls_error<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e rustls::Error> {
    let mut current: Option<&'e (dyn StdError + 'static)> = Some(error);
    // A bound on the chain's length: no real chain is deeper.
    for _ in 0..16 {
        let e = current?;
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                current = Some(inner);
                continue;
            }
        }
        current = e.source();
    }
    None
}

/// Names why a TLS handshake with `host` failed, in words an operator can act on. Every
/// certificate problem says what the certificate is and where the trusted roots come from.
pub fn explain(error: &rustls::Error, host: &str, roots: &Roots) -> String {
    let trusted = roots.describe();
    match error {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = match c {
                    CertificateError::NotValidForNameContext { presented, .. } if !presented.is_empty() => {
                        // webpki writes them as `DnsName("x")` / `IpAddress(..)`: the names only.
                        let names: Vec<&str> = presented
                            .iter()
                            .map(|p| {
                                let inner = p.split_once('(').map_or(p.as_str(), |(_, rest)| rest);
                                inner.trim_end_matches(')').trim_matches('"')
                            })
                            .collect();
                        format!(" (it names {})", names.join(", "))
                    }
                    _ => String::new(),
                };
                format!("tls: the server's certificate is not valid for host {host}{names}: check the URL's host name")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                let when = match c {
                    CertificateError::ExpiredContext { not_after, .. } => {
                        format!(" (not after unix time {}s)", not_after.as_secs())
                    }
                    _ => String::new(),
                };
                format!("tls: the server's certificate expired{when}: the server must renew it (or this machine's clock is wrong)")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls: the server's certificate is not valid yet: check this machine's clock".to_string()
            }
            CertificateError::UnknownIssuer => format!(
                "tls: the server's certificate has an unknown issuer (self-signed, or signed by a CA not among {trusted}): \
                 to trust a private CA or a TLS-intercepting proxy, give its CA certificate with --ca-file"
            ),
            CertificateError::BadSignature => {
                "tls: the server's certificate has a bad signature (it was not signed by the CA it names)".to_string()
            }
            CertificateError::Revoked => "tls: the server's certificate was revoked".to_string(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "tls: the server's certificate is not for TLS servers (extended key usage)".to_string()
            }
            other => format!("tls: the server's certificate was refused ({other:?}); trusted roots: {trusted}"),
        },
        rustls::Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13)
        | rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            "tls: the server offers no TLS version coinfeed accepts (TLS 1.2 is the floor; it offers only older ones)"
                .to_string()
        }
        rustls::Error::AlertReceived(AlertDescription::HandshakeFailure) => {
            "tls: the server refused the handshake (no cipher suite or version in common: coinfeed offers TLS 1.2 and 1.3)"
                .to_string()
        }
        rustls::Error::AlertReceived(alert) => format!("tls: the server ended the handshake with alert {alert:?}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("tls: the server did not speak TLS correctly ({error}); is it a plain-text port? (use ws:// or http:// for those)")
        }
        other => format!("tls: handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("coinfeed-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, bytes).expect("write");
        path
    }

    fn refused(path: &Path) -> ConfigError {
        load_ca_file(path).expect_err("refused")
    }

    /// The refusals; the accepting path, with a CA made by rcgen, is tests/it/tls.rs's.
    #[test]
    fn a_bad_ca_file_is_refused_naming_the_flag_the_path_and_the_fix() {
        let missing = std::env::temp_dir().join("coinfeed-no-such-ca.pem");
        let e = refused(&missing);
        assert_eq!(e.flag, "--ca-file");
        assert!(e.problem.contains("coinfeed-no-such-ca.pem") && e.problem.contains("cannot read"), "{e}");
        assert!(e.fix.contains("PEM") && e.fix.contains("drop --ca-file"), "{e}");

        let dir = std::env::temp_dir();
        assert!(refused(&dir).problem.contains("not a file"));

        let empty = temp_file("empty", b"");
        assert!(refused(&empty).problem.contains("no PEM certificate"), "{}", refused(&empty));

        let text = temp_file("text", b"just some text\nnot a certificate\n");
        assert!(refused(&text).problem.contains("no PEM certificate"));

        let key_only = temp_file("key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(refused(&key_only).problem.contains("no CERTIFICATE"), "{}", refused(&key_only));

        let broken = temp_file("broken", b"-----BEGIN CERTIFICATE-----\nAAAA\n");
        assert!(refused(&broken).problem.contains("not valid PEM"), "{}", refused(&broken));

        let not_der = temp_file("notder", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(refused(&not_der).problem.contains("cannot be a trust anchor"), "{}", refused(&not_der));
    }

    /// The versions a ClientHello built from `config` offers: its `supported_versions`
    /// extension (TLS 1.3's way to offer versions; the record's legacy field says 1.2).
    fn offered_versions(config: Arc<rustls::ClientConfig>) -> (u16, Vec<u16>) {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(config, name).expect("client");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("client hello");
        let u16_at = |i: usize| u16::from_be_bytes([hello[i], hello[i + 1]]);
        assert_eq!((hello[0], hello[5]), (0x16, 0x01), "a handshake record holding a ClientHello");
        let legacy = u16_at(9);
        let mut i = 9 + 2 + 32;
        i += 1 + hello[i] as usize; // session id
        i += 2 + u16_at(i) as usize; // cipher suites
        i += 1 + hello[i] as usize; // compression methods
        let end = i + 2 + u16_at(i) as usize;
        i += 2;
        while i + 4 <= end {
            let (kind, len) = (u16_at(i), u16_at(i + 2) as usize);
            if kind == 0x002b {
                let list = &hello[i + 5..i + 5 + hello[i + 4] as usize];
                return (legacy, list.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect());
            }
            i += 4 + len;
        }
        panic!("no supported_versions extension in the ClientHello");
    }

    /// Proves the floor on the wire: the ClientHello the reader sends offers TLS 1.3 and 1.2 and
    /// nothing else (a server that picks 1.1 or 1.0 is refused by rustls, which implements
    /// neither); and ureq, which builds with `rustls::ALL_VERSIONS`, gets the same two.
    #[test]
    fn only_tls_1_2_and_1_3_are_offered() {
        let (legacy, offered) = offered_versions(client_config(&Roots::BuiltIn));
        assert_eq!(legacy, 0x0303, "legacy_version is TLS 1.2");
        assert_eq!(offered, [0x0304, 0x0303], "TLS 1.3 and 1.2 only");
        let all: Vec<_> = rustls::ALL_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(all, [rustls::ProtocolVersion::TLSv1_3, rustls::ProtocolVersion::TLSv1_2]);
        let ours: Vec<_> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(ours, all);
    }

    #[test]
    fn handshake_failures_are_named_in_words() {
        let roots = Roots::BuiltIn;
        let check = |e: rustls::Error, words: &str| {
            let text = explain(&e, "127.0.0.1", &roots);
            assert!(text.contains(words), "{e:?} → {text}");
            assert!(text.starts_with("tls: "));
        };
        check(rustls::Error::InvalidCertificate(CertificateError::NotValidForName), "not valid for host 127.0.0.1");
        check(rustls::Error::InvalidCertificate(CertificateError::Expired), "certificate expired");
        check(rustls::Error::InvalidCertificate(CertificateError::NotValidYet), "not valid yet");
        check(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer), "unknown issuer (self-signed");
        check(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer), "--ca-file");
        check(rustls::Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13), "TLS 1.2 is the floor");
        check(rustls::Error::AlertReceived(AlertDescription::ProtocolVersion), "TLS 1.2 is the floor");
    }

    #[test]
    fn the_rustls_error_is_found_inside_io_errors() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner.clone());
        assert_eq!(find_rustls_error(&io), Some(&inner));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(find_rustls_error(&plain), None);
    }
}
