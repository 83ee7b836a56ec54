//! Replicas prove to each other that they hold the cluster's replication secret before either
//! takes a frame from the other.
//!
//! The replication port carries everything: prepares, votes, forwarded client requests and
//! state-sync fetches, which answer with any partition's messages. Left open, anyone who can
//! reach it could read every topic past the client port's users and permissions, or append to
//! the log as if they were a replica. So every connection starts with a mutual
//! challenge–response over HMAC-SHA256 keyed with `replication.secret`:
//!
//! 1. the connecting side's hello carries a fresh nonce `a`;
//! 2. the accepting side answers with a fresh nonce `b` and `HMAC(secret, "accept" | cluster | a | b)`;
//! 3. the connecting side checks that proof and sends `HMAC(secret, "connect" | cluster | a | b)`;
//! 4. the accepting side checks it; only then does it read other frames.
//!
//! Each side's nonce makes the other's proof unusable on another connection, the role label
//! keeps one side's proof from being reflected back as the other's, and the cluster id keeps
//! two clusters that were given the same secret by mistake apart. The secret itself never
//! crosses the wire. What this does not give is confidentiality or integrity after the
//! handshake: someone on the path between two replicas can still read and alter the stream
//! unless the members wrap their connections in TLS (`replication.tls`, `peer_tls`), which
//! binds each proof to its TLS session ([`Binding`]).

use crate::replication::peer_tls::PeerTls;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::sync::Arc;

pub const NONCE_LEN: usize = 32;
pub type Nonce = [u8; NONCE_LEN];
pub type Proof = [u8; 32];

/// Fewest bytes a replication secret may have: the operator generates 32 random letters and
/// digits (about 190 bits); a person choosing one by hand must not choose a short word.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster's replication secret and its id, which every proof binds; and whether this
/// member wraps the connections it opens in TLS (`replication.tls`), which travels with the
/// secret because every place that opens a replica connection holds it.
#[derive(Clone)]
pub struct ClusterSecret {
    key: Arc<[u8]>,
    cluster_id: Arc<str>,
    tls: Option<Arc<PeerTls>>,
}

impl fmt::Debug for ClusterSecret {
    /// Never print the secret, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecret")
            .field("cluster_id", &self.cluster_id)
            .field("key", &"<redacted>")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Which side of a connection a proof comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Connecting,
    Accepting,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Connecting => b"iggy-replication connect",
            Side::Accepting => b"iggy-replication accept",
        }
    }
}

impl ClusterSecret {
    pub fn new(secret: &str, cluster_id: &str) -> Self {
        Self {
            key: secret.as_bytes().into(),
            cluster_id: cluster_id.into(),
            tls: None,
        }
    }

    /// The same secret, with this member's TLS: it accepts TLS connections, and opens its own
    /// over TLS if `tls` says so.
    pub fn with_tls(mut self, tls: PeerTls) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// The TLS this member opens its connections with, if `replication.tls` is on.
    pub fn opening_tls(&self) -> Option<&PeerTls> {
        self.tls.as_deref().filter(|tls| tls.opens_connections())
    }

    /// The TLS this member accepts connections with: whatever its own setting, so that a ring
    /// changes `replication.tls` one member at a time (`peer_tls`).
    pub fn accepting_tls(&self) -> Option<&PeerTls> {
        self.tls.as_deref()
    }

    /// What `side` sends to show it holds the secret, for the connection whose nonces are
    /// `connecting` and `accepting` and whose TLS session is `binding` (its exporter value,
    /// `peer_tls::binding`; empty for a plain connection, whose proofs are then the same bytes
    /// as before TLS existed).
    pub fn proof(
        &self,
        side: Side,
        connecting: &Nonce,
        accepting: &Nonce,
        binding: &Binding,
    ) -> Proof {
        let cluster_len = (self.cluster_id.len() as u32).to_le_bytes();
        let session: &[&[u8]] = match binding {
            Binding::Plain => &[],
            Binding::Tls(exported) => &[b"tls-exporter", exported],
        };
        let mut parts: Vec<&[u8]> = vec![
            side.label(),
            &cluster_len,
            self.cluster_id.as_bytes(),
            connecting,
            accepting,
        ];
        parts.extend_from_slice(session);
        hmac_sha256(&self.key, &parts)
    }

