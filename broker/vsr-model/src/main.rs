//! `vsr-model`: runs the exhaustive view-change model check over a suite of bounds.
//!
//! ```sh
//! cargo run --release -p vsr-model -- --suite ci      # what `make test` runs (a few minutes)
//! cargo run --release -p vsr-model -- --suite full    # `make model`: larger bounds
//! cargo run --release -p vsr-model -- --ops 2 --crashes 1 --views 2 [--mutation longest-log]
//! cargo run --release -p vsr-model -- --ops 1 --crashes 1 --damages 1 --views 1
//! ```
//!
//! Every correct configuration must explore its whole space with no safety violation and reach
//! every "sometimes" case; every mutation must be caught. Exit status 1 otherwise.

use stateright::{Checker, HasDiscoveries, Model};
use std::process::ExitCode;
use std::time::Instant;
use vsr_model::{Mutation, VsrModel};

struct Case {
    ops: u8,
    crashes: u8,
    /// How many of the crashes may damage the last durable entry.
    damages: u8,
    views: u32,
    mutation: Mutation,
}

const fn case(ops: u8, crashes: u8, views: u32, mutation: Mutation) -> Case {
    Case {
        ops,
        crashes,
        damages: 0,
        views,
        mutation,
    }
}

/// A case whose one crash may damage the replica's last durable entry.
const fn damaged(ops: u8, views: u32, mutation: Mutation) -> Case {
    Case {
        ops,
        crashes: 1,
        damages: 1,
        views,
        mutation,
    }
}

/// Bounds that each fit in well under a minute on two cores; together they cover every pair of
/// dimensions the full bound (3 ops, 2 crashes, views 0..=3) has, at one step less.
const CI: &[Case] = &[
    case(3, 0, 1, Mutation::None),
    case(2, 1, 1, Mutation::None),
    case(1, 2, 1, Mutation::None),
    case(1, 1, 2, Mutation::None),
    case(2, 0, 2, Mutation::None),
    case(1, 0, 1, Mutation::ViewChangeQuorumOneShort),
    case(2, 0, 2, Mutation::LongestLogWins),
    case(1, 1, 2, Mutation::InMemoryLogViewInDoViewChange),
    case(1, 2, 1, Mutation::StaleStartViewTruncates),
    damaged(1, 1, Mutation::None),
    damaged(1, 1, Mutation::DamagedVoteHidesUnreadable),
    damaged(1, 1, Mutation::NackQuorumOneShort),
];

/// Larger bounds: tens of millions of states each, several GiB of memory.
const FULL: &[Case] = &[
    case(3, 1, 1, Mutation::None),
    case(2, 2, 1, Mutation::None),
    case(2, 1, 2, Mutation::None),
    damaged(2, 1, Mutation::None),
    damaged(1, 2, Mutation::None),
    damaged(1, 2, Mutation::DamagedTakesStaleStartView),
];

fn mutation_name(mutation: Mutation) -> &'static str {
    match mutation {
        Mutation::None => "none",
        Mutation::InMemoryLogViewInDoViewChange => "in-memory-log-view",
        Mutation::LongestLogWins => "longest-log",
        Mutation::ViewChangeQuorumOneShort => "quorum-one-short",
        Mutation::StaleStartViewTruncates => "stale-start-view",
        Mutation::DamagedVoteHidesUnreadable => "hide-unreadable",
        Mutation::NackQuorumOneShort => "nack-quorum-one-short",
        Mutation::DamagedTakesStaleStartView => "damaged-stale-start-view",
    }
}

fn parse_mutation(name: &str) -> Option<Mutation> {
    [
        Mutation::None,
        Mutation::InMemoryLogViewInDoViewChange,
        Mutation::LongestLogWins,
        Mutation::ViewChangeQuorumOneShort,
        Mutation::StaleStartViewTruncates,
        Mutation::DamagedVoteHidesUnreadable,
        Mutation::NackQuorumOneShort,
        Mutation::DamagedTakesStaleStartView,
    ]
    .into_iter()
    .find(|m| mutation_name(*m) == name)
}

