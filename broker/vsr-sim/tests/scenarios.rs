//! Deterministic scenarios, each naming the situation and the one outcome it expects.

use vsr::{MessageKind, Route, StateMachine};
use vsr_sim::{Params, Simulation};

const ROUTES: [Route; 2] = [Route::Star, Route::Ring];

fn calm(replicas: u8, route: Route) -> Simulation {
    Simulation::new(7, Params::calm(replicas, route), false)
}

#[test]
fn without_faults_three_replicas_answer_everything_with_zero_retransmits() {
    for route in ROUTES {
        let mut sim = calm(3, route);
        sim.run_until_answered(20_000).unwrap();
        assert_eq!(sim.committed(), 80 + 4, "80 requests and 4 registrations");
        assert_eq!(sim.coverage().get("retransmits"), 0, "{route:?}");
        assert_eq!(sim.coverage().get("view_changes_started"), 0, "{route:?}");
    }
}

#[test]
fn every_cluster_size_commits_without_faults() {
    for replicas in 1..=6 {
        for route in ROUTES {
            let mut sim = calm(replicas, route);
            sim.run_until_answered(20_000)
                .unwrap_or_else(|e| panic!("{replicas} {route:?}: {e}"));
            assert_eq!(sim.committed(), 80 + 4, "80 requests and 4 registrations");
        }
    }
}

#[test]
fn one_backup_down_keeps_at_least_half_the_throughput() {
    for route in ROUTES {
        let healthy = calm(3, route).run_until_answered(20_000).unwrap();
        let mut degraded = calm(3, route);
        degraded.permanently_down.insert(2);
        degraded.crash(2).unwrap();
        let ticks = degraded.run_until_answered(20_000).unwrap();
        assert!(
            ticks <= healthy * 2,
            "{route:?}: {ticks} ticks with a backup down against {healthy} healthy"
        );
    }
}

/// Five replicas on the ring, 0 → 1 → 2 → 3 → 4, with 2 dead: a commit needs 3 or 4, both
/// behind the dead hop. The primary retransmits to them once, suspects 2 from then on and feeds
/// 3 itself, instead of every prepare waiting out the retransmission timeout.
#[test]
fn a_dead_hop_on_the_ring_costs_one_retransmission_not_one_per_prepare() {
    let healthy = calm(5, Route::Ring).run_until_answered(20_000).unwrap();
    let mut degraded = calm(5, Route::Ring);
    degraded.permanently_down.insert(2);
    degraded.crash(2).unwrap();
    let ticks = degraded.run_until_answered(20_000).unwrap();
    let retransmits = degraded.coverage().get("retransmits");
    assert!(retransmits <= 8, "{retransmits} retransmissions for 84 ops");
    assert!(
        ticks <= healthy * 3 / 2,
        "{ticks} ticks with a dead hop against {healthy} healthy"
    );
}

#[test]
fn the_primary_crashing_is_replaced_and_nothing_is_lost() {
    let mut sim = calm(3, Route::Ring);
    sim.run_for(300).unwrap();
    let before = sim.committed();
    assert!(before > 0);
    sim.crash(0).unwrap();
    sim.run_until_answered(20_000).unwrap();
    assert!(sim.coverage().get("views_installed") >= 1);
    assert!(sim.committed() >= before);
    sim.restart_all().unwrap();
    sim.run_for(2_000).unwrap();
    let rejoined = sim.replica(0).unwrap();
    assert_eq!(
        rejoined.commit_min(),
        sim.committed(),
        "the old primary catches up"
    );
}

