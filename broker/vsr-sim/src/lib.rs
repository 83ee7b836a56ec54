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

/// Which fault menu a seed's world is drawn from. A seed that failed is kept with the world
/// it failed in, so adding a new kind of fault never quietly changes an old regression case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// Before deaf replicas.
    V1,
    /// With deaf replicas.
    V2,
    /// With checkpoints that rot on disk.
    V3,
    /// With superblock copies torn by crashes and rotting.
    V4,
    /// With clogged paths: messages held for a while, then delivered together.
    V5,
    /// With a damaged replica allowed in two-replica clusters (the current menu).
    V6,
}

impl World {
    pub const CURRENT: World = World::V6;

    pub fn parse(text: &str) -> Option<World> {
        match text {
            "1" => Some(World::V1),
            "2" => Some(World::V2),
            "3" => Some(World::V3),
            "4" => Some(World::V4),
            "5" => Some(World::V5),
            "6" => Some(World::V6),
            _ => None,
        }
    }
}

/// Runs one swarm seed in the current world.
pub fn run_seed(seed: u64, verbose: bool) -> Outcome {
    run_seed_in(seed, World::CURRENT, verbose)
}

/// Runs one swarm seed. A panic inside the replica (an assertion) is a failure of that seed,
/// reported with its message, not the end of the campaign.
pub fn run_seed_in(seed: u64, world: World, verbose: bool) -> Outcome {
    let mut rng = rng::Rng::new(seed);
    let mut params = Params::swarm(&mut rng);
    if world == World::V1 {
        params.deaf_onset_ppm = 0;
    }
    if matches!(world, World::V1 | World::V2) {
        params.checkpoint_fault_ppm = 0;
    }
    if matches!(world, World::V1 | World::V2 | World::V3) {
        params.superblock_faults = false;
    }
    if matches!(world, World::V1 | World::V2 | World::V3 | World::V4) {
        params.clog_onset_ppm = 0;
    }
    if world != World::V6 {
        params.damage_at_two = false;
    }
    let run = {
        let params = params.clone();
        std::panic::catch_unwind(move || Simulation::new(seed, params, verbose).run())
    };
    run.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Outcome {
            seed,
            failure: Some(format!("panic: {message}")),
            trace_hash: 0,
            ticks: 0,
            committed: 0,
            coverage: Coverage::default(),
            params,
        }
    })
}