/// Runs one case; true when it came out as it must.
fn run(case: &Case, threads: usize) -> bool {
    let model = VsrModel {
        replica_count: 3,
        max_requests: case.ops,
        max_crashes: case.crashes,
        max_damages: case.damages,
        max_view: case.views,
        mutation: case.mutation,
    };
    let properties = model.properties();
    let started = Instant::now();
    let mut checker = model.clone().checker().threads(threads);
    if case.mutation != Mutation::None {
        // A broken rule only has to be caught once.
        checker = checker.finish_when(HasDiscoveries::AnyFailures);
    }
    let checker = checker.spawn_bfs().join();
    let elapsed = started.elapsed().as_secs_f64();
    let states = checker.unique_state_count();
    print!(
        "ops {} crashes {} ({} damaging) views 0..={} mutation {:<21} {:>10} states {:>7.1} s  ",
        case.ops,
        case.crashes,
        case.damages,
        case.views,
        mutation_name(case.mutation),
        states,
        elapsed
    );
    let mut violated = Vec::new();
    let mut unreached = Vec::new();
    for property in &properties {
        let found = checker.discovery(property.name);
        match property.expectation {
            stateright::Expectation::Always | stateright::Expectation::Eventually => {
                if let Some(path) = found {
                    if case.mutation == Mutation::None {
                        println!("\n  counterexample for {}:", property.name);
                        for action in path.clone().into_actions() {
                            println!("    {action:?}");
                        }
                        println!("    final state: {:#?}", path.last_state());
                    }
                    violated.push((property.name, path.into_actions().len()));
                }
            }
            stateright::Expectation::Sometimes => {
                if found.is_none() {
                    unreached.push(property.name);
                }
            }
        }
    }
    if case.mutation == Mutation::None {
        let ok = violated.is_empty() && unreached.is_empty();
        if ok {
            println!("ok: no violation, every case reached");
        } else {
            println!("FAILED");
            for (name, steps) in &violated {
                println!(
                    "    violated: {name} ({steps} steps; replay with --ops/--crashes/--views)"
                );
            }
            for name in &unreached {
                println!("    never reached: {name}");
            }
        }
        ok
    } else {
        match violated.first() {
            Some((name, steps)) => {
                println!("ok: caught ({name}, {steps} steps)");
                true
            }
            None => {
                println!("FAILED: the broken rule was not caught");
                false
            }
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut suite: Option<String> = None;
    let mut single = case(1, 0, 1, Mutation::None);
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--suite" => suite = Some(value()),
            "--ops" => single.ops = value().parse().unwrap_or(1),
            "--crashes" => single.crashes = value().parse().unwrap_or(0),
            "--damages" => single.damages = value().parse().unwrap_or(0),
            "--views" => single.views = value().parse().unwrap_or(1),
            "--threads" => threads = value().parse().unwrap_or(threads),
            "--mutation" => {
                let name = value();
                match parse_mutation(&name) {
                    Some(m) => single.mutation = m,
                    None => {
                        eprintln!("unknown mutation {name}: none, in-memory-log-view, longest-log, quorum-one-short, stale-start-view, hide-unreadable, nack-quorum-one-short, damaged-stale-start-view");
                        return ExitCode::from(2);
                    }
                }
            }
            other => {
                eprintln!(
                    "unknown argument {other}; see the doc comment of broker/vsr-model/src/main.rs"
                );
                return ExitCode::from(2);
            }
        }
    }
    let cases: Vec<&Case> = match suite.as_deref() {
        None => vec![&single],
        Some("ci") => CI.iter().collect(),
        Some("full") => CI.iter().chain(FULL).collect(),
        Some(other) => {
            eprintln!("unknown suite {other}: ci, full");
            return ExitCode::from(2);
        }
    };
    let failed = cases.iter().filter(|c| !run(c, threads)).count();
    println!("{} cases, {} failed", cases.len(), failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