/// After the primary crashes, the surviving backup votes with nearly the log the new primary
/// installs: its StartView carries only the part it lacks, from the last op both hold alike, not
/// the whole log since the checkpoint (with megabyte batches, tens of MiB on the wire while the
/// cluster cannot commit).
#[test]
fn a_voter_gets_only_the_part_of_the_new_log_it_lacks() {
    for route in ROUTES {
        let mut sim = calm(3, route);
        let long_log = |sim: &Simulation| {
            let r = sim.replica(0).unwrap();
            r.log_tail() - r.log_base() >= 16
        };
        let mut ticks = 0;
        while !long_log(&sim) {
            sim.run_for(5).unwrap();
            ticks += 5;
            assert!(ticks < 5_000, "{route:?}: the log never grew past 16 ops");
        }
        sim.crash(0).unwrap();
        let new_primary = |sim: &Simulation| sim.replica(1).is_some_and(|r| r.is_primary());
        while !new_primary(&sim) {
            sim.run_for(5).unwrap();
            ticks += 5;
            assert!(ticks < 10_000, "{route:?}: no new primary");
        }
        let primary = sim.replica(1).unwrap();
        let whole = primary.log_tail() - primary.log_base() + 1;
        sim.run_for(100).unwrap();
        assert_eq!(sim.replica(2).unwrap().view(), 1, "{route:?}");
        let carried = sim.coverage().get("start_view_prepares");
        assert!(whole >= 17, "{route:?}: the log holds {whole} prepares");
        assert!(
            (1..=5).contains(&carried),
            "{route:?}: the StartView carried {carried} of the log's {whole} prepares"
        );
        sim.run_until_answered(20_000).unwrap();
    }
}

/// A restarted replica asks the new primary for its view naming the ops it holds; the answer
/// starts at the highest of them the primary holds alike, not at the primary's checkpoint.
#[test]
fn a_restarted_replica_gets_the_view_from_what_it_holds() {
    for route in ROUTES {
        // No checkpoint in the run: the primary's log holds every op, so the restarted
        // replica's tail is in it.
        let mut params = Params::calm(3, route);
        params.checkpoint_interval = 128;
        let mut sim = Simulation::new(7, params, false);
        let mut ticks = 0;
        while sim.replica(0).unwrap().log_tail() < 40 {
            sim.run_for(5).unwrap();
            ticks += 5;
            assert!(ticks < 5_000, "{route:?}: the log never grew past 40 ops");
        }
        sim.crash(0).unwrap();
        while !sim.replica(1).is_some_and(|r| r.is_primary()) {
            sim.run_for(5).unwrap();
            ticks += 5;
            assert!(ticks < 10_000, "{route:?}: no new primary");
        }
        // The StartView the new primary sent the crashed replica when it started the view (the
        // whole log: it did not vote) is lost with it.
        sim.run_for(10).unwrap();
        let before = sim.coverage().get("start_view_prepares");
        sim.restart_all().unwrap();
        let held = sim.replica(0).unwrap().log_tail();
        while sim.replica(0).unwrap().status() != vsr::Status::Normal {
            sim.run_for(1).unwrap();
            ticks += 1;
            assert!(
                ticks < 30_000,
                "{route:?}: the restarted replica never rejoined"
            );
        }
        let carried = sim.coverage().get("start_view_prepares") - before;
        let whole = primary_tail(&sim) + 1;
        let lacked = primary_tail(&sim) - held + 1;
        assert!(
            carried > 0 && carried <= 3 * lacked && carried < whole / 2,
            "{route:?}: StartViews carried {carried} prepares for the {lacked} it lacked \
             of a log of {whole}"
        );
        sim.run_until_answered(20_000).unwrap();
        assert_eq!(sim.replica(0).unwrap().log_tail(), primary_tail(&sim));
    }
}

fn primary_tail(sim: &Simulation) -> vsr::Op {
    sim.replica(1).unwrap().log_tail()
}

