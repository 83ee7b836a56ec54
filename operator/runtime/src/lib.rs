//! The run-time pieces the operator and the sidecar binaries share, and nothing else: neither
//! reconcile code nor the AWS SDK, so the sidecar links only what it uses.
//!
//! - [`telemetry`]: stderr logs plus OTLP traces and logs from the standard `OTEL_*` variables;
//! - [`shutdown_signal`]: SIGTERM/SIGINT, which the kubelet sends to stop a container;
//! - [`install_crypto_provider`]: rustls' provider for the TLS clients (kube's).

/// Logging and OTLP export: the broker's crate, shared so that every binary reads the `OTEL_*`
/// variables the same way.
pub use iggy_telemetry as telemetry;

/// Completes on SIGINT or SIGTERM — the kubelet stops a container with SIGTERM, and both
/// binaries must then release what they hold and flush their telemetry, not just die.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Makes ring rustls' process-wide crypto provider. Needed before the first TLS client is
/// built whenever more than one provider is compiled in (a workspace build does that), and
/// harmless otherwise; a second call is a no-op. (rustls 0.23.48 deprecates ring's provider for
/// lacking post-quantum key exchange; the broker's client port makes the same choice.)
#[allow(deprecated)]
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
