//! The contracts between the broker, its sidecar and the operator, written once.
//!
//! Each side used to restate these and they drifted (the operator's `ring.json` had 64-bit
//! epochs, the VSR core 32-bit ones). Everything another process reads or sets lives here:
//!
//! - [`ring`]: `ring.json`, the membership a broker replicates with, and its checks;
//! - [`env`]: the environment variables the operator sets and the broker and sidecar read;
//! - [`ports`]: the listeners and their default addresses;
//! - [`labels`]: label, annotation and condition names on pods and children;
//! - [`admin`]: the broker's admin HTTP API (`GET /admin/status`, `POST /admin/ring`);
//! - [`hosts`]: the dev cluster's name resolution, off unless its test-only variable is set;
//! - [`defaults`]: the broker's configuration defaults, which also type every key;
//! - [`duration`]: the duration syntax of that configuration;
//! - [`certificate`]: what both read from the client port's certificate (expiry, names).

pub mod admin;
pub mod certificate;
pub mod defaults;
pub mod duration;
pub mod env;
pub mod hosts;
pub mod labels;
pub mod ports;
pub mod ring;

pub use admin::{AdminStatus, RingUpdate, Role};
pub use ring::{Epoch, MemberId, Position, Ring, RingError, RingMember};