/// A vote carries its log as checksums, its anchor alone whole. Here the new primary, replica
/// one, missed the last prepares while the old primary went on committing with replica two,
/// then the old primary crashed: replica two's vote wins, and replica one fetches the prepares
/// it lacks from it instead of receiving them in the vote. Nothing committed is lost.
#[test]
fn a_new_primary_fetches_the_winning_ops_it_lacks_from_the_voter_that_holds_them() {
    for route in ROUTES {
        let mut sim = calm(3, route);
        sim.run_for(200).unwrap();
        sim.isolate(1, true);
        let mut ticks = 0;
        let lacking = |sim: &Simulation| {
            let behind = sim.replica(1).unwrap().log_tail();
            sim.replica(2).unwrap().op_durable().saturating_sub(behind)
        };
        while lacking(&sim) < 2 {
            sim.run_for(1).unwrap();
            ticks += 1;
            assert!(ticks < 40, "{route:?}: replica 2 got nothing new");
        }
        let before = sim.committed();
        sim.crash(0).unwrap();
        sim.heal();
        let lacking = lacking(&sim);
        while !sim.replica(1).unwrap().is_primary() {
            sim.run_for(5).unwrap();
            ticks += 5;
            assert!(ticks < 10_000, "{route:?}: no new primary");
        }
        let coverage = sim.coverage();
        assert!(coverage.get("votes") >= 1, "{route:?}");
        assert_eq!(
            coverage.get("vote_prepares"),
            coverage.get("votes"),
            "{route:?}: every vote carries its anchor alone"
        );
        let fetched = coverage.get("view_change_bodies");
        assert!(
            fetched >= lacking,
            "{route:?}: fetched {fetched} prepares, lacked {lacking}"
        );
        assert!(sim.replica(1).unwrap().log_tail() >= sim.replica(2).unwrap().op_durable());
        sim.run_until_answered(20_000).unwrap();
        assert!(sim.committed() >= before);
    }
}

/// A rolling restart's hand-over: the primary asked to step down gives its view to the next
/// replica while requests are in flight, keeps serving as a backup, and nothing committed is
/// lost. A backup asked the same thing has nothing to hand over and ignores it.
#[test]
fn a_primary_asked_to_step_down_hands_its_view_to_the_next_replica() {
    for route in ROUTES {
        let mut sim = calm(3, route);
        sim.run_for(300).unwrap();
        let before = sim.committed();
        assert!(before > 0);
        assert!(sim.replica(0).unwrap().is_primary());
        sim.step_down(1).unwrap();
        assert_eq!(sim.coverage().get("step_downs"), 0, "a backup has no view");
        sim.step_down(0).unwrap();
        assert_eq!(sim.coverage().get("step_downs"), 1);
        sim.run_until_answered(20_000).unwrap();
        // The last commit reaches the backups with the next heartbeat.
        sim.run_for(200).unwrap();
        assert!(sim.committed() >= before);
        let new_primary = sim.replica(1).unwrap();
        assert!(
            new_primary.is_primary(),
            "{route:?}: view 1 belongs to replica 1"
        );
        assert_eq!(
            new_primary.view(),
            1,
            "{route:?}: one view change, not a storm"
        );
        assert_eq!(sim.replica(0).unwrap().status(), vsr::Status::Normal);
        assert_eq!(sim.replica(0).unwrap().commit_min(), sim.committed());
    }
}

fn with_standbys(route: Route) -> Simulation {
    let mut params = Params::calm(3, route);
    params.standbys = 2;
    Simulation::new(7, params, false)
}

/// Standbys acknowledge every prepare but are never counted: with two of three members down,
/// the primary and two acknowledging standbys commit nothing; with the members back, the
/// standbys end holding everything committed.
#[test]
fn a_standbys_acknowledgements_never_make_a_quorum() {
    for route in ROUTES {
        let mut sim = with_standbys(route);
        sim.run_for(300).unwrap();
        for r in [1, 2] {
            sim.crash(r).unwrap();
        }
        // Acknowledgements the two sent before they crashed may still arrive.
        sim.run_for(100).unwrap();
        let before = sim.committed();
        assert!(before > 0);
        sim.run_for(2_000).unwrap();
        assert_eq!(sim.committed(), before, "{route:?}: standbys made a quorum");
        let primary = sim.replica(0).unwrap();
        assert!(
            primary.log_tail() > before || !primary.is_primary(),
            "{route:?}: the primary prepared more (or gave up its view) and could not commit"
        );
        sim.restart_all().unwrap();
        sim.run_until_answered(30_000).unwrap();
        sim.run_for(300).unwrap();
        for standby in [3, 4] {
            let replica = sim.replica(standby).unwrap();
            assert!(replica.is_standby());
            assert_eq!(
                replica.commit_min(),
                sim.committed(),
                "{route:?}: standby {standby}"
            );
        }
    }
}

