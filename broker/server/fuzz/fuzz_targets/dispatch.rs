//! Structure-aware fuzzing of the request decoder and dispatcher: inputs become sequences of
//! mostly well-formed Iggy requests (see `broker::fuzzing::Op`) run against a real broker.
#![no_main]

use broker::fuzzing::{replay, Harness};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(Harness::new);
    replay(harness, data);
});
