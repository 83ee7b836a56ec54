//! Ping, LoginUser, LogoutUser and GetMe.

use crate::auth;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::session::Session;
use iggy_wire::response;

pub async fn login(
    broker: &Broker,
    session: &mut Session,
    username: String,
    password: String,
    body: &mut Vec<u8>,
) -> Result<()> {
    let user = broker
        .catalog()
        .users
        .iter()
        .find(|u| u.username == username)
        .cloned();
    // Verify against a throwaway hash when the user is unknown, so timing does not reveal
    // which usernames exist.
    let (hash, user) = match user {
        Some(user) => (user.password_hash.clone(), Some(user)),
        None => (dummy_hash(), None),
    };
    let matches = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let user = match user {
        Some(user) if matches => user,
        _ => return Err(BrokerError::InvalidCredentials),
    };
    if !user.active {
        return Err(BrokerError::UserInactive);
    }
    session.user_id = Some(user.id);
    body.extend_from_slice(&response::identity(user.id));
    Ok(())
}

fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("no-such-user").unwrap_or_default())
        .clone()
}

pub fn get_me(session: &Session, body: &mut Vec<u8>) -> Result<()> {
    let user_id = session.user_id.ok_or(BrokerError::Unauthenticated)?;
    response::encode_client(session.client_id, user_id, &session.address, &[], body);
    Ok(())
}