/// A standby follows the members into a new view and never leads or votes in one.
#[test]
fn standbys_follow_a_view_change_without_voting() {
    let mut sim = with_standbys(Route::Ring);
    sim.run_for(300).unwrap();
    sim.crash(0).unwrap();
    sim.run_until_answered(30_000).unwrap();
    sim.run_for(300).unwrap();
    assert!(sim.replica(1).unwrap().is_primary());
    for standby in [3, 4] {
        let replica = sim.replica(standby).unwrap();
        assert!(!replica.is_primary());
        assert_eq!(replica.view(), 1, "standby {standby} follows view 1");
        assert_eq!(replica.commit_min(), sim.committed());
    }
}

#[test]
fn a_full_cluster_power_loss_keeps_every_committed_op() {
    let mut sim = calm(3, Route::Star);
    sim.run_for(400).unwrap();
    let before = sim.committed();
    assert!(before > 0);
    for r in 0..3 {
        sim.crash(r).unwrap();
    }
    sim.restart_all().unwrap();
    // The checker verifies that every recovered op is the committed one.
    sim.run_until_answered(30_000).unwrap();
    assert!(sim.committed() >= before);
}

#[test]
fn an_isolated_primary_is_replaced_and_rejoins() {
    let mut sim = calm(3, Route::Star);
    sim.run_for(200).unwrap();
    sim.isolate(0, false);
    sim.run_until_answered(20_000).unwrap();
    assert!(sim.coverage().get("views_installed") >= 1);
    sim.heal();
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.replica(0).unwrap().commit_min(), sim.committed());
}

#[test]
fn a_primary_that_can_send_but_not_hear_abdicates() {
    let mut sim = calm(3, Route::Star);
    sim.run_for(200).unwrap();
    // Backups keep hearing the primary's prepares and heartbeats, so they never time out on
    // it; only the primary can notice that nothing commits.
    sim.isolate(0, true);
    sim.run_until_answered(30_000).unwrap();
    assert!(sim.coverage().get("abdications") >= 1);
}

#[test]
fn a_lagging_backup_catches_up_by_state_transfer() {
    let mut sim = calm(3, Route::Star);
    // Replica 2 misses every prepare but keeps hearing the primary's commit heartbeats, so it
    // stays in the view, learns it is behind, and must fetch what it missed.
    sim.drop_filter.insert((0, 2, MessageKind::Prepare));
    sim.run_for(600).unwrap();
    sim.drop_filter.clear();
    sim.run_until_answered(20_000).unwrap();
    sim.run_for(1_000).unwrap();
    assert!(sim.coverage().get("state_transfers") >= 1);
    assert_eq!(sim.replica(2).unwrap().commit_min(), sim.committed());
}

#[test]
fn a_corrupt_wal_slot_is_repaired_from_a_peer_not_truncated() {
    let mut sim = calm(3, Route::Star);
    sim.run_for(500).unwrap();
    let committed = sim.committed();
    assert!(committed > 5);
    // An op after the checkpoint recovery starts from, so it is read from the WAL.
    let replica = sim.replica(1).unwrap();
    let op = replica.checkpoint_durable() + 2;
    assert!(replica.op_durable() > op);
    sim.crash(1).unwrap();
    sim.rot(1, op);
    sim.restart_all().unwrap();
    assert!(
        sim.replica(1).unwrap().is_faulty(),
        "a header vouches for op {op}: corruption, not a torn write"
    );
    assert_eq!(sim.replica(1).unwrap().log_tail(), op - 1);
    sim.run_until_answered(20_000).unwrap();
    sim.run_for(1_000).unwrap();
    let repaired = sim.replica(1).unwrap();
    assert!(!repaired.is_faulty());
    assert_eq!(repaired.commit_min(), sim.committed());
    assert!(sim.committed() >= committed);
}

/// Three calm replicas after 500 ticks; replica 1 then restarts with the first op after its
/// checkpoint rotted in its WAL, so it comes back faulty.
fn replica_1_restarted_faulty() -> Simulation {
    replica_1_of_n_restarted_faulty(3)
}

fn replica_1_of_n_restarted_faulty(replicas: u8) -> Simulation {
    let mut sim = calm(replicas, Route::Star);
    sim.run_for(500).unwrap();
    let replica = sim.replica(1).unwrap();
    let op = replica.checkpoint_durable() + 1;
    assert!(replica.op_durable() > op);
    sim.crash(1).unwrap();
    sim.rot(1, op);
    sim.restart_all().unwrap();
    assert!(sim.replica(1).unwrap().is_faulty());
    sim
}

