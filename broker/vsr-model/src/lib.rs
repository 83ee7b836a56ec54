//! An exhaustive model check of the view-change logic, with stateright.
//!
//! The simulator (`vsr-sim`) runs the real replica through millions of random schedules; this
//! model enumerates *every* schedule of a small cluster — 3 replicas, a few client ops, a few
//! crashes, a bounded number of views — over a network that may delay, reorder, duplicate or
//! never deliver any message. What the two share is the code that decides a view change:
//! quorum sizes (`vsr::quorums`), which DoViewChange log wins, and the commit a new view starts
//! from (`vsr::view_change`). The rest of the protocol is restated here in a few lines per
//! message, following `vsr::replica` (see docs/replication.md, "Model check").
//!
//! What is modelled on purpose, because the simulator found bugs there:
//! * the log a replica holds in memory versus what is durable: acknowledgements and
//!   DoViewChange messages carry only the durable log, **paired with the durable log view**;
//!   a crash returns the replica to its durable state;
//! * views are durable before anything is said in them (the replica defers its sends until the
//!   superblock lands, which is the same as the view being written atomically here);
//! * a crash may damage the last durable entry (its body rots, its header survives): the
//!   replica votes with that entry marked unreadable, a new primary takes the body from another
//!   vote or waits, and drops an unreadable op only when a nack quorum proves it never
//!   committed (`vsr::view_change::may_truncate`, the rule the replica runs).
//!
//! A vote here carries the entries its sender can read. The replica's vote carries only their
//! checksums, and its new primary fetches the bodies it lacks from those voters; a fetch by
//! checksum yields that very entry or nothing, and nothing is a vote that never arrived, which
//! this network already allows. So every log the replica can install, the model can too.

use stateright::{Model, Property};
use std::collections::{BTreeMap, BTreeSet};
use vsr::view_change::{self, Candidate};
use vsr::{quorums, routing};

pub type Rid = u8;

/// One log entry: the view its primary prepared it in and the client's value (1, 2, 3, …).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub view: u32,
    pub value: u8,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Normal,
    ViewChange,
    Recovering,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Replica {
    pub view: u32,
    pub status: Status,
    /// In memory: the log (entry `i` is op `i + 1`) and the view it was installed in.
    pub log: Vec<Entry>,
    pub log_view: u32,
    /// What a crash leaves: every entry's header, and the bodies of the first `readable`.
    pub durable_log: Vec<Entry>,
    pub readable: usize,
    /// A damaged replica installed a log: its next persist replaces the damaged durable log,
    /// headers and all, as the replica's atomic log write does.
    pub installed: bool,
    pub durable_log_view: u32,
    pub commit: usize,
    /// The commit number written with the durable log (the superblock's): never past what that
    /// log holds, as the replica's `commit_max.min(op_durable)`.
    pub durable_commit: usize,
    pub svc: BTreeSet<Rid>,
    /// The DoViewChange votes received in the current view change, by sender.
    pub dvc: BTreeMap<Rid, Vote>,
    pub dvc_sent: bool,
    /// Primary: highest op each replica (itself included) holds durably in this view.
    pub acked: BTreeMap<Rid, usize>,
}

impl Replica {
    fn new() -> Self {
        Replica {
            view: 0,
            status: Status::Normal,
            log: Vec::new(),
            log_view: 0,
            durable_log: Vec::new(),
            readable: 0,
            installed: false,
            durable_log_view: 0,
            commit: 0,
            durable_commit: 0,
            svc: BTreeSet::new(),
            dvc: BTreeMap::new(),
            dvc_sent: false,
            acked: BTreeMap::new(),
        }
    }
}

impl Replica {
    /// The durable entries whose bodies can still be read.
    fn readable_log(&self) -> &[Entry] {
        &self.durable_log[..self.readable]
    }

    fn damaged(&self) -> bool {
        self.readable < self.durable_log.len()
    }
}

/// A DoViewChange's content.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vote {
    pub log_view: u32,
    pub log: Vec<Entry>,
    pub unreadable: Vec<Entry>,
    pub commit: usize,
}

