//! `vsr-sim`: a VOPR-style deterministic simulator for the `vsr` crate. One seed decides the
//! whole world — cluster size, route, fault rates, every delay, loss, crash and torn write — so
//! any failure replays exactly from its seed.

pub mod checker;
pub mod coverage;
pub mod machine;
pub mod model;
pub mod params;
pub mod rng;
pub mod sim;

pub use coverage::Coverage;
pub use machine::SimMachine;
pub use params::Params;
pub use sim::{Outcome, Simulation};

/// Which fault menu a seed's world is drawn from, named for the fault it added. A seed that
/// failed is kept with the world it failed in, so adding a new kind of fault never quietly
/// changes an old regression case. Each world also has the number it was introduced as
/// (`regressions.txt` and `--world` take either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum World {
    /// 1: crashes, partitions, loss, torn and misdirected writes, rotting WAL slots.
    Baseline,
    /// 2: adds deaf replicas (hear nobody, are heard by all).
    DeafReplicas,
    /// 3: adds checkpoints that rot on disk.
    RottingCheckpoints,
    /// 4: adds superblock copies torn by crashes and rotting.
    SuperblockFaults,
    /// 5: adds clogged paths: messages held for a while, then delivered together.
    CloggedPaths,
    /// 6: adds a damaged replica in two-replica clusters.
    DamagedPairs,
    /// 7: adds primaries asked to step down (a rolling restart's hand-over).
    StepDowns,
    /// 8: adds non-voting standbys.
    Standbys,
    /// 9: adds reconfiguration: the members change by epochs (the current menu).
    Reconfiguration,
}

impl World {
    pub const CURRENT: World = World::Reconfiguration;
    pub const ALL: [World; 9] = [
        World::Baseline,
        World::DeafReplicas,
        World::RottingCheckpoints,
        World::SuperblockFaults,
        World::CloggedPaths,
        World::DamagedPairs,
        World::StepDowns,
        World::Standbys,
        World::Reconfiguration,
    ];

    /// The number the world was introduced as.
    pub fn number(self) -> u8 {
        self as u8 + 1
    }

    /// `kebab-case` name, e.g. `deaf-replicas`.
    pub fn name(self) -> &'static str {
        match self {
            World::Baseline => "baseline",
            World::DeafReplicas => "deaf-replicas",
            World::RottingCheckpoints => "rotting-checkpoints",
            World::SuperblockFaults => "superblock-faults",
            World::CloggedPaths => "clogged-paths",
            World::DamagedPairs => "damaged-pairs",
            World::StepDowns => "step-downs",
            World::Standbys => "standbys",
            World::Reconfiguration => "reconfiguration",
        }
    }

    /// A world by number (`3`) or name (`rotting-checkpoints`).
    pub fn parse(text: &str) -> Option<World> {
        let text = text.trim();
        World::ALL
            .into_iter()
            .find(|w| w.name() == text || w.number().to_string() == text)
    }

    /// Whether this world's menu includes what `other` added.
    fn has(self, other: World) -> bool {
        self >= other
    }
}

/// Runs one swarm seed in the current world.
pub fn run_seed(seed: u64, verbose: bool) -> Outcome {
    run_seed_in(seed, World::CURRENT, verbose)
}

/// Runs one swarm seed of the model broker. A panic inside the replica (an assertion) is a
/// failure of that seed, reported with its message, not the end of the campaign.
pub fn run_seed_in(seed: u64, world: World, verbose: bool) -> Outcome {
    run_seed_with::<model::ModelBroker>(seed, world, verbose)
}

/// [`run_seed_in`] replicating the state machine `S`.
pub fn run_seed_with<S: SimMachine>(seed: u64, world: World, verbose: bool) -> Outcome {
    let mut rng = rng::Rng::new(seed);
    let mut params = Params::swarm(&mut rng);
    if !world.has(World::DeafReplicas) {
        params.deaf_onset_ppm = 0;
    }
    if !world.has(World::RottingCheckpoints) {
        params.checkpoint_fault_ppm = 0;
    }
    if !world.has(World::SuperblockFaults) {
        params.superblock_faults = false;
    }
    if !world.has(World::CloggedPaths) {
        params.clog_onset_ppm = 0;
    }
    if !world.has(World::DamagedPairs) {
        params.damage_at_two = false;
    }
    if !world.has(World::StepDowns) {
        params.step_down_ppm = 0;
    }
    if !world.has(World::Reconfiguration) {
        params = params.without_reconfiguration();
    }
    if !world.has(World::Standbys) {
        params.standbys = 0;
    }
    let run = {
        let params = params.clone();
        std::panic::catch_unwind(move || Simulation::<S>::with_machine(seed, params, verbose).run())
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

#[cfg(test)]
mod tests {
    use super::World;

    #[test]
    fn worlds_parse_by_number_and_name_and_grow_in_order() {
        for world in World::ALL {
            assert_eq!(World::parse(&world.number().to_string()), Some(world));
            assert_eq!(World::parse(world.name()), Some(world));
        }
        assert_eq!(World::parse("10"), None);
        assert!(World::CloggedPaths.has(World::DeafReplicas));
        assert!(!World::DeafReplicas.has(World::CloggedPaths));
        assert_eq!(World::CURRENT, *World::ALL.last().expect("worlds"));
    }
}
