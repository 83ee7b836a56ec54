//! Per-connection state: who is connected and who they are logged in as.

pub struct Session {
    pub client_id: u32,
    pub user_id: Option<u32>,
    pub address: String,
}

impl Session {
    pub fn new(client_id: u32, address: String) -> Self {
        Self {
            client_id,
            user_id: None,
            address,
        }
    }
}
