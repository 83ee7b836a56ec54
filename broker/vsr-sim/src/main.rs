//! `vsr-sim --seeds N [--first-seed S]` runs N swarm seeds and ends with `N passed, F failed`;
//! `vsr-sim --seed S [--world N|NAME] [--verbose]` replays one seed (in the current world, or
//! the fault menu a regression seed was found in, by number or name) and prints its trace hash.

use std::process::ExitCode;
use std::time::Instant;
use vsr_sim::{run_seed, run_seed_in, Coverage, World};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<u64> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let verbose = args.iter().any(|a| a == "--verbose");
    if let Some(seed) = value("--seed") {
        let named = args
            .iter()
            .position(|a| a == "--world")
            .and_then(|i| args.get(i + 1));
        let world = match named {
            None => World::CURRENT,
            Some(text) => match World::parse(text) {
                Some(world) => world,
                None => {
                    let known: Vec<String> = World::ALL
                        .iter()
                        .map(|w| format!("{} ({})", w.number(), w.name()))
                        .collect();
                    eprintln!("unknown world {text}; known: {}", known.join(", "));
                    return ExitCode::from(2);
                }
            },
        };
        let started = Instant::now();
        let outcome = run_seed_in(seed, world, verbose);
        println!("seed {seed}: {:?}", outcome.params);
        println!(
            "seed {seed} trace hash {:016x} ticks {} committed {} wall {:.2}s",
            outcome.trace_hash,
            outcome.ticks,
            outcome.committed,
            started.elapsed().as_secs_f64()
        );
        print_coverage(&outcome.coverage);
        return match outcome.failure {
            None => {
                println!("1 passed, 0 failed");
                ExitCode::SUCCESS
            }
            Some(failure) => {
                println!("FAILED seed {seed}: {failure}");
                println!("0 passed, 1 failed");
                ExitCode::FAILURE
            }
        };
    }
    let Some(count) = value("--seeds") else {
        eprintln!(
            "usage: vsr-sim --seeds N [--first-seed S] | --seed S [--world N|NAME] [--verbose]"
        );
        return ExitCode::from(2);
    };
    let first = value("--first-seed").unwrap_or(0);
    let started = Instant::now();
    let (mut passed, mut failed, mut ticks) = (0u64, 0u64, 0u64);
    let mut coverage = Coverage::default();
    for seed in first..first + count {
        let outcome = run_seed(seed, false);
        ticks += outcome.ticks;
        coverage.merge(&outcome.coverage);
        match outcome.failure {
            None => passed += 1,
            Some(failure) => {
                failed += 1;
                println!("FAILED seed {seed}: {failure}");
                println!("  replay: cargo run --release -p vsr-sim -- --seed {seed} --verbose");
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    print_coverage(&coverage);
    match coverage.gaps().as_slice() {
        [] => println!("coverage: every expected counter is non-zero"),
        gaps => println!("coverage gaps (zero): {}", gaps.join(", ")),
    }
    println!(
        "seeds {first}..{}: {:.0} simulated seconds per wall second, {:.0} seeds per minute",
        first + count,
        ticks as f64 / 100.0 / wall.max(1e-9),
        count as f64 * 60.0 / wall.max(1e-9)
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_coverage(coverage: &Coverage) {
    let line: Vec<String> = coverage
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("coverage: {}", line.join(" "));
}
