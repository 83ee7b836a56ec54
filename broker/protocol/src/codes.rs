//! Command codes of the classic protocol (`iggy_binary_protocol` 0.10.0 `codes.rs`).

macro_rules! commands {
    ($($variant:ident = $code:literal, $name:literal;)*) => {
        /// Every command code the classic protocol defines, including those this broker answers
        /// with an error because a later milestone implements them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Command {
            $($variant = $code,)*
        }

        impl Command {
            /// All commands, in code order; used to pre-register per-command metrics.
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];

            /// Looks a raw code up; unknown codes are answered with `InvalidCommand`.
            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $($code => Some(Command::$variant),)*
                    _ => None,
                }
            }

            /// The snake_case name used in metrics labels and logs.
            pub fn name(self) -> &'static str {
                match self {
                    $(Command::$variant => $name,)*
                }
            }

            pub fn code(self) -> u32 {
                self as u32
            }
        }
    };
}

commands! {
    Ping = 1, "ping";
    GetStats = 10, "get_stats";
    GetSnapshotFile = 11, "get_snapshot_file";
    GetClusterMetadata = 12, "get_cluster_metadata";
    GetMe = 20, "get_me";
    GetClient = 21, "get_client";
    GetClients = 22, "get_clients";
    GetUser = 31, "get_user";
    GetUsers = 32, "get_users";
    CreateUser = 33, "create_user";
    DeleteUser = 34, "delete_user";
    UpdateUser = 35, "update_user";
    UpdatePermissions = 36, "update_permissions";
    ChangePassword = 37, "change_password";
    LoginUser = 38, "login_user";
    LogoutUser = 39, "logout_user";
    GetPersonalAccessTokens = 41, "get_personal_access_tokens";
    CreatePersonalAccessToken = 42, "create_personal_access_token";
    DeletePersonalAccessToken = 43, "delete_personal_access_token";
    LoginWithPersonalAccessToken = 44, "login_with_personal_access_token";
    PollMessages = 100, "poll_messages";
    SendMessages = 101, "send_messages";
    FlushUnsavedBuffer = 102, "flush_unsaved_buffer";
    GetConsumerOffset = 120, "get_consumer_offset";
    StoreConsumerOffset = 121, "store_consumer_offset";
    DeleteConsumerOffset = 122, "delete_consumer_offset";
    GetStream = 200, "get_stream";
    GetStreams = 201, "get_streams";
    CreateStream = 202, "create_stream";
    DeleteStream = 203, "delete_stream";
    UpdateStream = 204, "update_stream";
    PurgeStream = 205, "purge_stream";
    GetTopic = 300, "get_topic";
    GetTopics = 301, "get_topics";
    CreateTopic = 302, "create_topic";
    DeleteTopic = 303, "delete_topic";
    UpdateTopic = 304, "update_topic";
    PurgeTopic = 305, "purge_topic";
    CreatePartitions = 402, "create_partitions";
    DeletePartitions = 403, "delete_partitions";
    DeleteSegments = 503, "delete_segments";
    GetConsumerGroup = 600, "get_consumer_group";
    GetConsumerGroups = 601, "get_consumer_groups";
    CreateConsumerGroup = 602, "create_consumer_group";
    DeleteConsumerGroup = 603, "delete_consumer_group";
    JoinConsumerGroup = 604, "join_consumer_group";
    LeaveConsumerGroup = 605, "leave_consumer_group";
}

impl Command {
    /// Commands a client may send before logging in (Iggy allows exactly these three).
    pub fn allowed_without_login(self) -> bool {
        matches!(
            self,
            Command::Ping | Command::LoginUser | Command::LoginWithPersonalAccessToken
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for command in Command::ALL {
            assert_eq!(Command::from_code(command.code()), Some(*command));
            assert!(names.insert(command.name()), "duplicate {}", command.name());
        }
        assert_eq!(Command::from_code(9999), None);
        assert_eq!(Command::SendMessages.code(), 101);
    }
}