#[test]
fn a_faulty_replica_votes_for_the_ops_it_vouches_for() {
    // Replica 1 restarts faulty and cannot repair itself (replica 2's answers to it are lost),
    // then the primary dies for good. Replica 1's vote marks the ops it cannot read; with
    // replica 2's it makes a view-change quorum, and the new primary takes those ops from
    // replica 2's vote.
    let mut sim = replica_1_restarted_faulty();
    sim.drop_filter.insert((2, 1, MessageKind::RepairPrepare));
    sim.permanently_down.insert(0);
    sim.crash(0).unwrap();
    sim.run_for(3_000).unwrap();
    assert!(sim.coverage().get("damaged_votes") >= 1);
    assert!(
        sim.coverage().get("views_installed") >= 1,
        "two voters suffice when one of them is damaged"
    );
    assert_eq!(sim.coverage().get("prepares_repaired"), 0);
    assert!(
        !sim.replica(1).unwrap().is_faulty(),
        "the new view's log repaired it"
    );
    sim.run_until_answered(30_000).unwrap();
    sim.permanently_down.clear();
    sim.restart_all().unwrap();
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.replica(0).unwrap().commit_min(), sim.committed());
}

#[test]
fn two_replicas_elect_a_primary_with_one_of_them_damaged() {
    // Both replicas must vote at N = 2. Replica 1 restarts damaged and cannot repair itself
    // (replica 0's answers are lost); then replica 0 restarts too, so a view change is needed,
    // and replica 1's vote, with its damaged op marked unreadable, is one of the two.
    let mut sim = replica_1_of_n_restarted_faulty(2);
    sim.drop_filter.insert((0, 1, MessageKind::RepairPrepare));
    sim.crash(0).unwrap();
    sim.restart_all().unwrap();
    sim.run_for(3_000).unwrap();
    assert!(sim.coverage().get("damaged_votes") >= 1);
    assert!(sim.coverage().get("views_installed") >= 1);
    assert_eq!(sim.coverage().get("prepares_repaired"), 0);
    sim.run_until_answered(30_000).unwrap();
    sim.run_for(1_000).unwrap();
    assert!(!sim.replica(1).unwrap().is_faulty());
}

#[test]
fn an_op_nobody_can_read_waits_for_a_nack_quorum_then_is_truncated() {
    let mut sim = calm(3, Route::Star);
    sim.run_for(300).unwrap();
    // The primary's prepares stop reaching the backups: what it prepares now, only it holds.
    sim.drop_filter.insert((0, 1, MessageKind::Prepare));
    sim.drop_filter.insert((0, 2, MessageKind::Prepare));
    sim.run_for(100).unwrap();
    let committed = sim.committed();
    assert!(
        sim.replica(0).unwrap().op_durable() > committed,
        "written by the primary, acknowledged by nobody else"
    );
    // Its first uncommitted op rots while it is down; replica 2 is down too.
    sim.crash(0).unwrap();
    sim.rot(0, committed + 1);
    sim.drop_filter.clear();
    sim.restart_all().unwrap();
    sim.crash(2).unwrap();
    assert!(sim.replica(0).unwrap().is_faulty());
    // Replicas 0 and 1 make a view-change quorum and replica 0's longer log wins, but nobody
    // can read its op `committed + 1` and only replica 1 nacks it: for all they know it
    // committed on replicas 0 and 2. No view may start.
    sim.run_for(3_000).unwrap();
    assert!(sim.coverage().get("damaged_votes") >= 1);
    assert_eq!(sim.coverage().get("views_installed"), 0);
    assert_eq!(sim.coverage().get("nack_truncations"), 0);
    // Replica 2 comes back and nacks it too: two nacks prove it never committed, so the new
    // primary drops it and everything after it, and the clients' retries are answered. It
    // comes back during a view that 0 or 1 would lead: as the primary itself, 2 could start
    // the view from its own log and 1's, which never held the op, and no nack would be needed.
    while sim.replica(1).unwrap().view() % 3 == 2 {
        sim.run_for(1).unwrap();
    }
    sim.restart_all().unwrap();
    sim.run_until_answered(30_000).unwrap();
    assert!(sim.coverage().get("nack_truncations") >= 1);
    assert!(sim.committed() >= committed);
}

