//! `vsr-sim`: a VOPR-style deterministic simulator for the `vsr` crate. One seed decides the
//! whole world — cluster size, route, fault rates, every delay, loss, crash and torn write — so
//! any failure replays exactly from its seed.

pub mod checker;
pub mod model;
pub mod params;
pub mod rng;
pub mod sim;

pub use params::Params;
pub use sim::{Coverage, Outcome, Simulation};

/// Runs one swarm seed.
pub fn run_seed(seed: u64, verbose: bool) -> Outcome {
    let mut rng = rng::Rng::new(seed);
    let params = Params::swarm(&mut rng);
    Simulation::new(seed, params, verbose).run()
}
