//! Unit tests of single replicas; the simulator covers clusters.

use super::*;
use crate::disk::{classify_slot, superseded, DiskImage, SlotCase};
use crate::routing::Route;
use crate::superblock::Superblock;

fn prepare(op: Op, parent: u128) -> Prepare {
    prepare_in_view(op, parent, 0)
}

fn prepare_in_view(op: Op, parent: u128, view: View) -> Prepare {
    let mut header = Prepare::root(1, 1, 0).header;
    header.op = op;
    header.parent = parent;
    header.view = view;
    Prepare::new(header, vec![op as u8; 4])
}

struct Nothing;
impl StateMachine for Nothing {
    fn apply(&mut self, _: &crate::PrepareHeader, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn digest(&self) -> u128 {
        0
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), crate::RestoreError> {
        Ok(())
    }
}

/// The model check's counterexample, on the real replica: restarted with op 1 durable and
/// acknowledged in view 0, it receives a StartView of view 0 sent before op 1 existed.
#[test]
fn a_stale_start_view_of_the_same_view_keeps_the_longer_log() {
    let root = Prepare::root(1, 1, 0);
    let p1 = prepare(1, root.checksum());
    let mut replica = restarted_in_view_0(
        BTreeMap::from([(1, p1.clone())]),
        BTreeMap::from([(1, (1, p1.checksum()))]),
    );
    assert_eq!(
        (replica.status(), replica.log_tail()),
        (Status::Recovering, 1)
    );
    let stale = Envelope {
        cluster: 1,
        group: 1,
        epoch: 0,
        from: Node::Replica(0),
        to: Node::Replica(2),
        message: Message::StartView {
            view: 0,
            log: vec![root],
            commit: 0,
        },
    };
    let outputs = replica.step(Input::Message(stale));
    assert_eq!(replica.status(), Status::Normal);
    assert_eq!(replica.log_tail(), 1, "op 1 must survive");
    assert_eq!(replica.checksum_at(1), Some(p1.checksum()));
    assert!(!outputs
        .iter()
        .any(|o| matches!(o, Output::WriteLog { truncate_after, .. } if *truncate_after < 1)));
}

/// Completes every write at once except checkpoint writes when `hold` is set; returns the
/// highest op written to the WAL and the held checkpoint ios.
fn settle<S: StateMachine>(
    replica: &mut Replica<S>,
    mut outputs: Vec<Output>,
    hold: bool,
) -> (Op, Vec<u64>) {
    let (mut highest, mut held) = (0, Vec::new());
    while let Some(output) = outputs.pop() {
        let io = match output {
            Output::WriteWal { io, prepare, slot } => {
                assert_eq!(slot, prepare.op() % replica.cfg.wal_slots);
                highest = highest.max(prepare.op());
                io
            }
            Output::WriteSuperblock { io, .. } | Output::WriteLog { io, .. } => io,
            Output::WriteCheckpoint { io, .. } if hold => {
                held.push(io);
                continue;
            }
            Output::WriteCheckpoint { io, .. } => io,
            Output::Send(_) | Output::Event(_) => continue,
        };
        outputs.extend(replica.step(Input::WriteDone { io }));
    }
    (highest, held)
}

fn request(session: u64, request: u64) -> Input {
    request_with(session, request, &[1])
}

fn request_with(session: u64, request: u64, body: &[u8]) -> Input {
    Input::Message(Envelope {
        cluster: 1,
        group: 1,
        epoch: 0,
        from: Node::Client(9),
        to: Node::Replica(0),
        message: Message::Request {
            client: 9,
            session,
            request,
            body: body.to_vec().into(),
        },
    })
}

#[test]
fn the_primary_never_prepares_past_the_durable_checkpoint_plus_the_wal() {
    let mut cfg = Config::new(1, 1, 0, Route::Star);
    cfg.checkpoint_interval = 4;
    cfg.wal_slots = 8;
    let mut replica = Replica::open(cfg, DiskImage::default(), Nothing);
    let opened = replica.take_outputs();
    settle(&mut replica, opened, false);
    // Register (op 1, so the session is 1), then queue twenty requests at once.
    let outputs = replica.step(request(0, 1));
    settle(&mut replica, outputs, false);
    let mut outputs = Vec::new();
    for n in 2..=21 {
        outputs.extend(replica.step(request(1, n)));
    }
    // With checkpoint writes held back no checkpoint becomes durable: ops 1..=8 fill the
    // eight slots and the primary stops there, though it committed all of them.
    let (highest, held) = settle(&mut replica, outputs, true);
    assert_eq!(highest, 8);
    assert_eq!((replica.log_tail(), replica.commit_min()), (8, 8));
    assert_eq!(replica.checkpoint_durable(), 0);
    assert_eq!(held.len(), 2, "checkpoints at ops 4 and 8");
    // Releasing them makes the checkpoint at 8 durable: the log is trimmed to it and the
    // primary goes on, eight slots further at a time.
    let mut outputs = Vec::new();
    for io in held {
        outputs.extend(replica.step(Input::WriteDone { io }));
    }
    settle(&mut replica, outputs, false);
    assert_eq!(replica.commit_min(), 21);
    assert_eq!(replica.checkpoint_durable(), 20);
    assert_eq!(replica.log_base(), 20);
}

/// A cluster of one, opened, its first superblock written.
fn open_single() -> Replica<Nothing> {
    let cfg = Config::new(1, 1, 0, Route::Star);
    let mut replica = Replica::open(cfg, DiskImage::default(), Nothing);
    let opened = replica.take_outputs();
    settle(&mut replica, opened, false);
    replica
}

#[test]
fn the_log_adopts_a_copy_of_a_body_only_once_its_op_is_applied() {
    let mut replica = open_single();
    let outputs = replica.step(request(0, 1));
    settle(&mut replica, outputs, false);
    // Op 2 is prepared; its WAL write is not done, so it is not committed.
    let outputs = replica.step(request(1, 2));
    let written = outputs.iter().find_map(|o| match o {
        Output::WriteWal { prepare, .. } => Some(prepare.clone()),
        _ => None,
    });
    let Some(p2) = written else {
        panic!("op 2 was not written: {outputs:?}")
    };
    let copy = bytes::Bytes::copy_from_slice(&p2.body);
    assert!(
        !replica.adopt_body(2, p2.checksum(), copy.clone()),
        "not applied yet"
    );
    settle(&mut replica, outputs, false);
    assert_eq!(replica.commit_min(), 2);
    assert!(
        !replica.adopt_body(2, p2.checksum() ^ 1, copy.clone()),
        "another prepare"
    );
    assert!(replica.adopt_body(2, p2.checksum(), copy.clone()));
    assert!(replica
        .log
        .get(2)
        .is_some_and(|p| p.verify() && p.body.as_ptr() == copy.as_ptr()));
    // What a driver keeps: applied ops are offered and removed, taken or not; later ones wait.
    let again = bytes::Bytes::copy_from_slice(&p2.body);
    let mut written = WrittenBodies::from([
        (1, (0, bytes::Bytes::new())),
        (2, (p2.checksum(), again.clone())),
        (9, (7, copy)),
    ]);
    assert_eq!(replica.adopt_written(&mut written), 1);
    assert_eq!(written.keys().copied().collect::<Vec<_>>(), [9]);
    assert!(replica
        .log
        .get(2)
        .is_some_and(|p| p.body.as_ptr() == again.as_ptr()));
}

/// A session is the op that registered it. While that op is in the log but not applied (a new
/// primary committing its predecessor's last ops again), a request of the session is dropped
/// for the client to send again, not answered "evicted": the log may hold the request itself
/// after the registration, and an evicted client registers anew and sends it a second time.
#[test]
fn a_session_whose_registration_is_not_applied_yet_is_not_evicted() {
    let mut replica = open_single();
    // Op 1 registers client 9; its WAL write is not done, so it is neither committed nor
    // applied and the client table does not know session 1 yet.
    let registering = replica.step(request(0, 1));
    assert_eq!((replica.log_tail(), replica.commit_min()), (1, 0));
    let early = replica.step(request(1, 2));
    let evicted = |outputs: &[Output]| {
        outputs.iter().any(|o| {
            matches!(
                o,
                Output::Send(Envelope {
                    message: Message::Evicted { .. },
                    ..
                })
            )
        })
    };
    assert!(!evicted(&early), "{early:?}");
    assert_eq!(replica.log_tail(), 1, "dropped, not prepared");
    // A session no op of the log registered is unknown: evicted at once.
    assert!(evicted(&replica.step(request(7, 2))));
    // Once op 1 is applied the same request runs.
    settle(&mut replica, registering, false);
    assert_eq!(replica.commit_min(), 1);
    let outputs = replica.step(request(1, 2));
    assert!(!evicted(&outputs));
    assert_eq!(replica.log_tail(), 2);
}

/// Replica 2 of 3, restarted from a superblock of view 0 (log view 0, nothing committed,
/// no checkpoint) with this WAL and header ring.
fn restarted_in_view_0(
    wal: BTreeMap<u64, Prepare>,
    headers: BTreeMap<u64, (Op, u128)>,
) -> Replica<Nothing> {
    let superblock = Superblock {
        sequence: 3,
        view: 0,
        log_view: 0,
        commit: 0,
        checkpoint: 0,
        membership: crate::membership::Membership::UNSET,
        start_checksum: 0,
        checksum: 0,
    };
    let disk = DiskImage {
        superblocks: vec![superblock.sealed()],
        checkpoint: None,
        wal,
        headers,
    };
    let mut replica = Replica::open(Config::new(1, 3, 2, Route::Star), disk, Nothing);
    replica.take_outputs();
    replica
}

/// Replica 2 of 3 restarted with op 1 intact and op 2 rotten under a header that vouches
/// for it, in log view 0.
fn faulty_at_op_2() -> (Replica<Nothing>, Prepare, Prepare, Prepare) {
    let root = Prepare::root(1, 1, 0);
    let p1 = prepare(1, root.checksum());
    let p2 = prepare(2, p1.checksum());
    let mut rotten = p2.clone();
    rotten.body = [&rotten.body[..], &[1]].concat().into();
    let replica = restarted_in_view_0(
        BTreeMap::from([(1, p1.clone()), (2, rotten)]),
        BTreeMap::from([(1, (1, p1.checksum())), (2, (2, p2.checksum()))]),
    );
    assert!(replica.is_faulty());
    assert_eq!(replica.log_tail(), 1);
    (replica, root, p1, p2)
}

fn from_replica_0(message: Message) -> Input {
    Input::Message(Envelope {
        cluster: 1,
        group: 1,
        epoch: 0,
        from: Node::Replica(0),
        to: Node::Replica(2),
        message,
    })
}

#[test]
fn a_faulty_replica_votes_with_the_op_it_cannot_read_marked() {
    let (mut replica, root, p1, p2) = faulty_at_op_2();
    let mut outputs = replica.step(from_replica_0(Message::StartViewChange {
        view: 1,
        replica: 0,
    }));
    assert_eq!(replica.status(), Status::ViewChange, "it takes part");
    // Nothing is said in view 1 before view 1 is durable.
    let superblock = outputs.iter().find_map(|o| match o {
        Output::WriteSuperblock { io, .. } => Some(*io),
        _ => None,
    });
    outputs.extend(replica.step(Input::WriteDone {
        io: superblock.expect("view 1 is written"),
    }));
    let vote = outputs.iter().find_map(|o| match o {
        Output::Send(Envelope {
            message: Message::DoViewChange { vote, .. },
            ..
        }) => Some(vote.clone()),
        _ => None,
    });
    let vote = vote.expect("a DoViewChange to replica 1");
    assert_eq!(vote.log, vec![root], "only the anchor goes whole");
    assert_eq!(vote.vouched, vec![p1.checksum(), p2.checksum()]);
    assert_eq!(vote.readable, 1, "op 2: vouched, not readable");
    assert_eq!((vote.head(), vote.unreadable()), (2, 1));
    assert!(vote.can_supply(1, p1.checksum()));
    assert!(!vote.can_supply(2, p2.checksum()));
}

#[test]
fn a_faulty_replica_ignores_a_start_view_of_its_log_view_short_of_its_promise() {
    let (mut replica, root, p1, p2) = faulty_at_op_2();
    // Op 2 may have been acknowledged: a StartView of view 0 without it is older than it.
    let stale = Message::StartView {
        view: 0,
        log: vec![root.clone(), p1.clone()],
        commit: 0,
    };
    let outputs = replica.step(from_replica_0(stale));
    assert_eq!(replica.status(), Status::Recovering);
    assert!(!outputs.iter().any(|o| matches!(o, Output::WriteLog { .. })));
    let current = Message::StartView {
        view: 0,
        log: vec![root, p1, p2.clone()],
        commit: 0,
    };
    replica.step(from_replica_0(current));
    assert_eq!(replica.status(), Status::Normal);
    assert_eq!(replica.checksum_at(2), Some(p2.checksum()));
}

/// A whole, vouched prepare of an earlier view after the log's op from a later view is a
/// leftover of a history recovery cut at a torn write (seed 429648: a cluster of one stayed
/// faulty for good): it ends the log. One of the same or a later view that does not chain is
/// still a fault.
#[test]
fn a_leftover_of_a_replaced_history_ends_the_log() {
    let root = Prepare::root(1, 1, 0);
    let p1 = prepare(1, root.checksum());
    let p2 = prepare(2, p1.checksum());
    let p1_again = prepare_in_view(1, root.checksum(), 1);
    assert_eq!(
        classify_slot(2, p1_again.checksum(), Some(&p2), Some(p2.checksum())),
        SlotCase::Faulty,
        "on its own, a vouched prepare that does not chain looks like a fault"
    );
    assert!(superseded(2, &p1_again, Some(&p2)));
    assert!(!superseded(2, &p1, Some(&p2)), "it chains: not a leftover");
    assert!(!superseded(3, &p1_again, Some(&p2)), "another op's slot");
    let later = prepare_in_view(2, root.checksum(), 2);
    assert!(
        !superseded(2, &p1_again, Some(&later)),
        "a later view cannot be a leftover"
    );
}

#[test]
fn recovery_tells_torn_writes_from_corruption() {
    let root = Prepare::root(1, 1, 0);
    let p1 = prepare(1, root.checksum());
    let header = Some(p1.checksum());
    assert_eq!(
        classify_slot(1, root.checksum(), Some(&p1), header),
        SlotCase::Intact
    );
    // The header write was lost after the prepare landed: still intact, never acked.
    assert_eq!(
        classify_slot(1, root.checksum(), Some(&p1), None),
        SlotCase::Intact
    );
    // Nothing, or a half-written prepare without its header: a torn write, cut.
    assert_eq!(
        classify_slot(1, root.checksum(), None, None),
        SlotCase::Torn
    );
    let mut rotten = p1.clone();
    rotten.body = [&rotten.body[..], &[1]].concat().into();
    assert_eq!(
        classify_slot(1, root.checksum(), Some(&rotten), None),
        SlotCase::Torn
    );
    // A header vouches for it but the prepare rotted, is missing, or is another op's.
    assert_eq!(
        classify_slot(1, root.checksum(), Some(&rotten), header),
        SlotCase::Faulty
    );
    assert_eq!(
        classify_slot(1, root.checksum(), None, header),
        SlotCase::Faulty
    );
    let p2 = prepare(2, p1.checksum());
    assert_eq!(
        classify_slot(1, root.checksum(), Some(&p2), header),
        SlotCase::Faulty
    );
    // A valid prepare that does not chain is not ours either.
    assert_eq!(
        classify_slot(2, root.checksum(), Some(&p2), Some(p2.checksum())),
        SlotCase::Faulty
    );
}

/// The invariants run after every step: a state that contradicts itself stops the replica
/// with the broken rule named (the simulator turns that panic into a failed seed).
#[test]
#[should_panic(expected = "log view 2 is past view 1")]
fn a_step_that_leaves_a_contradiction_panics_naming_the_invariant() {
    let mut replica = open_single();
    replica.step(Input::Tick { now: 1 });
    replica.view = 1;
    replica.log_view = 2;
    replica.step(Input::Tick { now: 2 });
}

/// A backup writes (and so acknowledges) a prepare before applying what that prepare says is
/// committed: the step that takes the prepare applies nothing, `Input::Apply` does — or, if the
/// driver never asks, the next tick.
#[test]
fn a_backup_applies_what_a_prepare_commits_only_after_the_prepares_step() {
    for by_tick in [false, true] {
        let mut backup = restarted_in_view_0(BTreeMap::new(), BTreeMap::new());
        let root = Prepare::root(1, 1, 0);
        let start = from_replica_0(Message::StartView {
            view: 0,
            log: vec![root.clone()],
            commit: 0,
        });
        let outputs = backup.step(start);
        settle(&mut backup, outputs, false);
        assert_eq!(backup.status(), Status::Normal);
        let p1 = prepare(1, root.checksum());
        let outputs = backup.step(from_replica_0(Message::Prepare {
            view: 0,
            prepare: p1.clone(),
        }));
        settle(&mut backup, outputs, false);
        let mut header = prepare(2, p1.checksum()).header;
        header.commit = 1;
        let p2 = Prepare::new(header, vec![2u8; 4]);
        let outputs = backup.step(from_replica_0(Message::Prepare {
            view: 0,
            prepare: p2,
        }));
        assert!(
            outputs
                .iter()
                .any(|o| matches!(o, Output::WriteWal { prepare, .. } if prepare.op() == 2)),
            "the prepare's write goes out in its own step"
        );
        assert_eq!((backup.commit_max(), backup.commit_min()), (1, 0));
        settle(&mut backup, outputs, false);
        assert!(
            backup.has_unapplied(),
            "its write completing applies nothing either"
        );
        let input = if by_tick {
            Input::Tick { now: 1 }
        } else {
            Input::Apply
        };
        backup.step(input);
        assert_eq!(backup.commit_min(), 1, "applied (by tick: {by_tick})");
        assert!(!backup.has_unapplied());
    }
}

/// Op 2 of a log whose op 1 is an ordinary prepare: the reconfiguration to epoch 1 (three
/// members, no standbys).
fn reconfiguration_at_op_2(p1: &Prepare) -> Prepare {
    let mut header = p1.header.clone();
    header.op = 2;
    header.parent = p1.checksum();
    header.client = crate::membership::RECONFIGURE_CLIENT;
    let next = crate::membership::Membership {
        epoch: 1,
        replica_count: 3,
        standby_count: 0,
        start: 0,
    };
    Prepare::new(header, next.encode())
}

fn from_replica_0_in_epoch(epoch: crate::Epoch, message: Message) -> Input {
    Input::Message(Envelope {
        cluster: 1,
        group: 1,
        epoch,
        from: Node::Replica(0),
        to: Node::Replica(2),
        message,
    })
}

/// Seeds 9253556 and 9292911, the old epoch's side: a replica holding the reconfiguration op
/// uncommitted takes it as committed when a member of the new epoch names that very prepare,
/// and enters the epoch; a name of another prepare at that op changes nothing.
#[test]
fn a_replica_of_the_old_epoch_commits_the_start_a_member_of_the_new_one_names() {
    let root = Prepare::root(1, 1, 0);
    let p1 = prepare(1, root.checksum());
    let p2 = reconfiguration_at_op_2(&p1);
    let mut replica = restarted_in_view_0(
        BTreeMap::from([(1, p1.clone()), (2, p2.clone())]),
        BTreeMap::from([(1, (1, p1.checksum())), (2, (2, p2.checksum()))]),
    );
    assert_eq!((replica.membership().epoch, replica.commit_min()), (0, 0));

    let other = Message::EpochStartedAt {
        start: 2,
        checksum: p2.checksum() ^ 1,
    };
    replica.step(from_replica_0_in_epoch(1, other));
    assert_eq!((replica.membership().epoch, replica.commit_min()), (0, 0));

    let named = Message::EpochStartedAt {
        start: 2,
        checksum: p2.checksum(),
    };
    let outputs = replica.step(from_replica_0_in_epoch(1, named));
    assert_eq!(replica.commit_min(), 2);
    assert_eq!(replica.membership().epoch, 1);
    assert_eq!(replica.membership().start, 2);
    // The epoch's first superblock records the start's checksum.
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::WriteSuperblock { superblock, .. } | Output::WriteLog { superblock, .. }
            if superblock.membership.epoch == 1 && superblock.start_checksum == p2.checksum()
    )));
}

