//! Container probes run for real against the pod's address: `httpGet` (a status in 200–399
//! passes) and `tcpSocket` (a connection passes). `exec` probes are not run here (pods share
//! the host's filesystem, so a command would not see what the container sees); a container
//! with one is reported as passing it, and the harness logs that once.

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    NotRun,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn seconds(value: &Value, default: u64) -> Duration {
    Duration::from_secs(value.as_u64().unwrap_or(default))
}

/// A port given by number or by a container port's name.
pub fn resolve_port(port: &Value, ports: &BTreeMap<String, u16>) -> Result<u16, String> {
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).map_err(|_| format!("port {number} out of range"));
    }
    let name = port.as_str().unwrap_or_default();
    if let Ok(number) = name.parse::<u16>() {
        return Ok(number);
    }
    ports
        .get(name)
        .copied()
        .ok_or_else(|| format!("no container port named {name:?}"))
}

impl Probe {
    /// The probe a container spec declares, None when it declares none.
    pub fn from_spec(spec: &Value, ports: &BTreeMap<String, u16>) -> Result<Option<Self>, String> {
        if !spec.is_object() {
            return Ok(None);
        }
        let action = if let Some(http) = spec.get("httpGet") {
            Action::Http {
                port: resolve_port(&http["port"], ports)?,
                path: http["path"].as_str().unwrap_or("/").to_string(),
            }
        } else if let Some(tcp) = spec.get("tcpSocket") {
            Action::Tcp {
                port: resolve_port(&tcp["port"], ports)?,
            }
        } else {
            tracing::warn!(
                "exec and gRPC probes are not run by the dev cluster's kubelet; treated as passing"
            );
            Action::NotRun
        };
        Ok(Some(Self {
            action,
            initial_delay: seconds(&spec["initialDelaySeconds"], 0),
            period: seconds(&spec["periodSeconds"], 10).max(Duration::from_secs(1)),
            timeout: seconds(&spec["timeoutSeconds"], 1).max(Duration::from_secs(1)),
            success_threshold: spec["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
            failure_threshold: spec["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
        }))
    }

    /// One attempt; Err says why it failed.
    pub async fn check(&self, ip: Ipv4Addr) -> Result<(), String> {
        let attempt = async {
            match &self.action {
                Action::NotRun => Ok(()),
                Action::Tcp { port } => TcpStream::connect(SocketAddr::from((ip, *port)))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("dial tcp {ip}:{port}: {e}")),
                Action::Http { port, path } => http_get(ip, *port, path).await,
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.timeout)))
    }
}

async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(SocketAddr::from((ip, port)))
        .await
        .map_err(|e| format!("Get \"http://{ip}:{port}{path}\": {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(64);
    let mut buffer = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let read = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response {:?}", line.lines().next()))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_take_named_ports_and_kubernetes_defaults() {
        let ports = BTreeMap::from([("http".to_string(), 3000)]);
        let probe = Probe::from_spec(
            &json!({"httpGet": {"path": "/ready", "port": "http"}}),
            &ports,
        )
        .expect("valid")
        .expect("declared");
        assert_eq!(
            probe.action,
            Action::Http {
                port: 3000,
                path: "/ready".into()
            }
        );
        assert_eq!(probe.period, Duration::from_secs(10));
        assert_eq!(probe.failure_threshold, 3);
        assert!(Probe::from_spec(&json!({"tcpSocket": {"port": "nope"}}), &ports).is_err());
        assert_eq!(Probe::from_spec(&Value::Null, &ports), Ok(None));
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let probe = Probe {
            action: Action::Http {
                port,
                path: "/ready".into(),
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
        };
        assert_eq!(probe.check(Ipv4Addr::LOCALHOST).await, Ok(()));
        let failed = probe
            .check(Ipv4Addr::LOCALHOST)
            .await
            .expect_err("503 fails");
        assert!(failed.contains("503"), "{failed}");
    }
}
