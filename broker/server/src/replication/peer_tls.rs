//! TLS between replicas (`replication.tls`): confidentiality and integrity for everything the
//! replication port carries, with no certificates to manage.
//!
//! Who may speak to a replica is already settled by the secret handshake (`peer_auth`), so TLS
//! here does not authenticate anyone: each member generates a key and a self-signed
//! certificate at start, and a connecting member accepts whichever certificate the other end
//! presents (checking only that the handshake was signed by its key). What makes that safe is
//! the binding: both proofs of the secret cover a value exported from the TLS session
//! (RFC 5705 / RFC 9266's `tls-exporter`), which the two ends of one session share and nobody
//! else can compute. A relay that ends one session with each member sees two different
//! values, so neither member's proof verifies on the other side and nothing past the hello is
//! sent. Only TLS 1.3 is offered: its exporter is bound to the whole handshake, where a TLS
//! 1.2 one is not without the extended master secret.
//!
//! The accepting side takes both kinds of connection (a TLS record opens with byte 0x16, a
//! replication hello never does), so turning `replication.tls` on or off rolls through a ring
//! one member at a time without splitting it: what a member sends travels the way its own
//! setting says, and a plain connection is counted (`iggy_replication_accepted_total`).

use crate::replication::peer_auth::Binding;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, OnceLock};

/// The first byte of a TLS record carrying a handshake message: how the accepting side tells
/// a TLS connection from a plain one.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The exporter label both ends derive the binding with.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-iggy-replication-binding";

/// The name a connecting member asks for; nobody checks it against the certificate.
const PEER_NAME: &str = "iggy-replica";

#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("cannot generate the replication port's certificate: {0}")]
    Generate(String),
    #[error("cannot set up TLS for replication: {0}")]
    Setup(#[from] rustls::Error),
}

/// This member's TLS setup for replication connections, both ways.
///
/// A member with `replication.tls` off still accepts TLS connections (a ring turning it on one
/// member at a time), but until one arrives it needs no key: the key, the certificate and the
/// configurations are then made at the first TLS connection, not at start. Making them touches
/// the certificate writer, the key generator and rustls' configuration code, about a megabyte
/// of the binary's pages that a replica which never sees TLS would otherwise keep resident
/// (docs/benchmarks.md, "Idle RSS": it took a primary past 16 MiB after a load).
#[derive(Debug)]
pub struct PeerTls {
    configs: OnceLock<Result<Configs, String>>,
    /// Whether this member opens its own connections over TLS (`replication.tls`).
    opens_connections: bool,
}

#[derive(Debug)]
struct Configs {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl PeerTls {
    /// This member's TLS; `opens_connections` is `replication.tls`. With it on, the key and
    /// certificate are generated now, so a failure stops the start with a clear error;
    /// otherwise at the first TLS connection a peer opens.
    pub fn generate(opens_connections: bool) -> Result<Self, PeerTlsError> {
        let tls = Self {
            configs: OnceLock::new(),
            opens_connections,
        };
        if opens_connections {
            tls.configs()?;
        }
        Ok(tls)
    }

    fn configs(&self) -> Result<&Configs, PeerTlsError> {
        self.configs
            .get_or_init(|| Configs::generate().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| PeerTlsError::Generate(e.clone()))
    }

    pub fn opens_connections(&self) -> bool {
        self.opens_connections
    }

    /// Whether the key and certificate exist yet (made at start or by a first TLS connection).
    pub fn generated(&self) -> bool {
        self.configs.get().is_some_and(|c| c.is_ok())
    }

    pub fn connector(&self) -> Result<tokio_rustls::TlsConnector, PeerTlsError> {
        Ok(tokio_rustls::TlsConnector::from(
            self.configs()?.client.clone(),
        ))
    }

    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, PeerTlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(
            self.configs()?.server.clone(),
        ))
    }

    /// A client session for a blocking connection (state sync's).
    pub fn client_session(&self) -> Result<rustls::ClientConnection, PeerTlsError> {
        Ok(rustls::ClientConnection::new(
            self.configs()?.client.clone(),
            peer_name(),
        )?)
    }
}

impl Configs {
    /// A fresh key and self-signed certificate, and the configurations that use them.
    fn generate() -> Result<Self, PeerTlsError> {
        let provider = crate::net::tls::ring_provider();
        let (chain, key) = crate::net::tls::generate_self_signed(vec![PEER_NAME.to_owned()])
            .map_err(PeerTlsError::Generate)?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // The connecting side never reads after its handshake (answers travel on the other
        // member's own connection), so tickets would only sit in its socket buffer.
        server.send_tls13_tickets = 0;
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignedByItsKey(provider)))
            .with_no_client_auth();
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

pub fn peer_name() -> ServerName<'static> {
    ServerName::try_from(PEER_NAME)
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The value a finished TLS session binds both proofs to ([`Binding::Tls`]).
pub fn binding<Data>(session: &rustls::ConnectionCommon<Data>) -> std::io::Result<Binding> {
    session
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map(Binding::Tls)
        .map_err(std::io::Error::other)
}

/// Takes any certificate, but only a handshake signed by the key it names: the secret
/// handshake's binding authenticates the peer ([`binding`]), and the signature check keeps a
/// session's key exchange tied to the certificate the peer presented.
#[derive(Debug)]
struct SignedByItsKey(Arc<CryptoProvider>);

impl ServerCertVerifier for SignedByItsKey {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "replication connections speak TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
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
