//! Users: create, delete, update, permissions, password. Passwords arrive hashed.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::OpContext;
use crate::reply;
use crate::security::access::Access;
use crate::state::catalog::ROOT_USER_ID;
use crate::storage::metadata::UserRecord;
use iggy_wire::{Identifier, Permissions};

pub(super) struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub active: bool,
    pub permissions: Option<Permissions>,
}

pub(super) fn create(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    new: NewUser,
    body: &mut Vec<u8>,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    catalog.authorize(user, Access::ManageUsers)?;
    if catalog.users.iter().any(|u| u.username == new.username) {
        return Err(BrokerError::UserExists(new.username));
    }
    let id = (0..)
        .find(|id| catalog.users.iter().all(|u| u.id != *id))
        .unwrap_or(u32::MAX);
    catalog.users.push(UserRecord {
        id,
        username: new.username,
        password_hash: new.password_hash,
        created_at: context.timestamp,
        active: new.active,
        permissions: new.permissions,
        tokens: Vec::new(),
    });
    if let Err(e) = broker.persist(&catalog) {
        catalog.users.retain(|u| u.id != id);
        return Err(e);
    }
    if let Some(user) = catalog.users.iter().find(|u| u.id == id) {
        reply::user_details(user, body);
    }
    Ok(())
}

/// Applies `change` to a user and persists, restoring the previous record if the write fails.
fn change_user(
    broker: &Broker,
    user: Option<u32>,
    id: &Identifier,
    change: impl FnOnce(&mut UserRecord) -> Result<()>,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    catalog.authorize(user, Access::ManageUsers)?;
    let target = catalog
        .user_mut(id)
        .ok_or_else(|| BrokerError::UserNotFound(id.clone()))?;
    let before = target.clone();
    change(target)?;
    if let Err(e) = broker.persist(&catalog) {
        if let Some(target) = catalog.users.iter_mut().find(|u| u.id == before.id) {
            *target = before;
        }
        return Err(e);
    }
    Ok(())
}

pub(super) fn delete(broker: &Broker, user: Option<u32>, id: &Identifier) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    catalog.authorize(user, Access::ManageUsers)?;
    let target = catalog
        .user(id)
        .ok_or_else(|| BrokerError::UserNotFound(id.clone()))?;
    if target.id == ROOT_USER_ID {
        return Err(BrokerError::CannotDeleteRoot);
    }
    let removed_id = target.id;
    let before = catalog.users.clone();
    catalog.users.retain(|u| u.id != removed_id);
    if let Err(e) = broker.persist(&catalog) {
        catalog.users = before;
        return Err(e);
    }
    Ok(())
}

pub(super) fn update(
    broker: &Broker,
    user: Option<u32>,
    id: &Identifier,
    username: Option<String>,
    active: Option<bool>,
) -> Result<()> {
    if let Some(name) = &username {
        let catalog = broker.catalog();
        let target = catalog.user(id).map(|u| u.id);
        if catalog
            .users
            .iter()
            .any(|u| &u.username == name && Some(u.id) != target)
        {
            return Err(BrokerError::UserExists(name.clone()));
        }
    }
    change_user(broker, user, id, |target| {
        if target.id == ROOT_USER_ID && active == Some(false) {
            return Err(BrokerError::CannotDeleteRoot);
        }
        if let Some(name) = username {
            target.username = name;
        }
        if let Some(active) = active {
            target.active = active;
        }
        Ok(())
    })
}

pub(super) fn update_permissions(
    broker: &Broker,
    user: Option<u32>,
    id: &Identifier,
    permissions: Option<Permissions>,
) -> Result<()> {
    change_user(broker, user, id, |target| {
        if target.id == ROOT_USER_ID {
            return Err(BrokerError::CannotChangeRootPermissions);
        }
        target.permissions = permissions;
        Ok(())
    })
}

/// The caller proved it knows the password whose hash was `expected`; if the hash changed
/// since, that proof no longer holds. Changing someone else's password also needs
/// `manage_users`.
pub(super) fn change_password(
    broker: &Broker,
    user: Option<u32>,
    target: u32,
    expected: &str,
    new_hash: String,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    if user == Some(target) {
        catalog.session_user(user)?;
    } else {
        catalog.authorize(user, Access::ManageUsers)?;
    }
    let user = catalog
        .user_mut(&Identifier::Numeric(target))
        .ok_or(BrokerError::UserNotFound(Identifier::Numeric(target)))?;
    if user.password_hash != expected {
        return Err(BrokerError::InvalidCredentials);
    }
    let stored = std::mem::replace(&mut user.password_hash, new_hash);
    if let Err(e) = broker.persist(&catalog) {
        if let Some(user) = catalog.users.iter_mut().find(|u| u.id == target) {
            user.password_hash = stored;
        }
        return Err(e);
    }
    Ok(())
}
