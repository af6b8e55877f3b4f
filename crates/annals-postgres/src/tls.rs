//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` describe it, on rustls.
//!
//! | mode | encrypts | verifies the chain | verifies the host name |
//! |---|---|---|---|
//! | `disable` | no | - | - |
//! | `prefer` (default) | when the server offers it | only when a root is given | no |
//! | `require` | always | only when a root is given | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! The roots are a PEM file (`sslrootcert=PATH`, default `~/.postgresql/root.crt` for the
//! verifying modes) or the system's (`sslrootcert=system`).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::PgError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (libpq's default).
    #[default]
    Prefer,
    /// TLS always; the certificate is checked only against a root given with it.
    Require,
    /// TLS always, the server's certificate chaining to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = PgError;

    fn from_str(s: &str) -> Result<Self, PgError> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(PgError::Tls {
                    reason: format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                ),
                    source: None,
                })
            }
        })
    }
}

/// The roots a server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The certificates in a PEM file.
    File(PathBuf),
    /// The operating system's trusted roots.
    System,
}

/// Whether and how a store uses TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PgTls {
    /// The mode.
    pub mode: SslMode,
    /// The trusted roots (`sslrootcert`).
    pub root_certs: Option<RootCerts>,
}

impl PgTls {
    /// `mode` with no roots given.
    pub fn new(mode: SslMode) -> Self {
        Self {
            mode,
            root_certs: None,
        }
    }

    /// Trusts `roots`.
    pub fn root_certs(mut self, roots: RootCerts) -> Self {
        self.root_certs = Some(roots);
        self
    }

    /// The connector for every connection of a store, and the mode to tell the driver.
    pub(crate) fn connector(
        &self,
    ) -> Result<(MakeRustlsConnect, tokio_postgres::config::SslMode), PgError> {
        use tokio_postgres::config::SslMode as Driver;
        let driver = match self.mode {
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            _ => Driver::Require,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match (&self.root_certs, self.mode) {
            (Some(roots), _) => Some(load_roots(roots)?),
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
                let default = std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
                    .filter(|p| p.exists());
                match default {
                    Some(path) => Some(load_roots(&RootCerts::File(path))?),
                    None => {
                        return Err(PgError::Tls {
                            reason: "sslmode=verify-ca and verify-full need the server's root certificate: \
                                     sslrootcert=PATH (a PEM file), or sslrootcert=system for the system's roots"
                                .into(),
                            source: None,
                        })
                    }
                }
            }
            (None, _) => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            None => Arc::new(Unverified(Arc::clone(&provider))),
            Some(roots) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| PgError::Tls {
                            reason: "the trusted roots cannot verify certificates".into(),
                            source: Some(Box::new(e)),
                        })?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls {
                reason: "no TLS protocol version available".into(),
                source: Some(Box::new(e)),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok((MakeRustlsConnect::new(config), driver))
    }
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, PgError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| PgError::Tls {
                    reason: format!("sslrootcert={}: cannot read it", path.display()),
                    source: Some(Box::new(e)),
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(PgError::Tls {
                    reason: format!(
                        "sslrootcert={}: no usable certificate in it",
                        path.display()
                    ),
                    source: None,
                });
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(PgError::Tls {
                    reason: "sslrootcert=system: the system has no trusted roots".into(),
                    source: None,
                });
            }
        }
    }
    Ok(store)
}

/// Encrypts without checking who the server is (`prefer` and `require` without roots, as
/// libpq does).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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
