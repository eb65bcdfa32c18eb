//! TLS to an address the SSRF guard checked, with the certificate verified
//! for the host name the tenant configured.
//!
//! Some client libraries (async-nats) take the address to dial and the TLS
//! server name from one URL. Given the name they resolve it again, after the
//! guard looked at it, so a tenant's DNS could answer the guard with a public
//! address and the library with an internal one. Given the checked address
//! instead, they would verify the certificate for that IP. This config lets
//! such a library dial the checked IP while the certificate is still
//! verified for the configured name. The price: a connection opened to an IP
//! sends no SNI, so a server that picks its certificate by SNI presents its
//! default one.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A client config that accepts a certificate only if it chains to `roots`
/// and is valid for `name`, whatever name the connection was opened with.
pub fn verified_for(roots: Arc<rustls::RootCertStore>, name: &str) -> Result<rustls::ClientConfig, String> {
    let name = ServerName::try_from(name.to_string()).map_err(|e| format!("TLS server name {name:?}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ForName { name, webpki }))
        .with_no_client_auth())
}

#[derive(Debug)]
struct ForName {
    name: ServerName<'static>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ForName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