impl Vote {
    fn entry_at(&self, op: usize) -> Option<Entry> {
        let i = op.checked_sub(1)?;
        self.log
            .get(i)
            .or_else(|| self.unreadable.get(i.checked_sub(self.log.len())?))
            .copied()
    }

    /// As `vsr::view_change::Vote::nacks` (no checkpoints here, so every op is above them).
    fn nacks(&self, op: usize, entry: Entry) -> bool {
        self.entry_at(op) != Some(entry)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Msg {
    Prepare {
        to: Rid,
        view: u32,
        op: usize,
        entry: Entry,
    },
    PrepareOk {
        to: Rid,
        view: u32,
        op: usize,
        from: Rid,
    },
    StartViewChange {
        to: Rid,
        view: u32,
        from: Rid,
    },
    DoViewChange {
        to: Rid,
        view: u32,
        vote: Vote,
        from: Rid,
    },
    StartView {
        to: Rid,
        view: u32,
        log: Vec<Entry>,
        commit: usize,
    },
    RequestStartView {
        to: Rid,
        view: u32,
        from: Rid,
    },
}

impl Msg {
    /// The view a message belongs to, except RequestStartView (answered by any later view).
    fn view(&self) -> Option<u32> {
        match self {
            Msg::Prepare { view, .. }
            | Msg::PrepareOk { view, .. }
            | Msg::StartViewChange { view, .. }
            | Msg::DoViewChange { view, .. }
            | Msg::StartView { view, .. } => Some(*view),
            Msg::RequestStartView { .. } => None,
        }
    }

    fn to(&self) -> Rid {
        match self {
            Msg::Prepare { to, .. }
            | Msg::PrepareOk { to, .. }
            | Msg::StartViewChange { to, .. }
            | Msg::DoViewChange { to, .. }
            | Msg::StartView { to, .. }
            | Msg::RequestStartView { to, .. } => *to,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub replicas: Vec<Replica>,
    /// Every message ever sent: delivering one does not remove it, so any message may arrive
    /// again, late, or never.
    pub network: BTreeSet<Msg>,
    pub requests: u8,
    pub crashes: u8,
    pub damages: u8,
    /// Ghost state: every committed op, its entry and the view that committed it.
    pub committed: BTreeMap<usize, (Entry, u32)>,
    /// Ghost state: an op was committed twice with different entries.
    pub disagreement: bool,
    /// Ghost state: some installed log replaced an uncommitted entry (VSR's truncation).
    pub truncated: bool,
    /// Ghost state: a new primary dropped an unreadable op on a nack quorum's proof.
    pub nack_truncated: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    Request(Rid),
    Deliver(Msg),
    /// The write of the in-memory log (and its log view) lands.
    Persist(Rid),
    /// A timeout: the replica moves to the next view.
    Timeout(Rid),
    Crash(Rid),
    /// A crash after which the last durable entry's body no longer reads back.
    CrashDamaged(Rid),
}

/// A deliberately broken rule, to show the check catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// DoViewChange pairs the durable log with the in-memory log view (a bug the simulator
    /// found in the replica: seed 304603 in broker/vsr-sim/regressions.txt).
    InMemoryLogViewInDoViewChange,
    /// The new primary takes the longest log, ignoring log views.
    LongestLogWins,
    /// A StartView of the replica's own log view replaces a longer log it holds (a bug the
    /// model check found in the replica: a stale StartView truncated an acknowledged op).
    StaleStartViewTruncates,
    /// The view-change quorum is one smaller than `Qv`, so it can miss every replica that
    /// holds a committed op.
    ViewChangeQuorumOneShort,
    /// A damaged replica votes with its readable log only, hiding ops it may have acknowledged.
    DamagedVoteHidesUnreadable,
    /// A new primary drops an unreadable op with one nack fewer than the nack quorum.
    NackQuorumOneShort,
    /// A damaged replica installs a StartView of its log view that stops short of the entries
    /// it promised (the rule the replica gained with nack voting).
    DamagedTakesStaleStartView,
}

#[derive(Clone, Debug)]
pub struct VsrModel {
    pub replica_count: u8,
    pub max_requests: u8,
    pub max_crashes: u8,
    /// How many of the crashes may damage the replica's last durable entry.
    pub max_damages: u8,
    pub max_view: u32,
    pub mutation: Mutation,
}

impl VsrModel {
    /// The bounds: 3 replicas, at most 3 ops and 2 crashes; views up to 3 (every
    /// replica primary once, then the first again).
    pub fn standard() -> Self {
        VsrModel {
            replica_count: 3,
            max_requests: 3,
            max_crashes: 2,
            max_damages: 0,
            max_view: 3,
            mutation: Mutation::None,
        }
    }

    fn primary(&self, view: u32) -> Rid {
        routing::primary_of(view, self.replica_count)
    }

    fn others(&self, me: Rid) -> impl Iterator<Item = Rid> {
        (0..self.replica_count).filter(move |r| *r != me)
    }

    fn record_commits(state: &mut State, r: Rid, new_commit: usize) {
        let replica = &mut state.replicas[r as usize];
        let view = replica.view;
        let old = replica.commit;
        if new_commit <= old {
            return;
        }
        replica.commit = new_commit;
        for op in old + 1..=new_commit {
            let Some(entry) = state.replicas[r as usize].log.get(op - 1).copied() else {
                state.disagreement = true;
                return;
            };
            match state.committed.get(&op) {
                Some((existing, _)) if *existing != entry => state.disagreement = true,
                Some(_) => {}
                None => {
                    state.committed.insert(op, (entry, view));
                }
            }
        }
    }

    /// Primary: commit every op a replication quorum holds.
    fn advance_commit(&self, state: &mut State, r: Rid) {
        let replica = &state.replicas[r as usize];
        let quorum = quorums::replication(self.replica_count);
        let mut commit = replica.commit;
        while commit < replica.log.len()
            && replica.acked.values().filter(|op| **op > commit).count() >= quorum
        {
            commit += 1;
        }
        Self::record_commits(state, r, commit);
    }

    fn install(state: &mut State, r: Rid, view: u32, log: Vec<Entry>) {
        let replica = &mut state.replicas[r as usize];
        let committed = &state.committed;
        let replaced_uncommitted = replica
            .log
            .iter()
            .enumerate()
            .any(|(i, e)| log.get(i) != Some(e) && !committed.contains_key(&(i + 1)));
        state.truncated |= replaced_uncommitted;
        replica.installed |= replica.damaged();
        replica.log = log;
        replica.log_view = view;
        replica.view = view;
        replica.status = Status::Normal;
        replica.svc.clear();
        replica.dvc.clear();
        replica.dvc_sent = false;
        replica.acked.clear();
    }

    fn start_view_change(&self, state: &mut State, r: Rid, view: u32) {
        let replica = &mut state.replicas[r as usize];
        replica.view = view;
        replica.status = Status::ViewChange;
        replica.svc = BTreeSet::from([r]);
        replica.dvc.clear();
        replica.dvc_sent = false;
        replica.acked.clear();
        for to in self.others(r) {
            state
                .network
                .insert(Msg::StartViewChange { to, view, from: r });
        }
        self.maybe_send_do_view_change(state, r);
    }

    fn maybe_send_do_view_change(&self, state: &mut State, r: Rid) {
        let replica = &mut state.replicas[r as usize];
        let quorum = match self.mutation {
            Mutation::ViewChangeQuorumOneShort => quorums::view_change(self.replica_count) - 1,
            _ => quorums::view_change(self.replica_count),
        };
        if replica.status != Status::ViewChange || replica.dvc_sent || replica.svc.len() < quorum {
            return;
        }
        replica.dvc_sent = true;
        let log_view = match self.mutation {
            Mutation::InMemoryLogViewInDoViewChange => replica.log_view,
            _ => replica.durable_log_view,
        };
        let unreadable = match self.mutation {
            Mutation::DamagedVoteHidesUnreadable => Vec::new(),
            _ => replica.durable_log[replica.readable..].to_vec(),
        };
        let vote = Vote {
            log_view,
            log: replica.readable_log().to_vec(),
            unreadable,
            commit: replica.commit,
        };
        let view = replica.view;
        let to = self.primary(view);
        if to == r {
            self.on_do_view_change(state, r, view, vote, r);
        } else {
            state.network.insert(Msg::DoViewChange {
                to,
                view,
                vote,
                from: r,
            });
        }
    }

    /// The winning vote's log with every unreadable op's body taken from another vote or our
    /// own log; `None` while one is missing and not proven uncommitted by a nack quorum (as
    /// `Replica::winning_log`, minus asking peers outside the votes).
    fn winning_log(
        &self,
        replica: &Replica,
        winner: Rid,
        commit: usize,
    ) -> Option<(Vec<Entry>, bool)> {
        let vote = &replica.dvc[&winner];
        let mut log = vote.log.clone();
        for entry in vote.unreadable.iter().copied() {
            let op = log.len() + 1;
            let readable = replica
                .dvc
                .values()
                .filter_map(|v| v.log.get(op - 1))
                .chain(replica.log.get(op - 1))
                .any(|e| *e == entry);
            if readable {
                log.push(entry);
                continue;
            }
            let nacks = replica.dvc.values().filter(|v| v.nacks(op, entry)).count();
            let nacks = match self.mutation {
                Mutation::NackQuorumOneShort => nacks + 1,
                _ => nacks,
            };
            if op > commit && view_change::may_truncate(nacks, self.replica_count) {
                return Some((log, true));
            }
            return None;
        }
        Some((log, false))
    }

    fn on_do_view_change(&self, state: &mut State, r: Rid, view: u32, vote: Vote, from: Rid) {
        if view < state.replicas[r as usize].view || self.primary(view) != r {
            return;
        }
        if view > state.replicas[r as usize].view {
            self.start_view_change(state, r, view);
        }
        let replica = &mut state.replicas[r as usize];
        if replica.status != Status::ViewChange {
            return;
        }
        replica.dvc.insert(from, vote);
        let candidates: Vec<Candidate> = replica
            .dvc
            .iter()
            .map(|(&replica, vote)| Candidate {
                replica,
                log_view: vote.log_view,
                op_head: (vote.log.len() + vote.unreadable.len()) as u64,
                commit: vote.commit as u64,
            })
            .collect();
        let complete = match self.mutation {
            Mutation::ViewChangeQuorumOneShort => {
                candidates.len() + 1 >= quorums::view_change(self.replica_count)
                    && candidates.iter().any(|c| c.replica == r)
            }
            _ => view_change::quorum_complete(&candidates, r, self.replica_count),
        };
        if !complete {
            return;
        }
        let best = match self.mutation {
            Mutation::LongestLogWins => candidates.iter().copied().max_by_key(|c| c.op_head),
            _ => view_change::best_log(&candidates),
        };
        let Some(best) = best else { return };
        let commit =
            view_change::merged_commit(&candidates, replica.commit as u64, best.op_head) as usize;
        let Some((best_log, nack_truncated)) = self.winning_log(replica, best.replica, commit)
        else {
            return;
        };
        let commit = commit.min(best_log.len());
        state.nack_truncated |= nack_truncated;
        Self::install(state, r, view, best_log.clone());
        Self::record_commits(state, r, commit);
        for to in self.others(r) {
            state.network.insert(Msg::StartView {
                to,
                view,
                log: best_log.clone(),
                commit,
            });
        }
    }

    fn deliver(&self, state: &mut State, msg: Msg) {
        let r = msg.to();
        let me = &state.replicas[r as usize];
        match msg {
            Msg::Prepare {
                view, op, entry, ..
            } => {
                if me.status == Status::Normal && view == me.view && op == me.log.len() + 1 {
                    state.replicas[r as usize].log.push(entry);
                }
            }
            Msg::PrepareOk { view, op, from, .. } => {
                if me.status == Status::Normal && view == me.view && self.primary(view) == r {
                    let acked = state.replicas[r as usize].acked.entry(from).or_insert(0);
                    *acked = (*acked).max(op);
                    self.advance_commit(state, r);
                }
            }
            Msg::StartViewChange { view, from, .. } => {
                if view < me.view || (view == me.view && me.status == Status::Normal) {
                    return;
                }
                if view > me.view {
                    self.start_view_change(state, r, view);
                }
                state.replicas[r as usize].svc.insert(from);
                self.maybe_send_do_view_change(state, r);
            }
            Msg::DoViewChange {
                view, vote, from, ..
            } => self.on_do_view_change(state, r, view, vote, from),
            Msg::StartView {
                view, log, commit, ..
            } => {
                if view < me.view || (view == me.view && me.status == Status::Normal) {
                    return;
                }
                // A damaged replica's log is only the readable part of what it promised in its
                // log view; a StartView of that view shorter than the promise is stale.
                if self.mutation != Mutation::DamagedTakesStaleStartView
                    && view == me.durable_log_view
                    && me.damaged()
                    && log.len() < me.durable_log.len()
                {
                    return;
                }
                // As the replica: a StartView of our own log view that is a prefix of our log
                // is older than what we hold (a duplicate, or an answer to an earlier
                // RequestStartView); keep the longer log.
                let log = match self.mutation {
                    Mutation::StaleStartViewTruncates => log,
                    _ if view == me.log_view && me.log.starts_with(&log) => me.log.clone(),
                    _ => log,
                };
                Self::install(state, r, view, log);
                Self::record_commits(state, r, commit);
            }
            Msg::RequestStartView { view, from, .. } => {
                if me.status == Status::Normal && self.primary(me.view) == r && me.view >= view {
                    state.network.insert(Msg::StartView {
                        to: from,
                        view: me.view,
                        log: me.log.clone(),
                        commit: me.commit,
                    });
                }
            }
        }
    }

    fn persist(&self, state: &mut State, r: Rid) {
        let replica = &mut state.replicas[r as usize];
        // A damaged replica that installed nothing new rewrites nothing: its unreadable
        // entries' headers stay, as the header ring keeps them.
        if replica.installed
            || replica.log != replica.readable_log()
            || replica.log_view != replica.durable_log_view
        {
            replica.durable_log = replica.log.clone();
            replica.readable = replica.log.len();
            replica.durable_log_view = replica.log_view;
            replica.installed = false;
        }
        replica.durable_commit = replica.commit.min(replica.log.len());
        if replica.status != Status::Normal {
            return;
        }
        let (view, head) = (replica.view, replica.log.len());
        let primary = self.primary(view);
        if primary == r {
            replica.acked.insert(r, head);
            self.advance_commit(state, r);
        } else if head > 0 {
            state.network.insert(Msg::PrepareOk {
                to: primary,
                view,
                op: head,
                from: r,
            });
        }
    }

    fn crash(&self, state: &mut State, r: Rid, damage: bool) {
        state.crashes += 1;
        let replica = &mut state.replicas[r as usize];
        if damage {
            state.damages += 1;
            replica.readable = replica.durable_log.len() - 1;
        }
        replica.log = replica.readable_log().to_vec();
        replica.log_view = replica.durable_log_view;
        replica.commit = replica.durable_commit.min(replica.readable);
        replica.status = Status::Recovering;
        replica.svc.clear();
        replica.dvc.clear();
        replica.dvc_sent = false;
        replica.acked.clear();
        let (view, to) = (replica.view, self.primary(replica.view));
        if to != r {
            state
                .network
                .insert(Msg::RequestStartView { to, view, from: r });
        }
    }

    /// Every committed op is in the log of every normal primary of the view that committed
    /// it or any later view: the property view changes exist to keep.
    fn committed_ops_survive(&self, state: &State) -> bool {
        state.replicas.iter().enumerate().all(|(r, replica)| {
            replica.status != Status::Normal
                || self.primary(replica.view) as usize != r
                || state.committed.iter().all(|(op, (entry, view))| {
                    *view > replica.view || replica.log.get(op - 1) == Some(entry)
                })
        })
    }

    /// Every replica's log agrees with what was committed, up to its commit number.
    fn commits_are_committed_entries(state: &State) -> bool {
        state.replicas.iter().all(|replica| {
            (1..=replica.commit).all(|op| {
                replica.log.get(op - 1).is_some()
                    && state.committed.get(&op).map(|(e, _)| e) == replica.log.get(op - 1)
            })
        })
    }
}

impl Model for VsrModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            replicas: (0..self.replica_count).map(|_| Replica::new()).collect(),
            network: BTreeSet::new(),
            requests: 0,
            crashes: 0,
            damages: 0,
            committed: BTreeMap::new(),
            disagreement: false,
            truncated: false,
            nack_truncated: false,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (i, replica) in state.replicas.iter().enumerate() {
            let r = i as Rid;
            if state.requests < self.max_requests
                && replica.status == Status::Normal
                && self.primary(replica.view) == r
            {
                actions.push(Action::Request(r));
            }
            if replica.installed
                || replica.log != replica.readable_log()
                || replica.log_view != replica.durable_log_view
                || replica.commit != replica.durable_commit
            {
                actions.push(Action::Persist(r));
            }
            if replica.view < self.max_view {
                actions.push(Action::Timeout(r));
            }
            if state.crashes < self.max_crashes {
                actions.push(Action::Crash(r));
                if state.damages < self.max_damages && !replica.durable_log.is_empty() {
                    actions.push(Action::CrashDamaged(r));
                }
            }
        }
        for msg in &state.network {
            actions.push(Action::Deliver(msg.clone()));
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Request(r) => {
                state.requests += 1;
                let replica = &mut state.replicas[r as usize];
                let entry = Entry {
                    view: replica.view,
                    value: state.requests,
                };
                replica.log.push(entry);
                let (view, op) = (replica.view, replica.log.len());
                for to in self.others(r) {
                    state.network.insert(Msg::Prepare {
                        to,
                        view,
                        op,
                        entry,
                    });
                }
            }
            Action::Deliver(msg) => self.deliver(&mut state, msg),
            Action::Persist(r) => self.persist(&mut state, r),
            Action::Timeout(r) => {
                let view = state.replicas[r as usize].view + 1;
                self.start_view_change(&mut state, r, view);
            }
            Action::Crash(r) => self.crash(&mut state, r, false),
            Action::CrashDamaged(r) => self.crash(&mut state, r, true),
        }
        // A message of a view older than its recipient's can only be ignored (views never go
        // back, not even across a crash): forgetting it shrinks the state space without
        // hiding any behaviour.
        let replicas = &state.replicas;
        state
            .network
            .retain(|m| m.view().is_none_or(|v| v >= replicas[m.to() as usize].view));
        (state != *last).then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("agreement: one entry per committed op", |_, s: &State| {
                !s.disagreement
            }),
            Property::always(
                "durability: committed ops are in every later primary's log",
                |m: &VsrModel, s: &State| m.committed_ops_survive(s),
            ),
            Property::always(
                "prefix: logs match the committed entries up to each commit",
                |_, s: &State| Self::commits_are_committed_entries(s),
            ),
            // Reachability: the checked space includes the interesting cases.
            Property::sometimes("every request commits", |m: &VsrModel, s: &State| {
                s.committed.len() == m.max_requests as usize
            }),
            Property::sometimes(
                "an op commits in a later view (after a crash, where crashes are allowed)",
                |m: &VsrModel, s: &State| {
                    (m.max_crashes == 0 || s.crashes > 0)
                        && s.committed.values().any(|(_, view)| *view > 0)
                },
            ),
            Property::sometimes(
                "a view change truncates an uncommitted op",
                |_, s: &State| s.truncated,
            ),
            Property::sometimes(
                "a nack quorum drops an op nobody can read (where damage is allowed)",
                |m: &VsrModel, s: &State| m.max_damages == 0 || s.nack_truncated,
            ),
        ]
    }
}
