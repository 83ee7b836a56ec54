//! User commands: GetUser and GetUsers read; CreateUser, UpdateUser and ChangePassword check
//! and hash here (on the blocking pool, before any lock) and submit the operation; DeleteUser
//! and UpdatePermissions are submitted by the dispatcher (`apply/users.rs` applies them all).

use super::submit;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::net::session::Session;
use crate::ops::Operation;
use crate::reply::{self, STATUS_ACTIVE, STATUS_INACTIVE};
use crate::security::access::Access;
use crate::security::auth;
use iggy_wire::{response, Identifier, Permissions};

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

async fn hash(broker: &Broker, password: String) -> Result<String> {
    broker
        .hashing
        .run(move || auth::hash_password(&password))
        .await?
        .map_err(|reason| {
            BrokerError::Storage(crate::storage::StorageError::Io {
                path: "password hashing".into(),
                source: std::io::Error::other(reason),
            })
        })
}

/// Anyone may read their own user; reading others needs `read_users`.
pub fn get(broker: &Broker, session: &Session, id: &Identifier, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    match catalog.user(id) {
        Some(user) => {
            if Some(user.id) != session.user_id {
                catalog.authorize(session.user_id, Access::ReadUsers)?;
            }
            reply::user_details(user, body);
        }
        // Missing: empty to a caller who may read users, `Unauthorized` to anyone else.
        None => catalog.authorize(session.user_id, Access::ReadUsers)?,
    }
    Ok(())
}

pub fn get_all(broker: &Broker, session: &Session, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    catalog.authorize(session.user_id, Access::ReadUsers)?;
    for user in &catalog.users {
        response::encode_user(
            user.id,
            user.created_at,
            reply::user_status(user),
            &user.username,
            body,
        );
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
    // Checked here as well as in apply: hashing costs ~19 MiB and tens of ms, not to be spent
    // on a caller who may not create users.
    broker
        .catalog()
        .authorize(session.user_id, Access::ManageUsers)?;
    validate_username(&username)?;
    validate_password(&password)?;
    let active = active_from_status(status)?;
    let password_hash = hash(broker, password).await?;
    let op = Operation::CreateUser {
        username,
        password_hash,
        active,
        permissions,
    };
    submit(broker, session.user_id, op, body).await
}

pub async fn update(
    broker: &Broker,
    session: &Session,
    user: Identifier,
    username: Option<String>,
    status: Option<u8>,
) -> Result<()> {
    if let Some(name) = &username {
        validate_username(name)?;
    }
    let active = status.map(active_from_status).transpose()?;
    let op = Operation::UpdateUser {
        user,
        username,
        active,
    };
    submit(broker, session.user_id, op, &mut Vec::new()).await
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
    let matches = broker
        .hashing
        .run(move || auth::verify_password(&current, &verify_hash))
        .await?;
    if !matches {
        return Err(BrokerError::InvalidCredentials);
    }
    let new_hash = hash(broker, new).await?;
    let op = Operation::ChangePassword {
        user: target,
        expected_hash: stored_hash,
        new_hash,
    };
    submit(broker, session.user_id, op, &mut Vec::new()).await
}
