//! The connected clients, for GetClients/GetClient/GetMe and for leaving consumer groups when a
//! connection closes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

/// (stream id, topic id, group id) of a group membership.
pub type Membership = (u32, u32, u32);

#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub user_id: Option<u32>,
    pub address: String,
    pub groups: BTreeSet<Membership>,
}

#[derive(Default)]
pub struct Clients {
    entries: Mutex<BTreeMap<u32, ClientEntry>>,
}

impl Clients {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, ClientEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, id: u32, address: String) {
        self.lock().insert(
            id,
            ClientEntry {
                user_id: None,
                address,
                groups: BTreeSet::new(),
            },
        );
    }

    pub fn remove(&self, id: u32) -> Option<ClientEntry> {
        self.lock().remove(&id)
    }

    /// Records who a client is logged in as (`None`: logged out). A login is logged at info,
    /// as an audit trail, inside the request's span when traces are exported.
    pub fn set_user(&self, id: u32, user_id: Option<u32>) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.user_id = user_id;
            if let Some(user) = user_id {
                tracing::info!(client = id, user, address = %entry.address, "client logged in");
            }
        }
    }

    pub fn get(&self, id: u32) -> Option<ClientEntry> {
        self.lock().get(&id).cloned()
    }

    pub fn all(&self) -> Vec<(u32, ClientEntry)> {
        self.lock().iter().map(|(id, e)| (*id, e.clone())).collect()
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn joined(&self, id: u32, membership: Membership) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.groups.insert(membership);
        }
    }

    pub fn left(&self, id: u32, membership: Membership) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.groups.remove(&membership);
        }
    }

    /// Forgets memberships of a deleted group (or of every group of a deleted topic/stream).
    pub fn forget_groups(&self, matches: impl Fn(&Membership) -> bool) {
        for entry in self.lock().values_mut() {
            entry.groups.retain(|m| !matches(m));
        }
    }
}
