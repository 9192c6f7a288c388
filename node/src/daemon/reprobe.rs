//! When a node that may promote, but has no public address confirmed, probes its
//! reachability again (see `crate::net::reprobe` for why libp2p's AutoNAT client needs it).

use std::time::{Duration, Instant};

/// The first wait: long enough for the first probes to finish on a loaded host.
const FIRST: Duration = Duration::from_secs(20);
/// The wait doubles after each try up to this (a node behind NAT keeps trying, rarely).
const MAX: Duration = Duration::from_secs(10 * 60);

/// A pure schedule: the caller passes the time in.
#[derive(Debug, Clone)]
pub(crate) struct ReprobeSchedule {
    next: Instant,
    every: Duration,
}

impl ReprobeSchedule {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            next: now + FIRST,
            every: FIRST,
        }
    }

    /// Whether to probe again now. `waiting`: the node may promote and has listen addresses,
    /// but no address is confirmed. A confirmation starts the schedule over.
    pub(crate) fn due(&mut self, waiting: bool, now: Instant) -> bool {
        if !waiting {
            *self = Self::new(now);
            return false;
        }
        if now < self.next {
            return false;
        }
        self.every = self.every.saturating_mul(2).min(MAX);
        self.next = now + self.every;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_again_with_a_growing_wait_until_confirmed() {
        let t0 = Instant::now();
        let mut s = ReprobeSchedule::new(t0);
        assert!(!s.due(true, t0 + Duration::from_secs(19)));
        assert!(s.due(true, t0 + FIRST));
        // Then 40 s later, not before.
        assert!(!s.due(true, t0 + FIRST + Duration::from_secs(39)));
        assert!(s.due(true, t0 + FIRST + Duration::from_secs(40)));
        // Confirmed: nothing, and a later loss waits the first delay again.
        let t1 = t0 + Duration::from_secs(100);
        assert!(!s.due(false, t1));
        assert!(!s.due(true, t1 + Duration::from_secs(19)));
        assert!(s.due(true, t1 + FIRST));
    }

    #[test]
    fn the_wait_stops_growing() {
        let t0 = Instant::now();
        let mut s = ReprobeSchedule::new(t0);
        let mut now = t0;
        let mut tries = 0;
        while now < t0 + Duration::from_secs(3 * 3600) {
            if s.due(true, now) {
                tries += 1;
            }
            now += Duration::from_secs(1);
        }
        // At 20, 60, 140 and 300 s, then from 620 s every 10 minutes (17 times in 3 hours).
        assert_eq!(tries, 4 + 17);
    }
}
