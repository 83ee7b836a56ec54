//! The client port's certificate as the operator checks it (`spec.tls`): read from the TLS
//! Secret's `tls.crt` only. The private key (`tls.key`) is the brokers' alone; the operator
//! looks at its key name, never its value.
//!
//! Two kinds of finding come out of it. A `tls.crt` that holds no certificate would stop every
//! broker that loads it, so validation refuses it (no pod is created or rolled onto it). A
//! certificate that loads but that clients will refuse (expired, or without the names they
//! connect by) cannot be fixed by the operator and does not stop the brokers, so it is reported
//! in `status.tls` and the `CertificateValid` condition, with an Event, and nothing waits on it.

use crate::crd::TlsStatus;
use crate::names::ClusterNames;
use iggy_contract::certificate::{self, EXPIRY_WARNING_SECONDS};
use iggy_contract::Position;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// What the operator read from `tls.crt`: its first certificate, the one brokers present to
/// clients (the rest of a chain is the issuers').
#[derive(Clone, Debug, PartialEq)]
pub struct ServedCertificate {
    /// Seconds since the Unix epoch after which clients refuse it.
    pub not_after: i64,
    /// Its subjectAltName entries (DNS names and IP addresses).
    pub names: Vec<String>,
}

/// Why `tls.crt` holds no certificate a broker could serve.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CertificateProblem {
    #[error("holds no PEM block \"CERTIFICATE\"")]
    NoCertificate,
    #[error("its first certificate is not DER-encoded X.509 (no validity period could be read)")]
    Malformed,
}

/// Reads the first certificate of a PEM chain.
pub fn read(pem: &[u8]) -> Result<ServedCertificate, CertificateProblem> {
    let first = CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .ok_or(CertificateProblem::NoCertificate)?;
    let not_after = certificate::not_after(&first).ok_or(CertificateProblem::Malformed)?;
    Ok(ServedCertificate {
        not_after,
        names: certificate::names(&first),
    })
}

/// The `CertificateValid` condition's verdict on a served certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Judges `served` at `now` (Unix seconds) for a cluster of `members` brokers: expired first,
/// then names clients connect by that it lacks, then expiring within
/// [`EXPIRY_WARNING_SECONDS`] (still valid, but a renewal is overdue).
///
/// The names checked are those the operator hands out: the client Service and the primary
/// Service (under any of the names cluster DNS answers for them), and each member's own
/// address, which `GetClusterMetadata` gives clients that reach members directly.
pub fn judge(
    served: &ServedCertificate,
    names: &ClusterNames,
    members: Position,
    now: i64,
) -> Verdict {
    let expires = rfc3339(served.not_after);
    let left = served.not_after - now;
    if left <= 0 {
        return Verdict {
            valid: false,
            reason: "Expired",
            message: format!("the client port's certificate expired at {expires}; clients refuse it until the Secret is renewed"),
        };
    }
    let missing = missing_names(served, names, members);
    if !missing.is_empty() {
        return Verdict {
            valid: false,
            reason: "NamesMissing",
            message: format!(
                "the client port's certificate (valid until {expires}) does not cover {}; clients connecting by those names refuse it",
                missing.join(", ")
            ),
        };
    }
    if left < EXPIRY_WARNING_SECONDS {
        return Verdict {
            valid: true,
            reason: "ExpiresSoon",
            message: format!(
                "the client port's certificate expires at {expires}, in {} day(s); it has not been renewed",
                left / 86_400
            ),
        };
    }
    Verdict {
        valid: true,
        reason: "Valid",
        message: format!("the client port's certificate is valid until {expires} for every name clients are given"),
    }
}

/// The names clients are given that `served` does not cover, Services first.
fn missing_names(
    served: &ServedCertificate,
    names: &ClusterNames,
    members: Position,
) -> Vec<String> {
    let mut missing = Vec::new();
    for service in [names.client_service(), names.primary_service()] {
        // Cluster DNS answers for `svc`, `svc.namespace`, `svc.namespace.svc` and the full
        // name; any of them serves. The domain `cluster.local` is the common default.
        let forms = [
            service.clone(),
            format!("{service}.{}", names.namespace),
            format!("{service}.{}.svc", names.namespace),
            format!("{service}.{}.svc.cluster.local", names.namespace),
        ];
        if !forms
            .iter()
            .any(|form| certificate::covers(&served.names, form))
        {
            missing.push(forms[2].clone());
        }
    }
    for position in 0..members {
        let host = names.member_host(position);
        if !certificate::covers(&served.names, &host) {
            missing.push(host);
        }
    }
    missing
}

