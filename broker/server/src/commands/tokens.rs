//! Personal access tokens: GetPersonalAccessTokens, CreatePersonalAccessToken,
//! DeletePersonalAccessToken, LoginWithPersonalAccessToken. A user manages only their own
//! tokens. The raw token is generated here and returned once; only its SHA-256 is submitted
//! and stored (`apply/tokens.rs`).

use super::submit;
use crate::apply::is_expired;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::net::session::Session;
use crate::ops::Operation;
use crate::storage::fsutil::now_micros;
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

pub fn get_all(broker: &Broker, session: &Session, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    let user = catalog.session_user(session.user_id)?;
    for token in &user.tokens {
        response::encode_token_info(&token.name, token.expiry_at, body);
    }
    Ok(())
}

/// `expiry` is a lifetime in µs: 0 takes the server default (never), `u64::MAX` is never.
pub async fn create(
    broker: &Broker,
    session: &Session,
    name: String,
    expiry: u64,
    body: &mut Vec<u8>,
) -> Result<()> {
    if !(3..=30).contains(&name.len()) {
        return Err(BrokerError::InvalidTokenName);
    }
    let raw = generate_token();
    let op = Operation::CreateToken {
        name,
        token_sha256: token_hash(&raw),
        lifetime: expiry,
    };
    submit(broker, session.user_id, op, &mut Vec::new()).await?;
    response::encode_raw_token(&raw, body);
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
