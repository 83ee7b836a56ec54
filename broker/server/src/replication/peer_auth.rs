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
//! (that needs TLS, not built yet — docs/replication.md, "Who may speak to a replica").

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

/// The cluster's replication secret and its id, which every proof binds.
#[derive(Clone)]
pub struct ClusterSecret {
    key: Arc<[u8]>,
    cluster_id: Arc<str>,
}

impl fmt::Debug for ClusterSecret {
    /// Never print the secret, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecret")
            .field("cluster_id", &self.cluster_id)
            .field("key", &"<redacted>")
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
        }
    }

    /// What `side` sends to show it holds the secret, for the connection whose nonces are
    /// `connecting` and `accepting`.
    pub fn proof(&self, side: Side, connecting: &Nonce, accepting: &Nonce) -> Proof {
        let cluster_len = (self.cluster_id.len() as u32).to_le_bytes();
        hmac_sha256(
            &self.key,
            &[
                side.label(),
                &cluster_len,
                self.cluster_id.as_bytes(),
                connecting,
                accepting,
            ],
        )
    }

    /// Whether `claimed` is `side`'s proof for these nonces (compared in constant time).
    pub fn verify(
        &self,
        side: Side,
        connecting: &Nonce,
        accepting: &Nonce,
        claimed: &Proof,
    ) -> bool {
        constant_time_eq(&self.proof(side, connecting, accepting), claimed)
    }
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
        let proof = secret.proof(Side::Connecting, &a, &b);
        assert!(secret.verify(Side::Connecting, &a, &b, &proof));
        assert!(!secret.verify(Side::Accepting, &a, &b, &proof), "reflected");
        assert!(
            !secret.verify(Side::Connecting, &b, &a, &proof),
            "nonces swapped"
        );
        let fresh = nonce().unwrap();
        assert!(
            !secret.verify(Side::Connecting, &a, &fresh, &proof),
            "replayed"
        );
        let other_secret = ClusterSecret::new("correct horse battery stapler", "prod");
        assert!(!other_secret.verify(Side::Connecting, &a, &b, &proof));
        let other_cluster = ClusterSecret::new("correct horse battery staple", "test");
        assert!(!other_cluster.verify(Side::Connecting, &a, &b, &proof));
    }

    #[test]
    fn the_secret_is_never_printed() {
        let secret = ClusterSecret::new("do-not-print-me-please", "prod");
        let printed = format!("{secret:?}");
        assert!(!printed.contains("do-not-print"), "{printed}");
        assert!(printed.contains("prod"));
    }
}