/// `status.tls` for the Secret `secret_name` serving `served`.
pub fn status(secret_name: &str, served: &ServedCertificate) -> TlsStatus {
    TlsStatus {
        secret_name: secret_name.to_string(),
        not_after: rfc3339(served.not_after),
        dns_names: served.names.clone(),
    }
}

/// Seconds until the verdict on `served` next changes by time alone (entering the warning
/// window, or expiring), if that is ahead.
pub fn next_change(served: &ServedCertificate, now: i64) -> Option<i64> {
    [served.not_after - EXPIRY_WARNING_SECONDS, served.not_after]
        .into_iter()
        .map(|at| at - now)
        .find(|&seconds| seconds > 0)
}

/// Unix seconds as an RFC 3339 UTC time, the way Kubernetes writes times.
fn rfc3339(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|at| at.to_string())
        .unwrap_or_else(|_| format!("{seconds} (Unix seconds)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_2030: i64 = 1_893_456_000;

    fn served(names: &[&str]) -> ServedCertificate {
        ServedCertificate {
            not_after: JAN_2030,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn names() -> ClusterNames {
        ClusterNames::new("events", "prod")
    }

    #[test]
    fn reads_the_leaf_of_a_chain_and_refuses_what_is_no_certificate() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf =
            rcgen::CertificateParams::new(vec!["events.prod.svc".to_string()]).expect("params");
        leaf.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let leaf = leaf.signed_by(&key, &issuer).expect("sign");
        let chain = format!("{}{}", leaf.pem(), issuer.pem());
        assert_eq!(read(chain.as_bytes()), Ok(served(&["events.prod.svc"])));

        assert_eq!(read(b"not pem"), Err(CertificateProblem::NoCertificate));
        assert_eq!(
            read(key.serialize_pem().as_bytes()),
            Err(CertificateProblem::NoCertificate),
            "a key where the chain belongs"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        assert_eq!(read(garbage.as_bytes()), Err(CertificateProblem::Malformed));
    }

    #[test]
    fn a_certificate_for_every_name_clients_are_given_is_valid_until_the_warning_window() {
        let full = served(&[
            "events.prod.svc",
            "events-primary.prod.svc",
            "*.events-replicas.prod.svc",
        ]);
        let verdict = judge(&full, &names(), 3, JAN_2030 - 30 * 86_400);
        assert_eq!((verdict.valid, verdict.reason), (true, "Valid"));
        assert!(
            verdict.message.contains("2030-01-01T00:00:00Z"),
            "{}",
            verdict.message
        );

        let soon = judge(&full, &names(), 3, JAN_2030 - 3 * 86_400 - 60);
        assert_eq!((soon.valid, soon.reason), (true, "ExpiresSoon"));
        assert!(soon.message.contains("in 3 day(s)"), "{}", soon.message);

        let expired = judge(&full, &names(), 3, JAN_2030);
        assert_eq!((expired.valid, expired.reason), (false, "Expired"));
    }

    #[test]
    fn names_clients_are_given_and_the_certificate_lacks_are_listed() {
        // The Services under their full names count; members named one by one count.
        let partial = served(&[
            "events.prod.svc.cluster.local",
            "events-0.events-replicas.prod.svc",
        ]);
        let verdict = judge(&partial, &names(), 2, JAN_2030 - 30 * 86_400);
        assert_eq!((verdict.valid, verdict.reason), (false, "NamesMissing"));
        assert!(
            verdict.message.contains(
                "does not cover events-primary.prod.svc, events-1.events-replicas.prod.svc;"
            ),
            "{}",
            verdict.message
        );
        // Expiry is said before names: it refuses every client.
        let verdict = judge(&partial, &names(), 2, JAN_2030 + 1);
        assert_eq!(verdict.reason, "Expired");
    }

    #[test]
    fn the_next_change_by_time_is_the_warning_window_then_the_expiry() {
        let full = served(&["events.prod.svc"]);
        let before = JAN_2030 - EXPIRY_WARNING_SECONDS - 100;
        assert_eq!(next_change(&full, before), Some(100));
        assert_eq!(next_change(&full, JAN_2030 - 100), Some(100));
        assert_eq!(next_change(&full, JAN_2030), None);
        assert_eq!(
            status("events-tls", &full).not_after,
            "2030-01-01T00:00:00Z"
        );
    }
}
