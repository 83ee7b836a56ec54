//! TLS on the client port (`[tcp.tls]`): the acceptor a connection's handshake goes through,
//! and the certificate it presents.
//!
//! The certificate comes from PEM files, as cert-manager and Kubernetes TLS Secrets hold it.
//! Certificates are renewed while brokers run (a mounted Secret's files are swapped in place),
//! so the files are watched rather than read once: a handshake checks their identity (inode,
//! length, modification time) at most once a [`RELOAD_CHECK`], and a changed pair is loaded
//! for the connections that follow. A pair that does not load (the key written after the
//! chain, a key of another certificate) is logged, and the pair in use stays in use; the next
//! change is tried again. Established connections keep the certificate they shook hands with.
//!
//! Only the key's path ever reaches a log line or an error, never its bytes.

use crate::config::TlsConfig;
use iggy_contract::certificate::{self, EXPIRY_WARNING_SECONDS};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_rustls::TlsAcceptor;

/// How often a handshake may look at the certificate files for a renewal.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// When the certificate served now expires, in seconds since the Unix epoch; 0 while none is
/// served. A process has one client listener, so one value; `/metrics` reads it.
static SERVED_NOT_AFTER: AtomicI64 = AtomicI64::new(0);

/// When the certificate the client port serves expires (Unix seconds), if TLS is on.
pub fn served_not_after() -> Option<i64> {
    match SERVED_NOT_AFTER.load(Ordering::Relaxed) {
        0 => None,
        seconds => Some(seconds),
    }
}

/// Records the expiry of the certificate about to be served, and says so when it is near or
/// past: clients refuse an expired certificate, so this is the last warning before they do.
fn note_served(key: &CertifiedKey) {
    let leaf = key.end_entity_cert().ok();
    let names = leaf
        .map(|cert| certificate::names(cert))
        .unwrap_or_default();
    let Some(not_after) = leaf.and_then(|cert| certificate::not_after(cert)) else {
        tracing::warn!(?names, "tcp.tls: cannot read the certificate's expiry date");
        return;
    };
    SERVED_NOT_AFTER.store(not_after, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = not_after - now;
    if left <= 0 {
        tracing::error!(
            expired_seconds_ago = -left,
            ?names,
            "tcp.tls: the certificate has expired; clients will refuse it until it is renewed"
        );
    } else if left < EXPIRY_WARNING_SECONDS {
        tracing::warn!(
            days_left = left / 86_400,
            ?names,
            "tcp.tls: the certificate expires soon"
        );
    } else {
        tracing::info!(
            days_left = left / 86_400,
            ?names,
            "tcp.tls: certificate valid"
        );
    }
}

/// The names a generated certificate is valid for: the broker's loopback listener.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "tcp.tls.enabled is true but tcp.tls.{0} is empty: set cert_file and key_file to PEM \
         files, or tcp.tls.self_signed = true to serve a certificate generated at start"
    )]
    MissingPath(&'static str),
    #[error(
        "tcp.tls.cert_file {} does not exist (tcp.tls.self_signed = true would serve a \
         generated certificate instead)", .0.display()
    )]
    NoCertFile(PathBuf),
    #[error("cannot read the certificate chain in {}: {reason}", path.display())]
    Chain { path: PathBuf, reason: String },
    #[error("{} holds no certificate (expected PEM `CERTIFICATE` sections)", .0.display())]
    EmptyChain(PathBuf),
    #[error("cannot read the private key in {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error(
        "the private key in {} does not belong to the certificate in {}, or is of a kind TLS \
         cannot use: {reason}", key.display(), cert.display()
    )]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

