//! User commands: GetUser, GetUsers, CreateUser, DeleteUser, UpdateUser, UpdatePermissions,
//! ChangePassword. Passwords are hashed on the blocking pool before any lock is taken.

use crate::access::Access;
use crate::auth;
use crate::broker::Broker;
use crate::catalog::ROOT_USER_ID;
use crate::error::{BrokerError, Result};
use crate::session::Session;
use crate::storage::fsutil::now_micros;
use crate::storage::metadata::UserRecord;
use iggy_wire::{response, Identifier, Permissions};

pub const STATUS_ACTIVE: u8 = 1;
pub const STATUS_INACTIVE: u8 = 2;

fn status(user: &UserRecord) -> u8 {
    if user.active {
        STATUS_ACTIVE
    } else {
        STATUS_INACTIVE
    }
}

fn validate_username(name: &str) -> Result<()> {
    if (3..=50).contains(&name.len()) {
        Ok(())
    } else {
        Err(BrokerError::InvalidUsername)
    }
}

fn validate_password(password: &str) -> Result<()> {
    if (3..=100).contains(&password.len()) {
        Ok(())
    } else {
        Err(BrokerError::InvalidPassword)
    }
}

fn active_from_status(status: u8) -> Result<bool> {
    match status {
        STATUS_ACTIVE => Ok(true),
        STATUS_INACTIVE => Ok(false),
        other => Err(BrokerError::InvalidUserStatus(other)),
    }
}

