//! Users and passwords. Passwords are stored only as argon2id hashes (PHC strings); checking one
//! is deliberately slow, so callers run it on the blocking pool.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes a password with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    hash_password_with_salt(password, uuid::Uuid::new_v4().into_bytes())
}

/// Hashes a password with the given salt: for a hash every replica must compute alike (the
/// root user's, created by each replica at its first boot).
pub fn hash_password_with_salt(password: &str, salt_bytes: [u8; 16]) -> Result<String, String> {
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Constant-time check of a password against a stored hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random password for a root user whose password was not configured (printed once at first
/// boot, as Iggy does).
pub fn generate_password() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    a[..24].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_the_right_password() {
        let hash = hash_password("secret").unwrap();
        assert!(!hash.contains("secret"));
        assert!(verify_password("secret", &hash));
        assert!(!verify_password("Secret", &hash));
        assert!(!verify_password("secret", "not-a-hash"));
        assert_ne!(generate_password(), generate_password());
    }
}