/// The acceptor for `config`, or `None` when TLS is off. Fails, before the broker touches its
/// data, when the certificate cannot be served.
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    if !config.enabled {
        return Ok(None);
    }
    let provider = ring_provider();
    let resolver: Arc<dyn ResolvesServerCert> = match certificate_files(config)? {
        Some((cert, key)) => Arc::new(WatchedPair::load(cert, key, provider.clone())?),
        None => {
            tracing::warn!(
                names = ?SELF_SIGNED_NAMES,
                "tcp.tls: no cert_file, serving a certificate generated at start; clients \
                 cannot verify it (tcp.tls.self_signed)"
            );
            let generated = self_signed(&provider)?;
            note_served(&generated);
            Arc::new(Fixed(Arc::new(generated)))
        }
    };
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// rustls on ring, as the S3 client uses it (no aws-lc build). rustls 0.23.48 deprecates
/// ring's provider because it offers no post-quantum key exchange; until the broker moves to a
/// provider that does, TLS here negotiates X25519 or the NIST curves.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The chain and key files to serve, or `None` for a generated certificate.
fn certificate_files(config: &TlsConfig) -> Result<Option<(PathBuf, PathBuf)>, TlsError> {
    let unset = |path: &Path| path.as_os_str().is_empty();
    if config.self_signed && (unset(&config.cert_file) || !config.cert_file.exists()) {
        return Ok(None);
    }
    if unset(&config.cert_file) {
        return Err(TlsError::MissingPath("cert_file"));
    }
    if unset(&config.key_file) {
        return Err(TlsError::MissingPath("key_file"));
    }
    if !config.cert_file.exists() {
        return Err(TlsError::NoCertFile(config.cert_file.clone()));
    }
    Ok(Some((config.cert_file.clone(), config.key_file.clone())))
}

/// Reads a chain and its key and checks that they belong together.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain_error = |reason: String| TlsError::Chain {
        path: cert.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| chain_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| chain_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain(cert.to_path_buf()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|reason| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    })
}

fn self_signed(provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let names = SELF_SIGNED_NAMES
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>();
    let (chain, key) = generate_self_signed(names).map_err(TlsError::SelfSigned)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::SelfSigned(e.to_string()))
}

/// A fresh key and a certificate for `names` signed by it (also the replication port's,
/// `replication::peer_tls`).
pub(crate) fn generate_self_signed(
    names: Vec<String>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    Ok((vec![generated.cert.der().clone()], key))
}

/// A certificate that never changes (the generated one).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What identifies a file's content without reading it: a Secret update replaces the file
/// (new inode), an edit in place changes its length or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    length: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// `None` while the file cannot be looked at (between a Secret's old and new files).
    fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            inode: metadata.ino(),
            length: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

/// The certificate files in use, reloaded when they change.
#[derive(Debug)]
struct WatchedPair {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Served>,
}

#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    /// The files as last looked at: the pair in use, or a later one that did not load.
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked: Instant,
}

