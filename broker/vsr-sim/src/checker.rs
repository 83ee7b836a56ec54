//! Safety checkers, run on every event: agreement, prefix, durability across views, one primary
//! per view, monotonic durable views, hash chain, at-most-once, validity, replies equal to a
//! sequential model, identical state digests.

use crate::machine::{header_for_reference, SimMachine};
use std::collections::{BTreeMap, BTreeSet};
use vsr::{ClientId, Epoch, Op, Superblock, View, RECONFIGURE_CLIENT};

/// `(epoch, view)`: views are numbered within their epoch.
pub type Viewstamp = (Epoch, View);

#[derive(Debug, Clone)]
struct Committed {
    checksum: u128,
    /// The epoch and view of the replica that applied it first: the view that committed it or
    /// a later one (the committing primary applies at once; anyone else learned of it in that
    /// view or after).
    view: Viewstamp,
    digest: u128,
    client: ClientId,
    request: u64,
    executed: bool,
}

pub struct Checker<S> {
    root: u128,
    /// The one committed chain: index `op - 1`.
    canonical: Vec<Committed>,
    model: S,
    model_replies: Vec<Option<Vec<u8>>>,
    executed: BTreeSet<(ClientId, u64)>,
    last_committed: Vec<Op>,
    primaries: BTreeMap<Viewstamp, u8>,
    durable_views: Vec<(Epoch, View, View)>,
    sent: BTreeMap<(ClientId, u64), Vec<u8>>,
    /// client → (session, last executed request, op of that execution).
    sessions: BTreeMap<ClientId, (u64, u64, Op)>,
}

/// Must equal the replicas' `clients_max` in simulation.
pub const CLIENTS_MAX: usize = 4;

pub type Violation = String;

