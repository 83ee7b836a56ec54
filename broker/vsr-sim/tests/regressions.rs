//! Every seed in `regressions.txt` — each one failed once — must pass forever.

#[test]
fn every_seed_that_ever_failed_passes() {
    let list = include_str!("../regressions.txt");
    let seeds: Vec<u64> = list
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!seeds.is_empty());
    let failures: Vec<String> = seeds
        .iter()
        .filter_map(|seed| {
            vsr_sim::run_seed(*seed, false)
                .failure
                .map(|f| format!("seed {seed}: {f}"))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_replayed_seed_reproduces_its_trace_hash() {
    for seed in [1u64, 42, 4242, 100628, 206617] {
        let first = vsr_sim::run_seed(seed, false);
        let second = vsr_sim::run_seed(seed, false);
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed}");
        assert_eq!(first.ticks, second.ticks);
    }
}