impl WatchedPair {
    fn load(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamps = (FileStamp::of(&cert), FileStamp::of(&key));
        let loaded = load_pair(&cert, &key, &provider)?;
        tracing::info!(cert = %cert.display(), "tcp.tls: serving the certificate in cert_file");
        note_served(&loaded);
        Ok(Self {
            cert,
            key,
            provider,
            current: Mutex::new(Served {
                key: Arc::new(loaded),
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to present now, after loading the files again if they changed since the last
    /// look (at most one look per [`RELOAD_CHECK`]).
    fn serving(&self, now: Instant) -> Arc<CertifiedKey> {
        let mut served = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(served.checked) < RELOAD_CHECK {
            return served.key.clone();
        }
        served.checked = now;
        let stamps = (FileStamp::of(&self.cert), FileStamp::of(&self.key));
        if stamps == served.stamps || stamps.0.is_none() || stamps.1.is_none() {
            return served.key.clone();
        }
        // Recorded whether or not the pair loads: a broken pair is tried again only once one
        // of its files changes again (a key written after its chain), not at every look.
        served.stamps = stamps;
        match load_pair(&self.cert, &self.key, &self.provider) {
            Ok(loaded) => {
                tracing::info!(cert = %self.cert.display(), "tcp.tls: the certificate files changed; serving the new pair");
                note_served(&loaded);
                served.key = Arc::new(loaded);
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp.tls: the certificate files changed but do not load; still serving the previous pair");
            }
        }
        served.key.clone()
    }
}

impl ResolvesServerCert for WatchedPair {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.serving(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Issued {
        cert_pem: String,
        key_pem: String,
    }

    fn issue(name: &str) -> Issued {
        let generated =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate");
        Issued {
            cert_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
        }
    }

    fn config(dir: &Path, self_signed: bool) -> TlsConfig {
        TlsConfig {
            enabled: true,
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            self_signed,
        }
    }

    fn write(dir: &Path, issued: &Issued) {
        std::fs::write(dir.join("tls.crt"), &issued.cert_pem).expect("write cert");
        std::fs::write(dir.join("tls.key"), &issued.key_pem).expect("write key");
    }

    fn provider() -> Arc<CryptoProvider> {
        ring_provider()
    }

    #[test]
    fn tls_off_needs_no_files() {
        let config = TlsConfig {
            enabled: false,
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            self_signed: false,
        };
        assert!(acceptor(&config).expect("off").is_none());
    }

    #[test]
    fn each_way_a_pair_cannot_be_served_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let mut unset = config(dir.path(), false);
        unset.cert_file = PathBuf::new();
        assert!(matches!(
            acceptor(&unset),
            Err(TlsError::MissingPath("cert_file"))
        ));

        assert!(matches!(
            acceptor(&config(dir.path(), false)),
            Err(TlsError::NoCertFile(_))
        ));

        std::fs::write(dir.path().join("tls.crt"), "not pem").expect("write");
        std::fs::write(dir.path().join("tls.key"), issue("a").key_pem).expect("write");
        assert!(matches!(
            acceptor(&config(dir.path(), false)),
            Err(TlsError::EmptyChain(_))
        ));

        std::fs::write(dir.path().join("tls.crt"), issue("a").cert_pem).expect("write");
        std::fs::write(dir.path().join("tls.key"), "").expect("write");
        let error = acceptor(&config(dir.path(), false)).err().expect("no key");
        assert!(matches!(error, TlsError::Key { .. }), "{error}");

        // A key that belongs to another certificate.
        std::fs::write(dir.path().join("tls.key"), issue("b").key_pem).expect("write");
        let error = acceptor(&config(dir.path(), false))
            .err()
            .expect("mismatch");
        assert!(matches!(error, TlsError::Pair { .. }), "{error}");
        assert!(error.to_string().contains("tls.key"), "{error}");
    }

    #[test]
    fn errors_never_show_the_key() {
        let dir = tempfile::tempdir().expect("dir");
        let issued = issue("a");
        std::fs::write(dir.path().join("tls.crt"), issue("b").cert_pem).expect("write");
        std::fs::write(dir.path().join("tls.key"), &issued.key_pem).expect("write");
        let error = acceptor(&config(dir.path(), false))
            .err()
            .expect("mismatch")
            .to_string();
        let body: String = issued.key_pem.lines().nth(1).expect("a base64 line").into();
        assert!(!error.contains(&body), "{error}");
    }

    #[test]
    fn self_signed_serves_a_generated_certificate_only_while_no_cert_file_exists() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(acceptor(&config(dir.path(), true))
            .expect("generated")
            .is_some());
        // A file that exists is loaded, and must load.
        std::fs::write(dir.path().join("tls.crt"), issue("a").cert_pem).expect("write");
        assert!(matches!(
            acceptor(&config(dir.path(), true)),
            Err(TlsError::Key { .. })
        ));
    }

    #[test]
    fn a_renewed_pair_is_served_after_the_next_look_and_a_broken_one_never() {
        let dir = tempfile::tempdir().expect("dir");
        let first = issue("first");
        write(dir.path(), &first);
        let watched = WatchedPair::load(
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            provider(),
        )
        .expect("load");
        let start = Instant::now();
        let served_der = |at: Instant| watched.serving(at).cert[0].to_vec();
        let first_der = served_der(start);

        // Renewed the way a Secret volume does it: new files put in place.
        let second = issue("second");
        let staged = dir.path().join("staged");
        std::fs::create_dir(&staged).expect("dir");
        write(&staged, &second);
        std::fs::rename(staged.join("tls.crt"), dir.path().join("tls.crt")).expect("swap");
        // Half way: the chain is new, the key still the old one. Not served.
        assert_eq!(served_der(start + RELOAD_CHECK), first_der);
        std::fs::rename(staged.join("tls.key"), dir.path().join("tls.key")).expect("swap");
        // Within the same second nothing is looked at.
        assert_eq!(served_der(start + RELOAD_CHECK), first_der);
        let renewed = served_der(start + RELOAD_CHECK * 2);
        assert_ne!(renewed, first_der);
        assert_eq!(
            renewed,
            CertificateDer::from_pem_slice(second.cert_pem.as_bytes())
                .expect("pem")
                .to_vec()
        );

        // A broken pair afterwards leaves the renewed one in use.
        std::fs::write(dir.path().join("tls.key"), "garbage").expect("write");
        assert_eq!(served_der(start + RELOAD_CHECK * 3), renewed);
    }
}
