//! Personal access tokens: GetPersonalAccessTokens, CreatePersonalAccessToken,
//! DeletePersonalAccessToken, LoginWithPersonalAccessToken. A user manages only their own
//! tokens. The raw token is returned once; only its SHA-256 is stored.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::session::Session;
use crate::storage::fsutil::now_micros;
use crate::storage::metadata::TokenRecord;
use iggy_wire::response;
use sha2::{Digest, Sha256};

const TOKEN_LENGTH: usize = 50;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh token from the OS's randomness (about 297 bits).
fn generate_token() -> String {
    let mut bytes = Vec::with_capacity(64);
    while bytes.len() < TOKEN_LENGTH {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes[..TOKEN_LENGTH]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_expired(token: &TokenRecord, now: u64) -> bool {
    token.expiry_at != 0 && token.expiry_at <= now
}

pub fn get_all(broker: &Broker, session: &Session, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    let user = catalog.session_user(session.user_id)?;
    for token in &user.tokens {
        response::encode_token_info(&token.name, token.expiry_at, body);
    }
    Ok(())
}

/// `expiry` is a lifetime in µs: 0 takes the server default (never), `u64::MAX` is never.
pub fn create(
    broker: &Broker,
    session: &Session,
    name: String,
    expiry: u64,
    body: &mut Vec<u8>,
) -> Result<()> {
    if !(3..=30).contains(&name.len()) {
        return Err(BrokerError::InvalidTokenName);
    }
    let limit = broker.config.personal_access_token.max_tokens_per_user;
    let mut catalog = broker.catalog_mut();
    let user = catalog.session_user_mut(session.user_id)?;
    let user_id = user.id;
    let now = now_micros();
    user.tokens.retain(|t| !is_expired(t, now));
    if user.tokens.iter().any(|t| t.name == name) {
        return Err(BrokerError::TokenExists(name));
    }
    if user.tokens.len() >= limit as usize {
        return Err(BrokerError::TokenLimit(limit));
    }
    let raw = generate_token();
    let expiry_at = match expiry {
        0 | u64::MAX => 0,
        lifetime => now.saturating_add(lifetime),
    };
    user.tokens.push(TokenRecord {
        name: name.clone(),
        token_sha256: token_hash(&raw),
        expiry_at,
    });
    if let Err(e) = broker.persist(&catalog) {
        if let Some(user) = catalog.users.iter_mut().find(|u| u.id == user_id) {
            user.tokens.retain(|t| t.name != name);
        }
        return Err(e);
    }
    response::encode_raw_token(&raw, body);
    Ok(())
}

pub fn delete(broker: &Broker, session: &Session, name: &str) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let user = catalog.session_user_mut(session.user_id)?;
    let user_id = user.id;
    let before = user.tokens.clone();
    user.tokens.retain(|t| t.name != name);
    if user.tokens.len() == before.len() {
        return Err(BrokerError::TokenNotFound(name.to_owned()));
    }
    if let Err(e) = broker.persist(&catalog) {
        if let Some(user) = catalog.users.iter_mut().find(|u| u.id == user_id) {
            user.tokens = before;
        }
        return Err(e);
    }
    Ok(())
}

pub fn login(
    broker: &Broker,
    session: &mut Session,
    token: &str,
    body: &mut Vec<u8>,
) -> Result<()> {
    let hash = token_hash(token);
    let catalog = broker.catalog();
    let (user, record) = catalog
        .users
        .iter()
        .find_map(|u| {
            u.tokens
                .iter()
                .find(|t| t.token_sha256 == hash)
                .map(|t| (u, t))
        })
        .ok_or(BrokerError::InvalidToken)?;
    if is_expired(record, now_micros()) {
        return Err(BrokerError::TokenExpired(record.name.clone()));
    }
    if !user.active {
        return Err(BrokerError::UserInactive);
    }
    session.user_id = Some(user.id);
    broker.clients.set_user(session.client_id, session.user_id);
    body.extend_from_slice(&response::identity(user.id));
    Ok(())
}

/// Drops expired tokens from every user; run by the periodic maintenance task.
pub fn remove_expired(broker: &Broker) -> Result<usize> {
    let now = now_micros();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = generate_token();
        assert_eq!(a.len(), TOKEN_LENGTH);
        assert_ne!(a, generate_token());
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
