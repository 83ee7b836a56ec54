//! Operations: every change of the broker's state, as data.
//!
//! A command handler checks what belongs to its connection (the session, decoding, expensive
//! preparation such as password hashing), turns the request into a [`Submission`] and hands it to
//! the broker's submitter (`crate::submit`). The submitter orders it among all other changes,
//! decides what is not deterministic ([`OpContext`]: the time and the entropy for generated
//! message ids) and has [`crate::apply`] execute it against the catalog and the partitions.
//!
//! Everything an operation needs to be applied the same way on every replica is in the
//! operation or its context: a password arrives as its hash, a personal access token as its
//! SHA-256, ids are resolved by `apply` against the state the operation meets. Authorization is
//! part of `apply` too, because only the state at the operation's place in the order decides it.

pub mod codec;

use crate::state::groups::{GroupMember, Handover};
use crate::state::settings::StateSettings;
use crate::storage::dedup::DeduplicationSettings;
use iggy_wire::message::SendMessagesHeader;
use iggy_wire::request::{GroupRef, TopicSettings};
use iggy_wire::WireError;
use iggy_wire::{ConsumerKind, Identifier, Partitioning, Permissions};

/// What the submitter decides for an operation. On a single node: the local clock and the
/// process's randomness; on a replicated broker the primary decides and the prepare carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpContext {
    /// Microseconds since the Unix epoch: creation times, message timestamps, token expiry.
    pub timestamp: u64,
    /// Seeds the ids of messages sent with id 0 (see `MessageIds`).
    pub entropy: u128,
}

/// An operation and who asks for it.
pub struct Submission<'a> {
    /// The acting user, `None` before login (only operations that need no permission pass).
    pub user: Option<u32>,
    pub op: Operation<'a>,
}

/// Every change of broker state. Borrowed data (`Append`'s frames) is stamped in place.
///
/// Serde encodes every operation but `Append` for the replication log (`codec`); appends, the
/// bulk of the log, have a hand-laid encoding that keeps their frames as the client sent them.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Operation<'a> {
    CreateStream {
        name: String,
    },
    UpdateStream {
        stream: Identifier,
        name: String,
    },
    DeleteStream {
        stream: Identifier,
    },
    PurgeStream {
        stream: Identifier,
    },
    CreateTopic {
        stream: Identifier,
        partitions: u32,
        settings: TopicSettings,
    },
    UpdateTopic {
        stream: Identifier,
        topic: Identifier,
        settings: TopicSettings,
    },
    DeleteTopic {
        stream: Identifier,
        topic: Identifier,
    },
    PurgeTopic {
        stream: Identifier,
        topic: Identifier,
    },
    CreatePartitions {
        stream: Identifier,
        topic: Identifier,
        count: u32,
    },
    DeletePartitions {
        stream: Identifier,
        topic: Identifier,
        count: u32,
    },
    DeleteSegments {
        stream: Identifier,
        topic: Identifier,
        partition: u32,
        count: u32,
    },
    CreateUser {
        username: String,
        password_hash: String,
        active: bool,
        permissions: Option<Permissions>,
    },
    DeleteUser {
        user: Identifier,
    },
    UpdateUser {
        user: Identifier,
        username: Option<String>,
        active: Option<bool>,
    },
    UpdatePermissions {
        user: Identifier,
        permissions: Option<Permissions>,
    },
    /// Replaces `user`'s password hash, only if it is still `expected_hash` (the one the
    /// caller proved knowledge of).
    ChangePassword {
        user: u32,
        expected_hash: String,
        new_hash: String,
    },
    /// A token for the acting user; `lifetime` in µs, 0 or `u64::MAX` for never.
    CreateToken {
        name: String,
        token_sha256: String,
        lifetime: u64,
    },
    DeleteToken {
        name: String,
    },
    /// Drops every user's expired tokens (the maintenance task).
    ExpireTokens,
    /// Stores a consumer's offset in one partition. `key` names the consumer (its id) or the
    /// group (its numeric id); an offset past the partition's last message is refused.
    StoreOffset {
        stream: u32,
        topic: u32,
        partition: u32,
        kind: ConsumerKind,
        key: String,
        offset: u64,
    },
    DeleteOffset {
        stream: u32,
        topic: u32,
        partition: u32,
        kind: ConsumerKind,
        key: String,
    },
    CreateGroup {
        stream: Identifier,
        topic: Identifier,
        name: String,
    },
    DeleteGroup {
        group: GroupRef,
    },
    /// A connection joins a consumer group (idempotent); every replica rebalances alike.
    JoinGroup {
        group: GroupRef,
        member: GroupMember,
    },
    /// A connection leaves a consumer group it is a member of.
    LeaveGroup {
        group: GroupRef,
        member: GroupMember,
    },
    /// A connection closed: it leaves every group (issued by the broker, not by a client).
    LeaveAllGroups {
        member: GroupMember,
    },
    /// Drops the members of broker node `node`, except those of its incarnation `keep`: a node
    /// that starts forgets its previous incarnation's connections, and the primary forgets a
    /// node that has been unreachable too long (issued by the broker, not by a client).
    ForgetNode {
        node: u32,
        keep: Option<u32>,
    },
    /// A retention pass as of the operation's timestamp: expired and over-size sealed segments
    /// are deleted (a replicated broker's primary issues it; a single node runs the pass on its
    /// own clock).
    EnforceRetention,
    /// The object store now holds this sealed segment of the partition (ids as resolved when
    /// the primary uploaded it): every replica's tier manifest names it from this point of the
    /// log on, so their local copies may be evicted and reads below them go to the store. Issued
    /// by a replicated broker's primary after the upload (a single node records it directly).
    RecordTiered {
        stream: u32,
        topic: u32,
        partition: u32,
        segment: iggy_tiering::TieredSegment,
    },
    /// Seals the partition's active segment if the log's next offset is still `at`, so it can
    /// be uploaded before it fills (`tiering.l3.seal_after`); segment boundaries must be the
    /// same on every replica, so the primary's decision goes through the log.
    SealSegment {
        stream: u32,
        topic: u32,
        partition: u32,
        at: u64,
    },
    /// The member `handover.from` hands its partition over to the member it now belongs to
    /// (cooperative rebalancing, `state::groups`). Issued by the broker of the member's node
    /// once the member stored an offset for all it polled from the partition, or the
    /// rebalancing timeout passed; stale ones change nothing.
    HandOverPartition {
        stream: u32,
        topic: u32,
        group: u32,
        handover: Handover,
    },
    /// Turns message deduplication on with these settings, or off (`storage::dedup`). Issued
    /// by a broker whose configuration differs from what the catalog holds: a single node at
    /// boot, a replicated broker's primary (so every replica uses the primary's settings).
    SetDeduplication {
        settings: Option<DeduplicationSettings>,
    },
    /// Puts these settings in force for applying the operations after it
    /// (`state::settings`): segments roll at the new size from the next append on. Issued like
    /// `SetDeduplication`.
    SetStateSettings {
        settings: StateSettings,
    },
    // Last: serde numbers variants after a skipped one differently when encoding and decoding.
    /// Appends a batch of message frames as the client sent them; `apply` validates them
    /// against the index before writing.
    #[serde(skip)]
    Append {
        stream: Identifier,
        topic: Identifier,
        partitioning: Partitioning,
        count: u32,
        // Skipped with the variant; marked again so serde does not borrow the decoder's input
        // for every operation (the implicit borrow of a `&[u8]` field).
        #[serde(skip)]
        index: &'a [u8],
        messages: &'a mut [u8],
    },
}

