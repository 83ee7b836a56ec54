//! Per-connection state: who is connected and who they are logged in as.

use crate::net::budget::Reservation;

pub struct Session {
    pub client_id: u32,
    pub user_id: Option<u32>,
    pub address: String,
    /// Memory reserved for the response being built, released once it is written.
    pub response_budget: Reservation,
}

impl Session {
    pub fn new(client_id: u32, address: String) -> Self {
        Self {
            client_id,
            user_id: None,
            address,
            response_budget: Reservation::default(),
        }
    }
}
