//! Token-bucket rate limiting keyed by source IP or user name. Pure: the caller passes `now`.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A limit of `burst` attempts, refilled at one attempt per `refill` interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub burst: u32,
    pub refill: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets per key, at most `max_keys` of them: full buckets carry no information and are
/// dropped first; past that, the least recently used bucket goes.
#[derive(Debug)]
pub struct RateLimiter<K> {
    limit: Limit,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(limit: Limit, max_keys: usize) -> Self {
        Self {
            limit,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        let rate = 1.0 / self.limit.refill.as_secs_f64().max(f64::MIN_POSITIVE);
        (bucket.tokens + elapsed * rate).min(f64::from(self.limit.burst))
    }

    fn wait_for_one(&self, tokens: f64) -> u64 {
        let missing = (1.0 - tokens).max(0.0);
        (missing * self.limit.refill.as_secs_f64()).ceil().max(1.0) as u64
    }

    /// `Err(secs)` if `key` has no attempt left (without using one), else `Ok`.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        match self.buckets.get(key) {
            Some(b) => {
                let tokens = self.refilled(*b, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(self.wait_for_one(tokens))
                }
            }
            None => Ok(()),
        }
    }

    /// Uses one attempt of `key` (down to zero left).
    pub fn record(&mut self, key: &K, now: Instant) {
        let tokens = match self.buckets.get(key) {
            Some(b) => self.refilled(*b, now),
            None => {
                self.make_room(now);
                f64::from(self.limit.burst)
            }
        };
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                last: now,
            },
        );
    }

    /// Checks and, when allowed, uses one attempt.
    pub fn acquire(&mut self, key: &K, now: Instant) -> Result<(), u64> {
        self.check(key, now)?;
        self.record(key, now);
        Ok(())
    }

    /// Gives back an attempt taken with [`RateLimiter::acquire`] that turned out not to
    /// count (a correct password): taking first and giving back after keeps concurrent
    /// attempts from all passing one check before any of them is recorded.
    pub fn refund(&mut self, key: &K, now: Instant) {
        let burst = f64::from(self.limit.burst);
        if let Some(b) = self.buckets.get(key).copied() {
            let tokens = (self.refilled(b, now) + 1.0).min(burst);
            self.buckets
                .insert(key.clone(), Bucket { tokens, last: now });
        }
    }

    fn make_room(&mut self, now: Instant) {
        if self.buckets.len() < self.max_keys {
            return;
        }
        let burst = f64::from(self.limit.burst);
        let limit = self.limit;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed / limit.refill.as_secs_f64().max(f64::MIN_POSITIVE) < burst
        });
        if self.buckets.len() >= self.max_keys
            && let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
        {
            self.buckets.remove(&oldest);
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit {
        burst: 3,
        refill: Duration::from_secs(10),
    };

    #[test]
    fn burst_then_refusal_then_recovery() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(LIMIT, 100);
        for _ in 0..3 {
            assert_eq!(rl.acquire(&"ip", t0), Ok(()));
        }
        assert_eq!(rl.acquire(&"ip", t0), Err(10));
        assert_eq!(rl.acquire(&"ip", t0 + Duration::from_secs(4)), Err(6));
        assert_eq!(rl.acquire(&"other", t0), Ok(()), "keys are independent");
        assert_eq!(rl.acquire(&"ip", t0 + Duration::from_secs(10)), Ok(()));
        assert!(rl.acquire(&"ip", t0 + Duration::from_secs(10)).is_err());
        // Long idle: back to the full burst, never more.
        let later = t0 + Duration::from_secs(1000);
        for _ in 0..3 {
            assert_eq!(rl.acquire(&"ip", later), Ok(()));
        }
        assert!(rl.acquire(&"ip", later).is_err());
    }

    #[test]
    fn a_refund_gives_back_one_attempt_never_more_than_the_burst() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(LIMIT, 100);
        for _ in 0..3 {
            assert_eq!(rl.acquire(&"ip", t0), Ok(()));
        }
        assert!(rl.acquire(&"ip", t0).is_err());
        rl.refund(&"ip", t0);
        assert_eq!(rl.acquire(&"ip", t0), Ok(()));
        for _ in 0..10 {
            rl.refund(&"ip", t0);
        }
        for _ in 0..3 {
            assert_eq!(rl.acquire(&"ip", t0), Ok(()));
        }
        assert!(rl.acquire(&"ip", t0).is_err());
    }

    #[test]
    fn check_does_not_consume() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(LIMIT, 100);
        for _ in 0..10 {
            assert_eq!(rl.check(&"name", t0), Ok(()));
        }
        rl.record(&"name", t0);
        rl.record(&"name", t0);
        rl.record(&"name", t0);
        assert_eq!(rl.check(&"name", t0), Err(10));
    }

    #[test]
    fn key_table_is_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(LIMIT, 4);
        for i in 0..100u32 {
            rl.record(&i, t0 + Duration::from_millis(u64::from(i)));
            assert!(rl.len() <= 4);
        }
        // The most recent keys are still limited.
        rl.record(&99, t0 + Duration::from_millis(99));
        rl.record(&99, t0 + Duration::from_millis(99));
        assert!(rl.check(&99, t0 + Duration::from_millis(99)).is_err());
    }
}