/// The new epoch's side: a member restarted with its epoch's superblock but nothing of the
/// log up to the start names the start, by the superblock's record, to a replica of the old
/// epoch that asks for it.
#[test]
fn a_member_that_lost_its_epochs_start_names_it_from_the_superblock() {
    let start_checksum = 0x5747_7a27;
    let superblock = Superblock {
        sequence: 9,
        view: 0,
        log_view: 0,
        commit: 0,
        checkpoint: 0,
        membership: crate::membership::Membership {
            epoch: 1,
            replica_count: 3,
            standby_count: 0,
            start: 2,
        },
        start_checksum,
        checksum: 0,
    };
    let disk = DiskImage {
        superblocks: vec![superblock.sealed()],
        ..DiskImage::default()
    };
    let mut replica = Replica::open(Config::new(1, 3, 2, Route::Star), disk, Nothing);
    replica.take_outputs();
    assert!(!replica.holds_epoch_start());
    let outputs = replica.step(from_replica_0_in_epoch(
        0,
        Message::RequestStartEpoch { replica: 0 },
    ));
    let named: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(Envelope {
                to: Node::Replica(0),
                message: Message::EpochStartedAt { start, checksum },
                ..
            }) => Some((*start, *checksum)),
            _ => None,
        })
        .collect();
    assert_eq!(named, vec![(2, start_checksum)]);
}

