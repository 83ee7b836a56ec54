//! A typed client for the broker's admin API (`iggy_contract::admin`), over plain HTTP/1.1 on
//! the pod's loopback. One connection per call: the sidecar asks every few seconds, and a
//! fresh connection never carries a stale failure over from a broker that restarted.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use iggy_contract::admin::{AdminError, StepDown, RING_PATH, STATUS_PATH, STEP_DOWN_PATH};
use iggy_contract::{AdminStatus, Ring, RingUpdate};
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one admin call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("admin URL {0:?} is not http://host:port")]
    BadUrl(String),
    #[error("connecting to the broker's admin API at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("{method} {path} on the broker: {source}")]
    Http {
        method: &'static str,
        path: &'static str,
        source: hyper::Error,
    },
    #[error("{method} {path} on the broker took longer than {CALL_TIMEOUT:?}")]
    Timeout {
        method: &'static str,
        path: &'static str,
    },
    #[error("{method} {path} on the broker answered {status}: {message}")]
    Status {
        method: &'static str,
        path: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("{path} answered JSON that is not the admin contract: {source}")]
    Decode {
        path: &'static str,
        source: serde_json::Error,
    },
}

/// The broker's admin API at `http://host:port`.
#[derive(Clone, Debug)]
pub struct AdminClient {
    address: String,
}

impl AdminClient {
    pub fn new(url: &str) -> Result<Self, AdminClientError> {
        let address = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| AdminClientError::BadUrl(url.to_string()))?;
        Ok(Self {
            address: address.to_string(),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// `GET /admin/status`.
    pub async fn status(&self) -> Result<AdminStatus, AdminClientError> {
        let body = self.call(Method::GET, STATUS_PATH, None).await?;
        serde_json::from_slice(&body).map_err(|source| AdminClientError::Decode {
            path: STATUS_PATH,
            source,
        })
    }

    /// `POST /admin/step-down`: asks a primary to hand its view on.
    pub async fn step_down(&self) -> Result<StepDown, AdminClientError> {
        let body = self.call(Method::POST, STEP_DOWN_PATH, None).await?;
        serde_json::from_slice(&body).map_err(|source| AdminClientError::Decode {
            path: STEP_DOWN_PATH,
            source,
        })
    }

    /// `POST /admin/ring`: hands the broker a new membership.
    pub async fn post_ring(&self, ring: &Ring) -> Result<RingUpdate, AdminClientError> {
        let json = serde_json::to_vec(ring).map_err(|source| AdminClientError::Decode {
            path: RING_PATH,
            source,
        })?;
        let body = self.call(Method::POST, RING_PATH, Some(json)).await?;
        serde_json::from_slice(&body).map_err(|source| AdminClientError::Decode {
            path: RING_PATH,
            source,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, AdminClientError> {
        let name = method_name(&method);
        let exchange = async {
            let http = |source| AdminClientError::Http {
                method: name,
                path,
                source,
            };
            let stream = TcpStream::connect(&self.address).await.map_err(|source| {
                AdminClientError::Connect {
                    address: self.address.clone(),
                    source,
                }
            })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http)?;
            tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, &self.address);
            if body.is_some() {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|error| AdminClientError::BadUrl(format!("{}: {error}", self.address)))?;
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(http)?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<AdminError>(&bytes)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
                return Err(AdminClientError::Status {
                    method: name,
                    path,
                    status,
                    message,
                });
            }
            Ok(bytes)
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| AdminClientError::Timeout { method: name, path })?
    }
}

/// The admin API uses two methods; errors name them as static text.
fn method_name(method: &Method) -> &'static str {
    if method == Method::POST {
        "POST"
    } else {
        "GET"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_base_urls_are_taken() {
        assert_eq!(
            AdminClient::new("http://127.0.0.1:3000/")
                .expect("valid")
                .address(),
            "127.0.0.1:3000"
        );
        for bad in [
            "127.0.0.1:3000",
            "https://x:1",
            "http://",
            "http://x:1/admin",
        ] {
            assert!(AdminClient::new(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_broker_that_is_not_there_is_a_connect_error() {
        let client = AdminClient::new("http://127.0.0.1:9").expect("valid");
        assert!(matches!(
            client.status().await,
            Err(AdminClientError::Connect { .. })
        ));
    }
}
