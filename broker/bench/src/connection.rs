//! A minimal request/response client over one TCP connection.

use crate::args::Args;
use anyhow::{bail, Context, Result};
use iggy_wire::frame::{RequestHeader, ResponseHeader, HEADER_SIZE};
use iggy_wire::request::encode;
use iggy_wire::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Connection {
    stream: TcpStream,
    response: Vec<u8>,
    header: Vec<u8>,
}

impl Connection {
    pub async fn login(args: &Args) -> Result<Self> {
        let stream = TcpStream::connect(&args.address)
            .await
            .with_context(|| format!("connect to {}", args.address))?;
        stream.set_nodelay(!args.nagle)?;
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
