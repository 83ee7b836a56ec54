//! The memory budget for requests and responses in flight, shared by every connection.
//!
//! Each request body is read only once its bytes are reserved (a connection whose request does
//! not fit waits, and TCP pushes back on its client), and each poll takes what is left of the
//! budget, up to `max_poll_bytes`, until its response is written. A client that sends huge
//! requests, or polls and never reads, holds at most what it reserved; the others see smaller or
//! empty polls, and the broker's memory stays bounded by configuration, not by clients.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations count KiB, so a few GiB fit the semaphore's permit count.
const UNIT: u64 = 1024;

pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes reserved until dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Gives back what is reserved beyond `bytes` (a poll that planned less than it reserved).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(UNIT);
        if let Some(permit) = self.permit.as_mut() {
            let held = permit.num_permits() as u64;
            if held > keep {
                drop(permit.split((held - keep) as usize));
            }
        }
    }

    /// How many bytes this reservation covers.
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| u64::from(p.num_permits() as u32) * UNIT)
    }
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX >> 3);
        Self {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Waits until `bytes` (at most the whole budget) are free and reserves them.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = self.units_for(bytes);
        if units == 0 {
            return Reservation::default();
        }
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = self.units.clone().acquire_many_owned(units).await.ok();
        Reservation { permit }
    }

    /// Reserves up to `bytes` of what is free now, without waiting (possibly nothing).
    pub fn reserve_available(&self, bytes: u64) -> Reservation {
        let wanted = self.units_for(bytes);
        // Another connection may take units between the two calls; then take what is left.
        for _ in 0..3 {
            let units = wanted.min(self.units.available_permits() as u32);
            if units == 0 {
                break;
            }
            if let Ok(permit) = self.units.clone().try_acquire_many_owned(units) {
                return Reservation {
                    permit: Some(permit),
                };
            }
        }
        Reservation::default()
    }

    /// Bytes reserved now, and the whole budget.
    pub fn usage(&self) -> (u64, u64) {
        let free = self.units.available_permits() as u64;
        let total = u64::from(self.total_units);
        (total.saturating_sub(free) * UNIT, total * UNIT)
    }

    fn units_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_are_bounded_and_returned_on_drop() {
        let budget = MemoryBudget::new(10 * UNIT);
        let big = budget.reserve(100 * UNIT).await;
        assert_eq!(big.bytes(), 10 * UNIT, "capped at the whole budget");
        assert_eq!(
            budget.reserve_available(5 * UNIT).bytes(),
            0,
            "nothing left"
        );
        drop(big);
        let mut part = budget.reserve_available(5 * UNIT);
        part.shrink_to(3 * UNIT + 1);
        assert_eq!(part.bytes(), 4 * UNIT, "rounded up to whole units");
        let rest = budget.reserve_available(100 * UNIT);
        assert_eq!(rest.bytes(), 6 * UNIT);
        assert_eq!(budget.usage(), (10 * UNIT, 10 * UNIT));
        assert_eq!(budget.units.available_permits(), 0);
        let waiting = tokio::spawn({
            let units = budget.units.clone();
            async move { units.acquire_many_owned(3).await.map(|p| p.num_permits()) }
        });
        drop(part);
        assert_eq!(waiting.await.expect("task").expect("permits"), 3);
        drop(rest);
    }
}