#[test]
fn a_faulty_replica_repairs_its_damaged_slot_from_a_peer_and_votes_again() {
    // As above, but replica 2 can answer: replica 1 fetches the prepare its header ring names,
    // is whole again, and the two of them elect a new primary without the dead one.
    let mut sim = replica_1_restarted_faulty();
    sim.crash(0).unwrap();
    sim.run_for(3_000).unwrap();
    assert!(sim.coverage().get("prepares_repaired") >= 1);
    assert!(!sim.replica(1).unwrap().is_faulty());
    assert!(sim.coverage().get("views_installed") >= 1);
    sim.restart_all().unwrap();
    sim.run_until_answered(30_000).unwrap();
}

#[test]
fn more_clients_than_sessions_evict_each_other_and_still_get_every_answer() {
    let mut params = Params::calm(3, Route::Star);
    params.clients = 7;
    let mut sim = Simulation::new(11, params, false);
    sim.run_until_answered(40_000).unwrap();
    // Four sessions for seven clients: registrations evict the oldest sessions, evicted clients
    // learn it, register again and resubmit; the checker's session model verified every
    // request executed at most once.
    assert!(sim.coverage().get("session_evictions") > 0);
    assert!(sim.coverage().get("evictions_seen_by_clients") > 0);
}

#[test]
fn a_backup_behind_every_log_catches_up_by_state_sync() {
    let mut sim = calm(3, Route::Star);
    // Replica 2 is down while the other two commit everything: several checkpoints pass, so
    // the ops it lacks are in nobody's log any more, only in their checkpoints.
    sim.crash(2).unwrap();
    sim.run_until_answered(30_000).unwrap();
    let primary = sim.replica(0).unwrap();
    assert!(
        primary.log_base() > 0,
        "the primary checkpointed and trimmed its log"
    );
    sim.restart_all().unwrap();
    assert_eq!(sim.replica(2).unwrap().commit_min(), 0);
    sim.run_for(3_000).unwrap();
    assert!(sim.coverage().get("state_syncs") >= 1);
    let synced = sim.replica(2).unwrap();
    assert_eq!(synced.commit_min(), sim.committed());
    // The checker compared its digest with the committed state's at the checkpoint it
    // installed; its state must also equal the primary's now.
    assert_eq!(
        synced.state_machine().snapshot(),
        sim.replica(0).unwrap().state_machine().snapshot()
    );
}

#[test]
fn a_restart_recovers_from_the_newest_checkpoint_and_the_wal_after_it() {
    let mut sim = calm(3, Route::Star);
    sim.run_until_answered(30_000).unwrap();
    sim.run_for(500).unwrap();
    let before = sim.replica(1).unwrap();
    let (base, durable) = (before.checkpoint_durable(), before.op_durable());
    assert!(base > 0 && durable > base);
    sim.crash(1).unwrap();
    sim.restart_all().unwrap();
    let after = sim.replica(1).unwrap();
    assert_eq!(after.log_base(), base);
    assert_eq!(
        after.log_tail(),
        durable,
        "the WAL after the checkpoint is read back"
    );
    assert!(after.commit_min() >= base);
    sim.run_for(1_000).unwrap();
    assert_eq!(sim.replica(1).unwrap().commit_min(), sim.committed());
    assert_eq!(
        sim.coverage().get("state_syncs"),
        0,
        "nothing needed a peer's state"
    );
}

/// A calm cluster of `replicas` members that goes through the member counts of `plan`.
fn reconfigured(replicas: u8, plan: &[u8], route: Route) -> Simulation {
    let mut params = Params::calm(replicas, route);
    params.membership_plan = plan.to_vec();
    Simulation::new(7, params, false)
}

