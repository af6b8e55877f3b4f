//! Certificates for TLS tests: a CA made for the test, a server certificate it signed for
//! `localhost` (and for no address: a client that names the server `127.0.0.1` and checks
//! names is refused), and client certificates on demand, all in PEM.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A test CA, and the server certificate it signed.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA's certificate.
    pub ca: String,
    /// The server's certificate (for `localhost`).
    pub cert: String,
    /// The server's key.
    pub key: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA named after `name`, and a server certificate it signed.
    pub fn new(name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(ca_params, key).expect("a CA");
        let (cert, key) = signed(&issuer, "localhost");
        Self {
            ca: issuer.pem(),
            issuer,
            cert,
            key,
        }
    }

    /// A client certificate for `name` and its key, signed by the CA.
    pub fn client(&self, name: &str) -> (String, String) {
        signed(&self.issuer, name)
    }
}

/// A certificate for `name` signed by `issuer`, and its key.
fn signed(issuer: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params
        .signed_by(&key, issuer)
        .expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}
