//! The smallest bounds, in the ordinary test run (debug build): the model holds, and a broken
//! view-change quorum is caught. `make model-ci` (in `make test`) runs the larger suite in
//! release mode.

use stateright::{Checker, HasDiscoveries, Model};
use vsr_model::{Mutation, VsrModel};

fn small(mutation: Mutation) -> VsrModel {
    VsrModel {
        replica_count: 3,
        max_requests: 1,
        max_crashes: 0,
        max_damages: 0,
        max_view: 1,
        mutation,
    }
}

#[test]
fn one_op_and_one_view_change_hold_in_every_schedule() {
    let checker = small(Mutation::None).checker().spawn_bfs().join();
    checker.assert_properties();
    assert!(
        checker.unique_state_count() > 1_000,
        "the space is not trivial"
    );
}

#[test]
fn a_view_change_quorum_one_short_loses_a_committed_op() {
    let checker = small(Mutation::ViewChangeQuorumOneShort)
        .checker()
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    let path = checker
        .discovery("durability: committed ops are in every later primary's log")
        .expect("the broken quorum is caught");
    assert!(path.into_actions().len() > 3);
}

#[test]
fn the_standard_bounds_are_the_issues() {
    let standard = VsrModel::standard();
    assert_eq!(
        (
            standard.replica_count,
            standard.max_requests,
            standard.max_crashes
        ),
        (3, 3, 2)
    );
    assert_eq!(standard.properties().len(), 7);
}