/// 3 → 5 → 3 under load: the joining replicas follow as standbys first (epoch 1), become
/// members (epoch 2), and leave again (epoch 3); every request is answered, the remaining
/// members hold everything, the two that left retire.
#[test]
fn three_members_grow_to_five_through_standbys_and_shrink_back() {
    for route in ROUTES {
        let mut sim = reconfigured(3, &[5, 3], route);
        sim.run_until_converged(40_000)
            .unwrap_or_else(|e| panic!("{route:?}: {e}"));
        assert_eq!(sim.coverage().get("epochs_committed"), 3, "{route:?}");
        assert_eq!(
            sim.committed(),
            80 + 4 + 3,
            "{route:?}: requests, registrations and three reconfigurations"
        );
        for r in 0..3 {
            let replica = sim.replica(r).unwrap();
            assert_eq!(replica.membership().epoch, 3, "{route:?}: member {r}");
            assert_eq!(
                replica.commit_min(),
                sim.committed(),
                "{route:?}: member {r}"
            );
        }
        for r in [3, 4] {
            assert_eq!(
                sim.replica(r).unwrap().status(),
                vsr::Status::Retired,
                "{route:?}: {r} left"
            );
        }
    }
}

/// 1 → 3 → 1: a single member grows a quorum and shrinks back to one.
#[test]
fn one_member_grows_to_three_and_back_to_one() {
    let mut sim = reconfigured(1, &[3, 1], Route::Ring);
    sim.run_until_converged(40_000).unwrap();
    assert_eq!(sim.coverage().get("epochs_committed"), 3);
    assert!(sim.replica(0).unwrap().is_primary());
}

/// The primary proposes a configuration only once every joining standby caught up: with the
/// standby down, the cluster stays in the epoch that added it; when it comes back and catches
/// up, the next epoch follows.
#[test]
fn a_configuration_waits_for_its_joining_standbys_to_catch_up() {
    let mut sim = reconfigured(3, &[4], Route::Ring);
    sim.permanently_down.insert(3);
    sim.crash(3).unwrap();
    sim.run_for(3_000).unwrap();
    let primary = sim.replica(0).unwrap();
    assert_eq!(primary.membership().epoch, 1, "the standby was added");
    assert_eq!(
        primary.membership().replica_count,
        3,
        "but not made a member"
    );
    sim.permanently_down.clear();
    sim.restart_all().unwrap();
    sim.run_until_converged(40_000).unwrap();
    assert_eq!(sim.replica(3).unwrap().membership().replica_count, 4);
}

/// After 5 → 3 the two that left never count: with both remaining backups down, the primary
/// and the two retired replicas commit nothing, though clients keep asking.
#[test]
fn a_removed_member_never_counts_toward_a_quorum() {
    let mut params = Params::calm(5, Route::Star);
    params.membership_plan = vec![3];
    params.requests_per_client = 400;
    let mut sim = Simulation::new(7, params, false);
    while sim.replica(0).unwrap().membership().epoch < 1 {
        sim.run_for(1).unwrap();
    }
    for r in [1, 2] {
        sim.crash(r).unwrap();
    }
    sim.run_for(100).unwrap();
    let before = sim.committed();
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.committed(), before, "retired replicas made a quorum");
    assert!(sim.answered() < 1_600, "clients were still asking");
    for r in [3, 4] {
        assert_eq!(sim.replica(r).unwrap().status(), vsr::Status::Retired);
    }
    sim.restart_all().unwrap();
    sim.run_until_converged(100_000).unwrap();
}

/// A member down through two epochs comes back in the first one, hears from the newest, and
/// catches up across both (StartEpoch), ending a member of the last.
#[test]
fn a_member_that_missed_two_epochs_catches_up_across_them() {
    let mut sim = reconfigured(3, &[4], Route::Ring);
    sim.permanently_down.insert(2);
    sim.crash(2).unwrap();
    sim.run_until_answered(40_000).unwrap();
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.replica(0).unwrap().membership().epoch, 2);
    sim.permanently_down.clear();
    sim.restart_all().unwrap();
    assert_eq!(sim.replica(2).unwrap().membership().epoch, 0);
    sim.run_until_converged(40_000).unwrap();
    let rejoined = sim.replica(2).unwrap();
    assert_eq!(rejoined.membership().epoch, 2);
    assert_eq!(rejoined.commit_min(), sim.committed());
}
