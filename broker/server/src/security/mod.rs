//! Who may do what: password hashing and verification (argon2id), and the permission rules
//! every operation is checked against.

pub mod access;
pub mod auth;
