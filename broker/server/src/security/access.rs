//! Who may do what: Iggy's permission model, evaluated on every command.
//!
//! The hierarchy follows the SDK's documentation of each flag: `manage_*` includes `read_*`;
//! `manage_streams` includes `manage_topics`; `read_streams` includes `read_topics`;
//! `read_topics` (and `read_topic`) includes `poll_messages` and consumer-group management;
//! a stream-level grant covers every topic of that stream. Sending is never implied: it needs
//! `send_messages` at the global, stream or topic level.

use iggy_wire::permissions::{Permissions, StreamPermissions, TopicPermissions};

/// Something a command needs permission for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadServers,
    ManageServers,
    ReadUsers,
    ManageUsers,
    /// Create a stream, or list every stream.
    ManageStreams,
    ReadStreams,
    ManageStream(u32),
    ReadStream(u32),
    /// List the topics of a stream.
    ReadTopics(u32),
    /// Create a topic in the stream (`None`), or change topic `Some(t)`.
    ManageTopic(u32, Option<u32>),
    /// Read a topic and manage its consumer groups.
    ReadTopic(u32, u32),
    Poll(u32, u32),
    Send(u32, u32),
}

pub fn permits(permissions: Option<&Permissions>, access: Access) -> bool {
    let Some(p) = permissions else {
        return false;
    };
    let g = &p.global;
    let stream = |s: u32| p.streams.get(&s);
    let topic = |s: u32, t: Option<u32>| -> Option<&TopicPermissions> {
        t.and_then(|t| stream(s).and_then(|sp| sp.topics.get(&t)))
    };
    let on_stream = |s: u32, f: fn(&StreamPermissions) -> bool| stream(s).is_some_and(f);
    let on_topic =
        |s: u32, t: Option<u32>, f: fn(&TopicPermissions) -> bool| topic(s, t).is_some_and(f);
    match access {
        Access::ReadServers => g.read_servers || g.manage_servers,
        Access::ManageServers => g.manage_servers,
        Access::ReadUsers => g.read_users || g.manage_users,
        Access::ManageUsers => g.manage_users,
        Access::ManageStreams => g.manage_streams,
        Access::ReadStreams => g.read_streams || g.manage_streams,
        Access::ManageStream(s) => g.manage_streams || on_stream(s, |sp| sp.manage_stream),
        Access::ReadStream(s) => {
            permits(permissions, Access::ManageStream(s))
                || g.read_streams
                || on_stream(s, |sp| sp.read_stream)
        }
        Access::ReadTopics(s) => {
            permits(permissions, Access::ReadStream(s))
                || g.read_topics
                || g.manage_topics
                || on_stream(s, |sp| sp.read_topics || sp.manage_topics)
        }
        Access::ManageTopic(s, t) => {
            g.manage_streams
                || g.manage_topics
                || on_stream(s, |sp| sp.manage_stream || sp.manage_topics)
                || on_topic(s, t, |tp| tp.manage_topic)
        }
        Access::ReadTopic(s, t) => {
            permits(permissions, Access::ManageTopic(s, Some(t)))
                || permits(permissions, Access::ReadTopics(s))
                || on_topic(s, Some(t), |tp| tp.read_topic)
        }
        Access::Poll(s, t) => {
            permits(permissions, Access::ReadTopic(s, t))
                || g.poll_messages
                || on_stream(s, |sp| sp.poll_messages)
                || on_topic(s, Some(t), |tp| tp.poll_messages)
        }
        Access::Send(s, t) => {
            g.send_messages
                || on_stream(s, |sp| sp.send_messages)
                || on_topic(s, Some(t), |tp| tp.send_messages)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_stream(sp: StreamPermissions) -> Permissions {
        let mut p = Permissions::default();
        p.streams.insert(1, sp);
        p
    }

    #[test]
    fn nobody_without_permissions_may_do_anything() {
        assert!(!permits(None, Access::ReadServers));
        assert!(!permits(Some(&Permissions::default()), Access::Poll(1, 1)));
    }

    #[test]
    fn root_may_do_everything() {
        let root = Permissions::root();
        for access in [
            Access::ManageServers,
            Access::ManageUsers,
            Access::ManageStream(9),
            Access::Send(3, 4),
        ] {
            assert!(permits(Some(&root), access));
        }
    }

    #[test]
    fn manage_includes_read_and_read_includes_poll_but_not_send() {
        let p = with_stream(StreamPermissions {
            manage_stream: true,
            ..Default::default()
        });
        assert!(permits(Some(&p), Access::ReadStream(1)));
        assert!(permits(Some(&p), Access::ManageTopic(1, Some(5))));
        assert!(permits(Some(&p), Access::Poll(1, 5)));
        assert!(!permits(Some(&p), Access::Send(1, 5)));
        assert!(
            !permits(Some(&p), Access::ReadStream(2)),
            "grants are per stream"
        );
        assert!(!permits(Some(&p), Access::ManageStreams));
    }

    #[test]
    fn topic_grants_stay_on_their_topic() {
        let mut sp = StreamPermissions::default();
        sp.topics.insert(
            7,
            TopicPermissions {
                send_messages: true,
                read_topic: true,
                ..Default::default()
            },
        );
        let p = with_stream(sp);
        assert!(permits(Some(&p), Access::Send(1, 7)));
        assert!(permits(Some(&p), Access::Poll(1, 7)));
        assert!(!permits(Some(&p), Access::Send(1, 8)));
        assert!(!permits(Some(&p), Access::ManageTopic(1, Some(7))));
        assert!(!permits(Some(&p), Access::ReadStream(1)));
    }

    #[test]
    fn global_read_servers_and_users() {
        let mut p = Permissions::default();
        p.global.manage_users = true;
        assert!(permits(Some(&p), Access::ReadUsers));
        assert!(!permits(Some(&p), Access::ReadServers));
    }
}