    /// Whether `claimed` is `side`'s proof for these nonces and this session (compared in
    /// constant time).
    pub fn verify(
        &self,
        side: Side,
        connecting: &Nonce,
        accepting: &Nonce,
        binding: &Binding,
        claimed: &Proof,
    ) -> bool {
        constant_time_eq(&self.proof(side, connecting, accepting, binding), claimed)
    }
}

/// The connection a proof is bound to, besides its nonces.
///
/// Over TLS a proof also covers a value both ends of one TLS session derive from it and nobody
/// else can (RFC 5705's exporter; `peer_tls`). Replicas do not check each other's
/// certificates — each generates its own at start — so without the binding a relay in the
/// middle could end one TLS session with each replica and pass the proofs across unchanged; it
/// would then read the stream in the clear. With it, the two sessions export different values,
/// each replica's proof fails on the other's side, and nothing past the hello is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Plain,
    Tls([u8; 32]),
}

/// A nonce from the kernel's CSPRNG.
pub fn nonce() -> std::io::Result<Nonce> {
    let mut nonce = [0u8; NONCE_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Proof {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Equality that takes as long whichever byte differs, so timing does not tell an attacker
/// how much of a forged proof was right.
fn constant_time_eq(a: &Proof, b: &Proof) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 4231's test cases 1, 2 and 6 (a key longer than a block).
    #[test]
    fn hmac_matches_the_rfc_4231_vectors() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_proof_holds_only_for_its_side_nonces_secret_and_cluster() {
        let secret = ClusterSecret::new("correct horse battery staple", "prod");
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b);
        let plain = Binding::Plain;
        let proof = secret.proof(Side::Connecting, &a, &b, &plain);
        assert!(secret.verify(Side::Connecting, &a, &b, &plain, &proof));
        assert!(
            !secret.verify(Side::Accepting, &a, &b, &plain, &proof),
            "reflected"
        );
        assert!(
            !secret.verify(Side::Connecting, &b, &a, &plain, &proof),
            "nonces swapped"
        );
        let fresh = nonce().unwrap();
        assert!(
            !secret.verify(Side::Connecting, &a, &fresh, &plain, &proof),
            "replayed"
        );
        let other_secret = ClusterSecret::new("correct horse battery stapler", "prod");
        assert!(!other_secret.verify(Side::Connecting, &a, &b, &plain, &proof));
        let other_cluster = ClusterSecret::new("correct horse battery staple", "test");
        assert!(!other_cluster.verify(Side::Connecting, &a, &b, &plain, &proof));
    }

    #[test]
    fn a_proof_bound_to_one_tls_session_fails_on_another_and_on_a_plain_connection() {
        let secret = ClusterSecret::new("correct horse battery staple", "prod");
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        let session = Binding::Tls([7; 32]);
        let proof = secret.proof(Side::Accepting, &a, &b, &session);
        assert!(secret.verify(Side::Accepting, &a, &b, &session, &proof));
        let relayed = Binding::Tls([8; 32]);
        assert!(!secret.verify(Side::Accepting, &a, &b, &relayed, &proof));
        assert!(!secret.verify(Side::Accepting, &a, &b, &Binding::Plain, &proof));
        // A plain proof is the one written before TLS existed: older members still verify it.
        assert_eq!(secret.proof(Side::Accepting, &a, &b, &Binding::Plain), {
            let cluster_len = 4u32.to_le_bytes();
            hmac_sha256(
                b"correct horse battery staple",
                &[Side::Accepting.label(), &cluster_len, b"prod", &a, &b],
            )
        });
    }

    #[test]
    fn the_secret_is_never_printed() {
        let secret = ClusterSecret::new("do-not-print-me-please", "prod");
        let printed = format!("{secret:?}");
        assert!(!printed.contains("do-not-print"), "{printed}");
        assert!(printed.contains("prod"));
    }
}