impl<'a> Operation<'a> {
    /// Whether it must be taken on a nearly full disk: it removes (the way to make room), or
    /// the broker issues it to remove, evict, clean up or seal (a sealed segment can go to the
    /// object store), or to put its deduplication or state settings in force (a few bytes of metadata,
    /// which the metadata reserve covers). The others add to the state and may need room to
    /// save it.
    pub fn makes_room_or_cleans_up(&self) -> bool {
        use Operation::*;
        matches!(
            self,
            DeleteStream { .. }
                | PurgeStream { .. }
                | DeleteTopic { .. }
                | PurgeTopic { .. }
                | DeletePartitions { .. }
                | DeleteSegments { .. }
                | DeleteUser { .. }
                | DeleteToken { .. }
                | ExpireTokens
                | DeleteOffset { .. }
                | DeleteGroup { .. }
                | LeaveGroup { .. }
                | LeaveAllGroups { .. }
                | ForgetNode { .. }
                | HandOverPartition { .. }
                | EnforceRetention
                | RecordTiered { .. }
                | SealSegment { .. }
                | SetDeduplication { .. }
                | SetStateSettings { .. }
        )
    }

    /// Whether it puts settings in force that applying later operations depends on.
    pub fn puts_settings(&self) -> bool {
        matches!(
            self,
            Operation::SetDeduplication { .. } | Operation::SetStateSettings { .. }
        )
    }

    /// The `Append` a SendMessages payload asks for: its header decoded, its frames borrowed
    /// in place for stamping.
    pub fn append(payload: &'a mut [u8]) -> Result<Self, WireError> {
        let header = SendMessagesHeader::decode(payload)?;
        let (head, messages) = payload.split_at_mut(header.messages_start);
        Ok(Operation::Append {
            stream: header.stream,
            topic: header.topic,
            partitioning: header.partitioning,
            count: header.count,
            index: &head[header.index_start..],
            messages,
        })
    }
}

/// Ids for messages sent with id 0: version-4 UUIDs derived from the operation's entropy and
/// the message's place in the batch, so every replica stamps the same ids while a single node
/// still draws fresh randomness for every batch.
pub struct MessageIds {
    entropy: u128,
    next: u64,
}

impl MessageIds {
    pub fn new(entropy: u128) -> Self {
        Self { entropy, next: 0 }
    }

    pub fn next_id(&mut self) -> u128 {
        let n = self.next;
        self.next += 1;
        let high = mix((self.entropy >> 64) as u64 ^ n);
        let low = mix(self.entropy as u64 ^ n.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15);
        let bytes = ((u128::from(high) << 64) | u128::from(low)).to_le_bytes();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .as_u128()
    }
}

/// splitmix64's finaliser: a bijection that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn message_ids_are_uuid_v4_distinct_and_replayable() {
        let mut ids = MessageIds::new(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let first: Vec<u128> = (0..1000).map(|_| ids.next_id()).collect();
        assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 1000);
        for id in &first {
            assert_eq!(uuid::Uuid::from_u128(*id).get_version_num(), 4);
        }
        let mut again = MessageIds::new(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        assert_eq!(
            (0..1000).map(|_| again.next_id()).collect::<Vec<_>>(),
            first
        );
        let mut other = MessageIds::new(1);
        assert_ne!(other.next_id(), first[0]);
    }
}