async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| {
            BrokerError::Storage(crate::storage::StorageError::Io {
                path: "password hashing".into(),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(|reason| {
            BrokerError::Storage(crate::storage::StorageError::Io {
                path: "password hashing".into(),
                source: std::io::Error::other(reason),
            })
        })
}

fn encode_details(user: &UserRecord, body: &mut Vec<u8>) {
    response::encode_user_details(
        user.id,
        user.created_at,
        status(user),
        &user.username,
        user.permissions.as_ref(),
        body,
    );
}

/// Anyone may read their own user; reading others needs `read_users`.
pub fn get(broker: &Broker, session: &Session, id: &Identifier, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    if let Some(user) = catalog.user(id) {
        if Some(user.id) != session.user_id {
            catalog.authorize(session.user_id, Access::ReadUsers)?;
        }
        encode_details(user, body);
    }
    Ok(())
}

pub fn get_all(broker: &Broker, session: &Session, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    catalog.authorize(session.user_id, Access::ReadUsers)?;
    for user in &catalog.users {
        response::encode_user(user.id, user.created_at, status(user), &user.username, body);
    }
    Ok(())
}

pub async fn create(
    broker: &Broker,
    session: &Session,
    username: String,
    password: String,
    status: u8,
    permissions: Option<Permissions>,
    body: &mut Vec<u8>,
) -> Result<()> {
    broker
        .catalog()
        .authorize(session.user_id, Access::ManageUsers)?;
    validate_username(&username)?;
    validate_password(&password)?;
    let active = active_from_status(status)?;
    let password_hash = hash(password).await?;
    let mut catalog = broker.catalog_mut();
    catalog.authorize(session.user_id, Access::ManageUsers)?;
    if catalog.users.iter().any(|u| u.username == username) {
        return Err(BrokerError::UserExists(username));
    }
    let id = (0..)
        .find(|id| catalog.users.iter().all(|u| u.id != *id))
        .unwrap_or(u32::MAX);
    catalog.users.push(UserRecord {
        id,
        username,
        password_hash,
        created_at: now_micros(),
        active,
        permissions,
        tokens: Vec::new(),
    });
    if let Err(e) = broker.persist(&catalog) {
        catalog.users.retain(|u| u.id != id);
        return Err(e);
    }
    if let Some(user) = catalog.users.iter().find(|u| u.id == id) {
        encode_details(user, body);
    }
    Ok(())
}

/// Applies `change` to a user and persists, restoring the previous record if the write fails.
fn change_user(
    broker: &Broker,
    session: &Session,
    id: &Identifier,
    change: impl FnOnce(&mut UserRecord) -> Result<()>,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    catalog.authorize(session.user_id, Access::ManageUsers)?;
    let user = catalog
        .user_mut(id)
        .ok_or_else(|| BrokerError::UserNotFound(id.clone()))?;
    let before = user.clone();
    change(user)?;
    if let Err(e) = broker.persist(&catalog) {
        if let Some(user) = catalog.users.iter_mut().find(|u| u.id == before.id) {
            *user = before;
        }
        return Err(e);
    }
    Ok(())
}

pub fn delete(broker: &Broker, session: &Session, id: &Identifier) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    catalog.authorize(session.user_id, Access::ManageUsers)?;
    let user = catalog
        .user(id)
        .ok_or_else(|| BrokerError::UserNotFound(id.clone()))?;
    if user.id == ROOT_USER_ID {
        return Err(BrokerError::CannotDeleteRoot);
    }
    let removed_id = user.id;
    let before = catalog.users.clone();
    catalog.users.retain(|u| u.id != removed_id);
    if let Err(e) = broker.persist(&catalog) {
        catalog.users = before;
        return Err(e);
    }
    Ok(())
}

pub fn update(
    broker: &Broker,
    session: &Session,
    id: &Identifier,
    username: Option<String>,
    status: Option<u8>,
) -> Result<()> {
    if let Some(name) = &username {
        validate_username(name)?;
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
    let active = status.map(active_from_status).transpose()?;
    change_user(broker, session, id, |user| {
        if user.id == ROOT_USER_ID && active == Some(false) {
            return Err(BrokerError::CannotDeleteRoot);
        }
        if let Some(name) = username {
            user.username = name;
        }
        if let Some(active) = active {
            user.active = active;
        }
        Ok(())
    })
}

pub fn update_permissions(
    broker: &Broker,
    session: &Session,
    id: &Identifier,
    permissions: Option<Permissions>,
) -> Result<()> {
    change_user(broker, session, id, |user| {
        if user.id == ROOT_USER_ID {
            return Err(BrokerError::CannotChangeRootPermissions);
        }
        user.permissions = permissions;
        Ok(())
    })
}

/// A user may change their own password (proving the current one); changing someone else's
/// needs `manage_users` and the target's current password too, as in Iggy.
pub async fn change_password(
    broker: &Broker,
    session: &Session,
    id: &Identifier,
    current: String,
    new: String,
) -> Result<()> {
    validate_password(&new)?;
    let (target, stored_hash) = {
        let catalog = broker.catalog();
        let user = catalog
            .user(id)
            .ok_or_else(|| BrokerError::UserNotFound(id.clone()))?;
        if Some(user.id) != session.user_id {
            catalog.authorize(session.user_id, Access::ManageUsers)?;
        } else {
            catalog.session_user(session.user_id)?;
        }
        (user.id, user.password_hash.clone())
    };
    let verify_hash = stored_hash.clone();
    let matches =
        tokio::task::spawn_blocking(move || auth::verify_password(&current, &verify_hash))
            .await
            .unwrap_or(false);
    if !matches {
        return Err(BrokerError::InvalidCredentials);
    }
    let new_hash = hash(new).await?;
    let mut catalog = broker.catalog_mut();
    let user = catalog
        .user_mut(&Identifier::Numeric(target))
        .ok_or_else(|| BrokerError::UserNotFound(id.clone()))?;
    if user.password_hash != stored_hash {
        // Changed concurrently: the proof of the current password no longer holds.
        return Err(BrokerError::InvalidCredentials);
    }
    user.password_hash = new_hash;
    if let Err(e) = broker.persist(&catalog) {
        if let Some(user) = catalog.users.iter_mut().find(|u| u.id == target) {
            user.password_hash = stored_hash;
        }
        return Err(e);
    }
    Ok(())
}