/// Refuses requests whose body starts with 0, as the broker refuses sends at a full disk.
struct Picky {
    pending_seen: Vec<u64>,
}

impl StateMachine for Picky {
    fn apply(&mut self, _: &crate::PrepareHeader, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn digest(&self) -> u128 {
        0
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), crate::RestoreError> {
        Ok(())
    }
    fn admit(&mut self, body: &[u8], pending: u64) -> Option<Vec<u8>> {
        self.pending_seen.push(pending);
        (body.first() == Some(&0)).then(|| b"full".to_vec())
    }
}

/// The primary asks the state machine before it prepares a new request: a refusal is answered
/// at once with nothing prepared, and the request number stays free for a retry that is
/// admitted. `pending` counts what is prepared and not applied.
#[test]
fn a_request_the_state_machine_refuses_is_answered_and_never_prepared() {
    let cfg = Config::new(1, 1, 0, Route::Star);
    let picky = Picky {
        pending_seen: Vec::new(),
    };
    let mut replica = Replica::open(cfg, DiskImage::default(), picky);
    let opened = replica.take_outputs();
    settle(&mut replica, opened, false);
    let registered = replica.step(request_with(0, 1, &[1; 10]));
    settle(&mut replica, registered, false);
    assert_eq!(replica.commit_min(), 1);

    // Op 2 prepared, not yet written: the next request sees its 7 bytes pending.
    let unwritten = replica.step(request_with(1, 2, &[1; 7]));
    assert_eq!(replica.log_tail(), 2);
    let refused = replica.step(request_with(1, 3, &[0; 5]));
    assert_eq!(replica.sm.pending_seen, vec![0, 0, 7]);
    assert_eq!(replica.log_tail(), 2, "nothing prepared");
    let replies: Vec<_> = refused
        .iter()
        .filter_map(|o| match o {
            Output::Send(Envelope {
                message:
                    Message::Reply {
                        request, op, body, ..
                    },
                ..
            }) => Some((*request, *op, body.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(replies, vec![(3, 0, b"full".to_vec())]);

    settle(&mut replica, unwritten, false);
    let admitted = replica.step(request_with(1, 3, &[1; 5]));
    assert_eq!(replica.log_tail(), 3, "request 3 was never used");
    settle(&mut replica, admitted, false);
    assert_eq!(replica.commit_min(), 3);
}

/// The commits an output list sends to replica `to`.
fn commits_to(outputs: &[Output], to: ReplicaId) -> Vec<Op> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(Envelope {
                to: Node::Replica(r),
                message: Message::Commit { commit, .. },
                ..
            }) if *r == to => Some(*commit),
            _ => None,
        })
        .collect()
}

/// An idle primary tells the backups of a commit at its next tick, not at the next heartbeat:
/// a member reads only what it applied, and one the client did not write through otherwise
/// showed the write up to a heartbeat late. Once told, it waits for the heartbeat again.
#[test]
fn an_idle_primary_sends_a_commit_no_prepare_carried_at_its_next_tick() {
    let cfg = Config::new(1, 3, 0, Route::Star);
    let interval = cfg.commit_interval;
    assert!(interval > 2, "the test needs ticks between heartbeats");
    let mut replica = Replica::open(cfg, DiskImage::default(), Nothing);
    let opened = replica.take_outputs();
    settle(&mut replica, opened, false);
    assert_eq!(replica.status(), Status::Normal);
    let mut now = 0;
    let mut tick = |replica: &mut Replica<Nothing>| {
        now += 10_000;
        replica.step(Input::Tick { now })
    };
    // Past the first heartbeat, so the next one is a whole interval away.
    for _ in 0..interval {
        tick(&mut replica);
    }
    let outputs = replica.step(request(0, 1));
    settle(&mut replica, outputs, false);
    let checksum = replica.checksum_at(1).expect("op 1 prepared");
    let ack = Input::Message(Envelope {
        cluster: 1,
        group: 1,
        epoch: 0,
        from: Node::Replica(1),
        to: Node::Replica(0),
        message: Message::PrepareOk {
            view: 0,
            op: 1,
            checksum,
            replica: 1,
        },
    });
    let outputs = replica.step(ack);
    settle(&mut replica, outputs, false);
    assert_eq!(replica.commit_min(), 1, "committed on a quorum of two");
    // The prepare of op 1 carried commit 0: op 1's commit goes out at the very next tick.
    assert_eq!(commits_to(&tick(&mut replica), 2), [1]);
    // Told: nothing more until the heartbeat.
    for _ in 0..interval - 1 {
        assert_eq!(commits_to(&tick(&mut replica), 2), [0u64; 0]);
    }
    assert_eq!(commits_to(&tick(&mut replica), 2), [1], "the heartbeat");
}

/// Records what it is offered to stage and what it applies.
#[derive(Default)]
struct Staging {
    staged: Vec<(Op, u128)>,
    applied: Vec<Op>,
}
impl StateMachine for Staging {
    fn apply(&mut self, header: &crate::PrepareHeader, _: &[u8]) -> Vec<u8> {
        self.applied.push(header.op);
        Vec::new()
    }
    fn digest(&self) -> u128 {
        0
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), crate::RestoreError> {
        Ok(())
    }
    fn stage(&mut self, header: &crate::PrepareHeader, _: &[u8]) {
        self.staged.push((header.op, header.checksum));
    }
}

/// The primary offers the state machine the op it applies next, once per prepare, and only
/// while it holds one it has not applied; the offer itself sends and writes nothing.
#[test]
fn the_primary_offers_the_next_op_to_stage_once() {
    let cfg = Config::new(1, 1, 0, Route::Star);
    let mut replica = Replica::open(cfg, DiskImage::default(), Staging::default());
    let opened = replica.take_outputs();
    settle(&mut replica, opened, false);
    replica.stage_next();
    assert!(replica.sm.staged.is_empty(), "nothing to apply next");
    let registered = replica.step(request(0, 1));
    replica.stage_next();
    settle(&mut replica, registered, false);
    // Op 2 prepared and not yet written, so not applied: it is offered once.
    let unwritten = replica.step(request(1, 2));
    replica.stage_next();
    replica.stage_next();
    assert!(
        replica.take_outputs().is_empty(),
        "staging sends and writes nothing"
    );
    let p2 = replica.checksum_at(2).expect("op 2 is held");
    let p1 = replica.checksum_at(1).expect("op 1 is held");
    assert_eq!(replica.sm.staged, vec![(1, p1), (2, p2)]);
    settle(&mut replica, unwritten, false);
    // (Op 1 registered the session, which the core applies itself.)
    assert_eq!(
        (replica.commit_min(), replica.sm.applied.clone()),
        (2, vec![2])
    );
    replica.stage_next();
    assert_eq!(
        replica.sm.staged.len(),
        2,
        "op 2 is applied; nothing comes next yet"
    );
}
