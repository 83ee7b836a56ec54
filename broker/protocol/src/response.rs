//! Encoders for OK response payloads. Layouts follow `iggy_binary_protocol` 0.10.0
//! `responses/`; all integers little-endian.

fn put_name(out: &mut Vec<u8>, name: &str) {
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

/// StreamResponse: 33 bytes plus the name.
#[derive(Debug, Clone)]
pub struct StreamInfo<'a> {
    pub id: u32,
    pub created_at: u64,
    pub topics_count: u32,
    pub size_bytes: u64,
    pub messages_count: u64,
    pub name: &'a str,
}

impl StreamInfo<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        out.extend_from_slice(&self.topics_count.to_le_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.messages_count.to_le_bytes());
        put_name(out, self.name);
    }
}

/// TopicHeader: 51 bytes plus the name.
#[derive(Debug, Clone)]
pub struct TopicInfo<'a> {
    pub id: u32,
    pub created_at: u64,
    pub partitions_count: u32,
    pub message_expiry: u64,
    pub compression: u8,
    pub max_topic_size: u64,
    pub replication_factor: u8,
    pub size_bytes: u64,
    pub messages_count: u64,
    pub name: &'a str,
}

impl TopicInfo<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        out.extend_from_slice(&self.partitions_count.to_le_bytes());
        out.extend_from_slice(&self.message_expiry.to_le_bytes());
        out.push(self.compression);
        out.extend_from_slice(&self.max_topic_size.to_le_bytes());
        out.push(self.replication_factor);
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.messages_count.to_le_bytes());
        put_name(out, self.name);
    }
}

/// PartitionResponse: 40 bytes.
#[derive(Debug, Clone, Copy)]
pub struct PartitionInfo {
    pub id: u32,
    pub created_at: u64,
    pub segments_count: u32,
    pub current_offset: u64,
    pub size_bytes: u64,
    pub messages_count: u64,
}

impl PartitionInfo {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        out.extend_from_slice(&self.segments_count.to_le_bytes());
        out.extend_from_slice(&self.current_offset.to_le_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.messages_count.to_le_bytes());
    }
}

/// Transport byte of ClientResponse.
pub const TRANSPORT_TCP: u8 = 1;

/// ClientResponse: what GetClients lists for each client.
pub fn encode_client_info(
    client_id: u32,
    user_id: u32,
    address: &str,
    groups_count: u32,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&client_id.to_le_bytes());
    out.extend_from_slice(&user_id.to_le_bytes());
    out.push(TRANSPORT_TCP);
    out.extend_from_slice(&(address.len() as u32).to_le_bytes());
    out.extend_from_slice(address.as_bytes());
    out.extend_from_slice(&groups_count.to_le_bytes());
}

/// ClientResponse followed by the client's consumer-group memberships (GetMe / GetClient).
pub fn encode_client(
    client_id: u32,
    user_id: u32,
    address: &str,
    groups: &[(u32, u32, u32)],
    out: &mut Vec<u8>,
) {
    encode_client_info(client_id, user_id, address, groups.len() as u32, out);
    for (stream, topic, group) in groups {
        out.extend_from_slice(&stream.to_le_bytes());
        out.extend_from_slice(&topic.to_le_bytes());
        out.extend_from_slice(&group.to_le_bytes());
    }
}

/// Size of the header that precedes the frames of a PollMessages response.
pub const POLL_HEADER_SIZE: usize = 16;

/// `partition_id u32`, `current_offset u64`, `messages_count u32`. Always sent, even for an empty
/// poll: the SDK reads these 16 bytes unconditionally.
pub fn poll_header(partition_id: u32, current_offset: u64, count: u32) -> [u8; POLL_HEADER_SIZE] {
    let mut out = [0u8; POLL_HEADER_SIZE];
    out[..4].copy_from_slice(&partition_id.to_le_bytes());
    out[4..12].copy_from_slice(&current_offset.to_le_bytes());
    out[12..].copy_from_slice(&count.to_le_bytes());
    out
}

/// ConsumerOffsetResponse: 20 bytes.
pub fn consumer_offset(partition_id: u32, current_offset: u64, stored_offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&partition_id.to_le_bytes());
    out.extend_from_slice(&current_offset.to_le_bytes());
    out.extend_from_slice(&stored_offset.to_le_bytes());
    out
}

/// IdentityResponse of LoginUser.
pub fn identity(user_id: u32) -> Vec<u8> {
    user_id.to_le_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sizes_match_iggy() {
        let mut out = Vec::new();
        StreamInfo {
            id: 0,
            created_at: 0,
            topics_count: 0,
            size_bytes: 0,
            messages_count: 0,
            name: "",
        }
        .encode(&mut out);
        assert_eq!(out.len(), 33);
        out.clear();
        TopicInfo {
            id: 0,
            created_at: 0,
            partitions_count: 0,
            message_expiry: 0,
            compression: 1,
            max_topic_size: 0,
            replication_factor: 1,
            size_bytes: 0,
            messages_count: 0,
            name: "",
        }
        .encode(&mut out);
        assert_eq!(out.len(), 51);
        out.clear();
        PartitionInfo {
            id: 0,
            created_at: 0,
            segments_count: 0,
            current_offset: 0,
            size_bytes: 0,
            messages_count: 0,
        }
        .encode(&mut out);
        assert_eq!(out.len(), 40);
    }
}

/// UserResponse: `id u32`, `created_at u64`, `status u8`, `username` (u8 length + bytes).
pub fn encode_user(id: u32, created_at: u64, status: u8, username: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&created_at.to_le_bytes());
    out.push(status);
    put_name(out, username);
}

