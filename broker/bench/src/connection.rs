//! A minimal request/response client over one TCP connection, in plain TCP or TLS.

use crate::args::Args;
use anyhow::{bail, Context, Result};
use iggy_wire::frame::{RequestHeader, ResponseHeader, HEADER_SIZE};
use iggy_wire::request::encode;
use iggy_wire::Command;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The connection's byte stream: a socket, or TLS over one.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Connection {
    stream: Box<dyn Stream>,
    response: Vec<u8>,
    header: Vec<u8>,
}

impl Connection {
    pub async fn login(args: &Args) -> Result<Self> {
        let socket = TcpStream::connect(&args.address)
            .await
            .with_context(|| format!("connect to {}", args.address))?;
        socket.set_nodelay(!args.nagle)?;
        let stream: Box<dyn Stream> = match &args.tls_ca {
            None => Box::new(socket),
            Some(ca) => Box::new(tls(socket, ca, &args.tls_domain).await?),
        };
        let mut connection = Self {
            stream,
            response: Vec::new(),
            header: Vec::with_capacity(8),
        };
        connection
            .ok(
                Command::LoginUser,
                &encode::login_user(&args.username, &args.password),
            )
            .await
            .context("login")?;
        Ok(connection)
    }

    /// Sends a request and returns the OK payload; a non-zero status is an error.
    pub async fn ok(&mut self, command: Command, payload: &[u8]) -> Result<&[u8]> {
        self.header.clear();
        RequestHeader::encode(command.code(), payload.len(), &mut self.header);
        self.stream.write_all(&self.header).await?;
        self.stream.write_all(payload).await?;
        // TLS holds the last record until flushed; a socket's flush does nothing.
        self.stream.flush().await?;
        let mut header = [0u8; HEADER_SIZE];
        self.stream.read_exact(&mut header).await?;
        let header = ResponseHeader::parse(&header);
        self.response.resize(header.payload_len as usize, 0);
        self.stream.read_exact(&mut self.response).await?;
        if header.status != 0 {
            bail!(
                "{} failed with Iggy status {}",
                command.name(),
                header.status
            );
        }
        Ok(&self.response)
    }
}

/// A TLS session over `socket` to a broker whose certificate `ca` issued for `domain`.
async fn tls(
    socket: TcpStream,
    ca: &std::path::Path,
    domain: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("parse {}", ca.display()))?)?;
    }
    // Deprecated from rustls 0.23.48 (no post-quantum key exchange); the broker uses the same.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(domain.to_string())
        .with_context(|| format!("--tls-domain {domain}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, socket)
        .await
        .context("TLS handshake")
}
