//! The TLS of the PostgreSQL log's connections (`history.postgres_tls`):
//! rustls with the `ring` provider, through tokio-postgres-rustls, which
//! also gives SCRAM its channel binding (`tls-server-end-point`).
//!
//! - `disable`: the connector is never used (`sslmode=disable`).
//! - `require`: `sslmode=require`, so a server that offers no TLS is
//!   refused; any certificate is taken ([`AnyCertificate`]), but the
//!   handshake's signatures are still checked.
//! - `verify-full`: the chain verified against `history.postgres_ca_file`
//!   (read here, at start-up) or else the system's roots, and the
//!   certificate's names against the URL's host.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresTls;
use crate::history::Error;

/// The connector and `sslmode` of `mode`; `ca_file` is
/// `history.postgres_ca_file`. An error names the key at fault.
pub(super) fn connector(mode: PostgresTls, ca_file: Option<&Path>) -> Result<(MakeRustlsConnect, SslMode), Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Postgres(format!("cannot set up TLS to PostgreSQL: {e}")))?;
    let (config, ssl_mode) = match mode {
        PostgresTls::Disable => (
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            SslMode::Disable,
        ),
        PostgresTls::Require => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            SslMode::Require,
        ),
        PostgresTls::VerifyFull => (
            builder.with_root_certificates(roots(ca_file)?).with_no_client_auth(),
            SslMode::Require,
        ),
    };
    Ok((MakeRustlsConnect::new(config), ssl_mode))
}

/// What `verify-full` trusts: the CA file's certificates, else the
/// system's roots.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let added = crate::deliver::read_ca_file(&mut roots, path).map_err(|problem| {
            Error::Postgres(format!(
                "cannot use history.postgres_ca_file {}: {problem}; give a PEM file of CA certificates",
                path.display()
            ))
        })?;
        tracing::debug!(path = %path.display(), added, "CA certificates trusted for PostgreSQL");
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "some system CA certificates could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates loaded for PostgreSQL");
    if roots.is_empty() {
        return Err(Error::Postgres(
            "history.postgres_tls = \"verify-full\", but there are no system CA certificates to verify PostgreSQL's \
             against: install the system CA bundle or set history.postgres_ca_file"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// What `verify-full` trusts, as the start-up error shows it.
pub(super) fn trusted(mode: PostgresTls, ca_file: Option<&Path>) -> String {
    match (mode, ca_file) {
        (PostgresTls::VerifyFull, Some(path)) => format!(
            "history.postgres_tls = \"verify-full\", trusting history.postgres_ca_file {}",
            path.display()
        ),
        (PostgresTls::VerifyFull, None) => {
            "history.postgres_tls = \"verify-full\", trusting the system's roots".to_owned()
        }
        (mode, _) => format!("history.postgres_tls = \"{mode}\""),
    }
}

/// `require`'s verifier: takes any certificate chain and name, as libpq's
/// `sslmode=require` does; the handshake is still signed by the key of
/// the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
