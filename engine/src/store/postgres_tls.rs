//! `POSTGRES_URL`'s TLS settings, read as libpq (and Outpost's driver) reads
//! them: `sslmode` = `disable`, `allow`/`prefer` (TLS when the server offers
//! it, unverified), `require` (TLS, unverified unless `sslrootcert` is given,
//! then as `verify-ca`), `verify-ca` (the chain must lead to a trusted root),
//! `verify-full` (and the certificate must name the host); `sslrootcert` = a
//! PEM file of trusted roots (default: the Mozilla roots). Client
//! certificates (`sslcert`, `sslkey`) are refused with a clear error rather
//! than ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypted, not authenticated (libpq's `prefer` and `require`).
    Nothing,
    /// The chain leads to a trusted root; the name is not checked.
    Chain,
    /// The chain and the host name.
    Full,
}

/// A connection string with its TLS settings taken out (tokio-postgres
/// does not know `verify-*` or `sslrootcert`), and the connector they make.
pub struct Prepared {
    pub config: tokio_postgres::Config,
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub verify: Verify,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("verify", &self.verify).finish()
    }
}

/// Splits the TLS parameters out of a URL (`postgres://…?sslmode=…`) or a
/// `key=value` connection string, and builds the connector.
pub fn prepare(conn: &str) -> Result<Prepared, String> {
    let (rest, params) = split(conn)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("not a valid connection string: {e}"))?;
    let mode = params.mode.as_deref().unwrap_or("prefer");
    let (ssl_mode, verify) = match (mode, params.root_cert.is_some()) {
        ("disable", _) => (SslMode::Disable, Verify::Nothing),
        ("allow" | "prefer", false) => (SslMode::Prefer, Verify::Nothing),
        ("allow" | "prefer", true) => (SslMode::Prefer, Verify::Chain),
        ("require", false) => (SslMode::Require, Verify::Nothing),
        ("require" | "verify-ca", true) => (SslMode::Require, Verify::Chain),
        ("verify-ca", false) => (SslMode::Require, Verify::Chain),
        ("verify-full", _) => (SslMode::Require, Verify::Full),
        (other, _) => {
            return Err(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))
        }
    };
    config.ssl_mode(ssl_mode);
    let tls = client_config(verify, params.root_cert.as_deref())?;
    Ok(Prepared {
        config,
        tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        verify,
    })
}

#[derive(Debug, Default, PartialEq)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<PathBuf>,
}

/// The connection string without the TLS parameters, and those parameters.
fn split(conn: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => params.mode = Some(value),
            "sslrootcert" => params.root_cert = Some(PathBuf::from(value)),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(format!(
                    "{key}: client certificates are not supported; authenticate with a password in the URL"
                ))
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
            if !take(k, v)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    // key=value form; a quoted TLS value is not supported (paths rarely need it).
    let mut kept = Vec::new();
    for token in conn.split_whitespace() {
        match token.split_once('=') {
            Some((k, v)) if matches!(k, "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "sslpassword") => {
                if v.starts_with('\'') {
                    return Err(format!("{k}: write the value without quotes"));
                }
                take(k, v.to_string())?;
            }
            _ => kept.push(token),
        }
    }
    Ok((kept.join(" "), params))
}

fn client_config(verify: Verify, root_cert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    if verify == Verify::Nothing {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs =
                CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no PEM certificate in the file",
                    path.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Full => webpki,
        _ => Arc::new(ChainOnly(webpki)),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last, so a name error
        // means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root: encrypted, any certificate accepted
/// (libpq's meaning of those modes); the handshake's signatures are still
/// checked against the certificate presented.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let (rest, p) = split(
            "postgres://u:p@db:5432/x?options=-c%20search_path%3Ds&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/x?options=-c%20search_path%3Ds");
        assert_eq!(
            p,
            TlsParams {
                mode: Some("verify-full".into()),
                root_cert: Some("/etc/ca.pem".into())
            }
        );
        let (rest, p) = split("postgres://db/x?sslmode=require").unwrap();
        assert_eq!((rest.as_str(), p.mode.as_deref()), ("postgres://db/x", Some("require")));
        let (rest, p) = split("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=x").unwrap();
        assert_eq!(rest, "host=db user=u dbname=x");
        assert_eq!(
            (p.mode.as_deref(), p.root_cert),
            (Some("verify-ca"), Some("/ca.pem".into()))
        );
        assert!(split("postgres://db/x?sslcert=/c.pem")
            .unwrap_err()
            .contains("client certificates"));
    }

    #[test]
    fn modes_map_as_libpq_reads_them() {
        let verify = |url: &str| prepare(url).map(|p| (p.config.get_ssl_mode(), p.verify));
        assert_eq!(verify("postgres://db/x"), Ok((SslMode::Prefer, Verify::Nothing)));
        assert_eq!(
            verify("postgres://db/x?sslmode=disable"),
            Ok((SslMode::Disable, Verify::Nothing))
        );
        assert_eq!(
            verify("postgres://db/x?sslmode=require"),
            Ok((SslMode::Require, Verify::Nothing))
        );
        assert_eq!(
            verify("postgres://db/x?sslmode=verify-ca"),
            Ok((SslMode::Require, Verify::Chain))
        );
        assert_eq!(
            verify("postgres://db/x?sslmode=verify-full"),
            Ok((SslMode::Require, Verify::Full))
        );
        assert!(verify("postgres://db/x?sslmode=always")
            .unwrap_err()
            .contains("sslmode=always"));
        let e = verify("postgres://db/x?sslmode=verify-full&sslrootcert=/nonexistent.pem").unwrap_err();
        assert!(e.contains("sslrootcert /nonexistent.pem"), "{e}");
    }
}
