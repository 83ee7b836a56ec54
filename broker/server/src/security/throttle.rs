//! Failed-login throttling, per client address and per username. After `after` failures in a
//! row, each further attempt must wait `base`, doubling with every failure up to `max`, since
//! the last one; an attempt inside that window is refused at once, without running argon2 —
//! guessing gets slow, and the hashing pool stays free for real logins. A success clears the
//! address's and the user's record. Records of quiet keys expire, and the table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered; beyond that the oldest records are dropped first.
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    pub after: u32,
    pub base: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
enum Key {
    Address(IpAddr),
    User(String),
}

pub struct LoginThrottle {
    settings: ThrottleSettings,
    failures: Mutex<HashMap<Key, Failures>>,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long until `address` or `username` may try again; zero when it may now.
    pub fn wait(&self, address: Option<IpAddr>, username: &str, now: Instant) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        keys(address, username)
            .iter()
            .filter_map(|key| failures.get(key))
            .map(|f| {
                self.window(f.count)
                    .saturating_sub(now.duration_since(f.last))
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub fn failed(&self, address: Option<IpAddr>, username: &str, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_KEYS {
            self.forget_quiet(&mut failures, now);
        }
        for key in keys(address, username) {
            let entry = failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
            });
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
        }
    }

    pub fn succeeded(&self, address: Option<IpAddr>, username: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys(address, username) {
            failures.remove(&key);
        }
    }

    /// The wait after `count` failures in a row.
    fn window(&self, count: u32) -> Duration {
        let ThrottleSettings { after, base, max } = self.settings;
        if count < after {
            return Duration::ZERO;
        }
        let doublings = (count - after).min(20);
        base.saturating_mul(1 << doublings).min(max)
    }

    /// Drops records whose window has passed, then, if still full, the oldest half.
    fn forget_quiet(&self, failures: &mut HashMap<Key, Failures>, now: Instant) {
        failures.retain(|_, f| {
            now.duration_since(f.last) < self.window(f.count).max(self.settings.max)
        });
        if failures.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = failures.values().map(|f| f.last).collect();
            ages.sort();
            let cutoff = ages[ages.len() / 2];
            failures.retain(|_, f| f.last > cutoff);
        }
    }
}

fn keys(address: Option<IpAddr>, username: &str) -> Vec<Key> {
    let mut keys = vec![Key::User(username.to_owned())];
    if let Some(address) = address {
        keys.push(Key::Address(address));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleSettings {
            after: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    }

    #[test]
    fn waits_grow_after_the_allowance_and_a_success_clears_them() {
        let throttle = throttle();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..2 {
            throttle.failed(Some(ip), "alice", t0);
        }
        assert_eq!(throttle.wait(Some(ip), "alice", t0), Duration::ZERO);
        throttle.failed(Some(ip), "alice", t0);
        assert_eq!(throttle.wait(Some(ip), "alice", t0), Duration::from_secs(1));
        throttle.failed(Some(ip), "alice", t0);
        assert_eq!(throttle.wait(Some(ip), "alice", t0), Duration::from_secs(2));
        for _ in 0..10 {
            throttle.failed(Some(ip), "alice", t0);
        }
        assert_eq!(
            throttle.wait(Some(ip), "alice", t0),
            Duration::from_secs(8),
            "capped"
        );
        let later = t0 + Duration::from_secs(8);
        assert_eq!(throttle.wait(Some(ip), "alice", later), Duration::ZERO);
        // Another address is throttled for the same user, another user from the same address.
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(throttle.wait(Some(other), "alice", t0) > Duration::ZERO);
        assert!(throttle.wait(Some(ip), "bob", t0) > Duration::ZERO);
        throttle.succeeded(Some(ip), "alice");
        assert_eq!(throttle.wait(Some(other), "bob", t0), Duration::ZERO);
    }
}
