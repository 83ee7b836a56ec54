//! Certificates for tests of TLS on the client port: a certificate authority of the test's
//! own (rcgen), the files a broker serves and the settings that point it at them.

use iggy::prelude::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A certificate authority of the test's own, and the files a broker and its clients use.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let pki = Self {
            dir: tempfile::tempdir().expect("dir"),
            issuer,
        };
        std::fs::write(pki.ca_file(), pki.issuer.pem()).expect("write ca");
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for the loopback names into `dir/tls.crt` and `dir/tls.key`.
    pub fn issue_into(&self, dir: &Path) {
        self.issue_until(dir, 2040);
    }

    /// Like `issue_into`, valid until the first of January of `year`.
    pub fn issue_until(&self, dir: &Path, year: i32) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write cert");
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write key");
    }
}

/// A broker's certificate files, issued by `pki`.
pub fn served_by(pki: &Pki) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    pki.issue_into(dir.path());
    dir
}

pub fn tls_env(files: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("IGGY_TCP_TLS_ENABLED", "true".to_string()),
        (
            "IGGY_TCP_TLS_CERT_FILE",
            files.join("tls.crt").display().to_string(),
        ),
        (
            "IGGY_TCP_TLS_KEY_FILE",
            files.join("tls.key").display().to_string(),
        ),
    ]
}

pub fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An SDK client logged in as root over TLS to `address`, trusting only `ca`.
pub async fn tls_client(address: SocketAddr, ca: &Path) -> Result<IggyClient, IggyError> {
    let client = IggyClient::builder()
        .with_tcp()
        .with_server_address(address.to_string())
        .with_tls_enabled(true)
        .with_tls_domain("localhost".to_string())
        .with_tls_ca_file(ca.display().to_string())
        .build()?;
    client.connect().await?;
    client
        .login_user(super::ROOT_USER, super::ROOT_PASSWORD)
        .await?;
    Ok(client)
}