impl<S: SimMachine> Checker<S> {
    pub fn new(replicas: u8, root: u128, reference: S) -> Self {
        Self {
            root,
            canonical: Vec::new(),
            model: reference,
            model_replies: Vec::new(),
            executed: BTreeSet::new(),
            last_committed: vec![0; replicas as usize],
            primaries: BTreeMap::new(),
            durable_views: vec![(0, 0, 0); replicas as usize],
            sent: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    pub fn committed_ops(&self) -> Op {
        self.canonical.len() as Op
    }

    /// A replica just became primary of `view`: its log must hold every op committed in that
    /// view or an earlier one — what a view change exists to guarantee (checked here when it
    /// happens, not later when a lost op would show up as a conflicting commit or a stall).
    /// Ops first applied in a later view are left out: a view change whose messages were held
    /// back (a clogged path) can complete long after a later view committed more, and its stale
    /// primary may lack those ops — harmless, since the replicas of the later view ignore it,
    /// and exactly what VR allows.
    /// Ops up to the log's anchor (`base`, its checkpoint) are in the primary's state; the
    /// anchor and every committed op above it must be in its log.
    pub fn new_primary(
        &self,
        replica: u8,
        view: Viewstamp,
        base: Op,
        checksum_at: impl Fn(Op) -> Option<u128>,
    ) -> Result<(), Violation> {
        for (i, committed) in self.canonical.iter().enumerate() {
            let op = i as Op + 1;
            if op >= base && committed.view <= view && checksum_at(op) != Some(committed.checksum) {
                return Err(format!(
                    "durability: replica {replica} became primary of view {view:?} without committed op {op}"
                ));
            }
        }
        Ok(())
    }

    /// A restarted replica restored the checkpoint at `base` and re-applied its log up to
    /// `commit_min` while opening: the anchor and those ops must be the committed chain's.
    pub fn recovered(
        &mut self,
        replica: u8,
        base: Op,
        commit_min: Op,
        checksum_at: impl Fn(Op) -> Option<u128>,
    ) -> Result<(), Violation> {
        for op in base.max(1)..=commit_min {
            let canonical = self.canonical.get((op - 1) as usize).map(|c| c.checksum);
            if canonical.is_none() || canonical != checksum_at(op) {
                return Err(format!(
                    "durability: replica {replica} recovered op {op} that is not the committed one"
                ));
            }
        }
        self.last_committed[replica as usize] = commit_min;
        Ok(())
    }

    pub fn client_sent(&mut self, client: ClientId, request: u64, body: Vec<u8>) {
        self.sent.insert((client, request), body);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn committed(
        &mut self,
        replica: u8,
        op: Op,
        checksum: u128,
        parent: u128,
        body_checksum: u128,
        digest: u128,
        (client, session, request): (ClientId, u64, u64),
        timestamp: u64,
        executed: bool,
        view: Viewstamp,
    ) -> Result<(), Violation> {
        let last = &mut self.last_committed[replica as usize];
        if op != *last + 1 {
            return Err(format!(
                "prefix: replica {replica} committed op {op} after {last}"
            ));
        }
        *last = op;
        let index = (op - 1) as usize;
        if let Some(canon) = self.canonical.get(index) {
            if canon.checksum != checksum {
                return Err(format!(
                    "agreement: replica {replica} committed a different op {op}"
                ));
            }
            if canon.digest != digest || canon.executed != executed {
                return Err(format!(
                    "determinism: replica {replica} state digest differs after op {op}"
                ));
            }
            return Ok(());
        }
        // A new op extends the canonical chain.
        let expected_parent = if op == 1 {
            self.root
        } else {
            self.canonical[index - 1].checksum
        };
        if parent != expected_parent {
            return Err(format!(
                "hash chain: op {op} does not chain to op {}",
                op - 1
            ));
        }
        let Some(body) = self.sent.get(&(client, request)).cloned() else {
            return Err(format!(
                "validity: op {op} carries request {request} client {client:x} never sent"
            ));
        };
        if vsr::checksum::checksum(&[&body]) != body_checksum {
            return Err(format!(
                "validity: op {op} body differs from what client {client:x} sent"
            ));
        }
        let reply = if client == RECONFIGURE_CLIENT {
            // A reconfiguration touches neither sessions nor the state machine (the digest
            // check below); that it was proposed is checked above (the simulator registers
            // every configuration it asks for as sent).
            if !executed {
                return Err(format!("reconfiguration: op {op} was skipped"));
            }
            None
        } else {
            self.session_model(
                op,
                checksum,
                body_checksum,
                (client, session, request),
                timestamp,
                executed,
                &body,
            )?
        };
        if self.model.digest() != digest {
            return Err(format!(
                "determinism: digest after op {op} differs from the sequential model"
            ));
        }
        self.model_replies.push(reply);
        self.canonical.push(Committed {
            checksum,
            view,
            digest,
            client,
            request,
            executed,
        });
        Ok(())
    }

    /// The sequential model of sessions (same table size, same eviction rule): whether the
    /// op executes, checked against `executed`, and the reply the model gives.
    #[allow(clippy::too_many_arguments)]
    fn session_model(
        &mut self,
        op: Op,
        checksum: u128,
        body_checksum: u128,
        (client, session, request): (ClientId, u64, u64),
        timestamp: u64,
        executed: bool,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, Violation> {
        let register = session == 0;
        let entry = self.sessions.get(&client);
        let model_executes = if register {
            entry.is_none_or(|(_, last, _)| *last < request)
        } else {
            entry.is_some_and(|(s, last, _)| *s == session && *last < request)
        };
        if executed != model_executes {
            return Err(format!(
                "at-most-once: op {op} executed={executed}, the session model says {model_executes}"
            ));
        }
        // Registrations may run again after an eviction (a late duplicate finds no session and
        // opens one nobody uses); client operations never may.
        if executed && !register && !self.executed.insert((client, request)) {
            return Err(format!(
                "at-most-once: request {request} of client {client:x} executed twice"
            ));
        }
        Ok(if !executed {
            None
        } else if register {
            if !self.sessions.contains_key(&client) && self.sessions.len() >= CLIENTS_MAX {
                let oldest = self
                    .sessions
                    .iter()
                    .min_by_key(|(_, (_, _, at))| *at)
                    .map(|(c, _)| *c);
                if let Some(evicted) = oldest {
                    self.sessions.remove(&evicted);
                }
            }
            self.sessions.insert(client, (op, request, op));
            Some(op.to_le_bytes().to_vec())
        } else {
            self.sessions.insert(client, (session, request, op));
            let header = header_for_reference(
                op,
                checksum,
                body_checksum,
                (client, session, request),
                timestamp,
            );
            Some(self.model.apply(&header, body))
        })
    }

    /// A client received a reply: it must be for a committed op of that request and equal the
    /// model's result.
    pub fn reply(
        &self,
        client: ClientId,
        request: u64,
        op: Op,
        body: &[u8],
    ) -> Result<(), Violation> {
        let Some(canon) = op
            .checked_sub(1)
            .and_then(|i| self.canonical.get(i as usize))
        else {
            return Err(format!("reply for op {op}, which is not committed"));
        };
        if canon.client != client || canon.request != request {
            return Err(format!("reply for op {op} names the wrong request"));
        }
        match &self.model_replies[(op - 1) as usize] {
            Some(expected) if expected == body => Ok(()),
            _ => Err(format!(
                "reply for op {op} differs from the sequential model"
            )),
        }
    }

    pub fn normal(&mut self, replica: u8, view: Viewstamp, primary: bool) -> Result<(), Violation> {
        if !primary {
            return Ok(());
        }
        match self.primaries.insert(view, replica) {
            Some(other) if other != replica => Err(format!(
                "two primaries in (epoch, view) {view:?}: {other} and {replica}"
            )),
            _ => Ok(()),
        }
    }

    /// A replica checkpointed after applying `op`: its state there must be everyone's.
    pub fn checkpointed(&self, replica: u8, op: Op, digest: u128) -> Result<(), Violation> {
        match op
            .checked_sub(1)
            .and_then(|i| self.canonical.get(i as usize))
        {
            Some(committed) if committed.digest == digest => Ok(()),
            Some(_) => Err(format!(
                "determinism: replica {replica} checkpointed a different state at op {op}"
            )),
            None => Err(format!(
                "checkpoint: replica {replica} checkpointed op {op}, which is not committed"
            )),
        }
    }

    /// A replica installed a peer's checkpoint at `op`: it must be the committed state there,
    /// and the replica's next commit is `op + 1`.
    pub fn synced(&mut self, replica: u8, op: Op, digest: u128) -> Result<(), Violation> {
        self.checkpointed(replica, op, digest)?;
        let last = &mut self.last_committed[replica as usize];
        if op <= *last {
            return Err(format!(
                "state sync: replica {replica} synced to op {op} having committed {last}"
            ));
        }
        *last = op;
        Ok(())
    }

    pub fn superblock_durable(&mut self, replica: u8, sb: &Superblock) -> Result<(), Violation> {
        let last = &mut self.durable_views[replica as usize];
        // A superblock written before reconfiguration existed records no epoch; every one the
        // simulator sees does.
        let stamp = sb.viewstamp();
        if stamp < *last {
            return Err(format!(
                "monotonic views: replica {replica} made (epoch, view, log view) {stamp:?} durable after {last:?}"
            ));
        }
        *last = stamp;
        Ok(())
    }
}
