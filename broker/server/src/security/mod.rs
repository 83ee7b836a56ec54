//! Who may do what: password hashing and verification (argon2id) on a bounded pool, and the
//! permission rules every operation is checked against.

pub mod access;
pub mod auth;
pub mod hashing;
pub mod throttle;
