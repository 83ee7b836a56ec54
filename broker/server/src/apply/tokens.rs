//! Personal access tokens: create, delete, expire. A token arrives as its SHA-256; the raw
//! token never reaches the state (or, on a replicated broker, the log).

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::OpContext;
use crate::storage::metadata::TokenRecord;

pub fn is_expired(token: &TokenRecord, now: u64) -> bool {
    token.expiry_at != 0 && token.expiry_at <= now
}

/// `lifetime` is in µs: 0 takes the server default (never), `u64::MAX` is never.
pub(super) fn create(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    name: String,
    token_sha256: String,
    lifetime: u64,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let limit = broker.state_settings(&catalog).max_tokens_per_user;
    let owner = catalog.session_user_mut(user)?;
    let owner_id = owner.id;
    let now = context.timestamp;
    owner.tokens.retain(|t| !is_expired(t, now));
    if owner.tokens.iter().any(|t| t.name == name) {
        return Err(BrokerError::TokenExists(name));
    }
    if owner.tokens.len() >= limit as usize {
        return Err(BrokerError::TokenLimit(limit));
    }
    let expiry_at = match lifetime {
        0 | u64::MAX => 0,
        lifetime => now.saturating_add(lifetime),
    };
    owner.tokens.push(TokenRecord {
        name: name.clone(),
        token_sha256,
        expiry_at,
    });
    if let Err(e) = broker.persist(&catalog) {
        if let Some(owner) = catalog.users.iter_mut().find(|u| u.id == owner_id) {
            owner.tokens.retain(|t| t.name != name);
        }
        return Err(e);
    }
    Ok(())
}

pub(super) fn delete(broker: &Broker, user: Option<u32>, name: &str) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let owner = catalog.session_user_mut(user)?;
    let owner_id = owner.id;
    let before = owner.tokens.clone();
    owner.tokens.retain(|t| t.name != name);
    if owner.tokens.len() == before.len() {
        return Err(BrokerError::TokenNotFound(name.to_owned()));
    }
    if let Err(e) = broker.persist(&catalog) {
        if let Some(owner) = catalog.users.iter_mut().find(|u| u.id == owner_id) {
            owner.tokens = before;
        }
        return Err(e);
    }
    Ok(())
}

/// Drops expired tokens from every user; returns how many went. Maintenance, not a client's
/// request: it needs no permission.
pub(super) fn expire(broker: &Broker, context: OpContext) -> Result<usize> {
    let now = context.timestamp;
    let mut catalog = broker.catalog_mut();
    let before: usize = catalog.users.iter().map(|u| u.tokens.len()).sum();
    for user in &mut catalog.users {
        user.tokens.retain(|t| !is_expired(t, now));
    }
    let removed = before - catalog.users.iter().map(|u| u.tokens.len()).sum::<usize>();
    if removed > 0 {
        broker.persist(&catalog)?;
    }
    Ok(removed)
}