/// UserDetailsResponse: the user, then `1 u8` + `len u32` + permissions, or `0 u32` when the
/// user has none (Iggy's encoder writes four zero bytes in that case, and so do we).
pub fn encode_user_details(
    id: u32,
    created_at: u64,
    status: u8,
    username: &str,
    permissions: Option<&crate::Permissions>,
    out: &mut Vec<u8>,
) {
    encode_user(id, created_at, status, username, out);
    match permissions {
        Some(p) => crate::Permissions::encode_optional(Some(p), out),
        None => out.extend_from_slice(&0u32.to_le_bytes()),
    }
}

/// One entry of GetPersonalAccessTokens: name, then `expiry_at u64` (µs; 0 = never).
pub fn encode_token_info(name: &str, expiry_at: u64, out: &mut Vec<u8>) {
    put_name(out, name);
    out.extend_from_slice(&expiry_at.to_le_bytes());
}

/// CreatePersonalAccessToken's reply: the raw token, shown once.
pub fn encode_raw_token(token: &str, out: &mut Vec<u8>) {
    put_name(out, token);
}

/// ConsumerGroupResponse: `id u32`, `partitions_count u32`, `members_count u32`, name.
pub fn encode_consumer_group(
    id: u32,
    partitions: u32,
    members: u32,
    name: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&partitions.to_le_bytes());
    out.extend_from_slice(&members.to_le_bytes());
    put_name(out, name);
}

/// One member of ConsumerGroupDetails: `id u32`, `partitions_count u32`, partition ids.
pub fn encode_group_member(id: u32, partitions: &[u32], out: &mut Vec<u8>) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(partitions.len() as u32).to_le_bytes());
    for p in partitions {
        out.extend_from_slice(&p.to_le_bytes());
    }
}

/// GetStats' reply (`responses/system/get_stats.rs` of the pinned protocol).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub process_id: u32,
    pub cpu_usage: f32,
    pub total_cpu_usage: f32,
    pub memory_usage: u64,
    pub total_memory: u64,
    pub available_memory: u64,
    pub run_time: u64,
    pub start_time: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub messages_size_bytes: u64,
    pub streams_count: u32,
    pub topics_count: u32,
    pub partitions_count: u32,
    pub segments_count: u32,
    pub messages_count: u64,
    pub clients_count: u32,
    pub consumer_groups_count: u32,
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel_version: String,
    pub server_version: String,
    /// `major << 20 | minor << 10 | patch`; 0 = absent.
    pub server_semver: u32,
    pub threads_count: u32,
    pub free_disk_space: u64,
    pub total_disk_space: u64,
}

impl Stats {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.process_id.to_le_bytes());
        out.extend_from_slice(&self.cpu_usage.to_le_bytes());
        out.extend_from_slice(&self.total_cpu_usage.to_le_bytes());
        for v in [
            self.memory_usage,
            self.total_memory,
            self.available_memory,
            self.run_time,
            self.start_time,
            self.read_bytes,
            self.written_bytes,
            self.messages_size_bytes,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.streams_count,
            self.topics_count,
            self.partitions_count,
            self.segments_count,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.messages_count.to_le_bytes());
        out.extend_from_slice(&self.clients_count.to_le_bytes());
        out.extend_from_slice(&self.consumer_groups_count.to_le_bytes());
        for text in [
            &self.hostname,
            &self.os_name,
            &self.os_version,
            &self.kernel_version,
            &self.server_version,
        ] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&self.server_semver.to_le_bytes());
        // No per-partition cache metrics: there is no message cache yet.
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.threads_count.to_le_bytes());
        out.extend_from_slice(&self.free_disk_space.to_le_bytes());
        out.extend_from_slice(&self.total_disk_space.to_le_bytes());
    }
}

/// One member in a `GetClusterMetadata` answer.
pub struct ClusterNodeInfo<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub tcp_port: u16,
    pub http_port: u16,
    /// 0 leader (the primary), 1 follower.
    pub role: u8,
    /// 0 healthy, 1 starting, 2 stopping, 3 unreachable, 4 maintenance.
    pub status: u8,
}

pub const CLUSTER_ROLE_LEADER: u8 = 0;
pub const CLUSTER_ROLE_FOLLOWER: u8 = 1;
pub const CLUSTER_STATUS_HEALTHY: u8 = 0;
pub const CLUSTER_STATUS_STARTING: u8 = 1;
pub const CLUSTER_STATUS_UNREACHABLE: u8 = 3;

/// `GetClusterMetadata`: `name_len u32, name, count u32`, then per node `name_len u32, name,
/// ip_len u32, ip, tcp u16, quic u16, http u16, websocket u16, role u8, status u8` (QUIC and
/// WebSocket are not served: port 0).
pub fn encode_cluster_metadata(name: &str, nodes: &[ClusterNodeInfo<'_>], out: &mut Vec<u8>) {
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(nodes.len() as u32).to_le_bytes());
    for node in nodes {
        out.extend_from_slice(&(node.name.len() as u32).to_le_bytes());
        out.extend_from_slice(node.name.as_bytes());
        out.extend_from_slice(&(node.host.len() as u32).to_le_bytes());
        out.extend_from_slice(node.host.as_bytes());
        for port in [node.tcp_port, 0, node.http_port, 0] {
            out.extend_from_slice(&port.to_le_bytes());
        }
        out.push(node.role);
        out.push(node.status);
    }
}
