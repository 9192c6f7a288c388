//! Message ids: ULIDs (<https://github.com/ulid/spec>), 48 bits of Unix milliseconds then 80
//! random bits, as 26 Crockford base32 characters. They sort by creation time, and within one
//! millisecond a generator increments the random part instead of drawing it again, so the ids
//! one generator hands out always increase.

use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const TIME_MASK: u64 = (1 << 48) - 1;
const RANDOM_MASK: u128 = (1 << 80) - 1;

/// Hands out increasing ULIDs.
#[derive(Debug, Default)]
pub(crate) struct UlidGenerator {
    /// The time and random parts of the last id, `None` before the first.
    last: Option<(u64, u128)>,
}

impl UlidGenerator {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A new ULID for now.
    pub(crate) fn next(&mut self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.next_at(now, rand::random)
    }

    /// A new ULID for `now_ms`, drawing fresh randomness from `random` when the millisecond
    /// changed. Never smaller than the previous one, even if the clock went back or the random
    /// part ran over: then it continues from the previous id.
    fn next_at(&mut self, now_ms: u64, random: impl FnOnce() -> u128) -> String {
        let ms = now_ms & TIME_MASK;
        let (ms, rand) = match self.last {
            Some((last_ms, last_rand)) if ms <= last_ms => {
                if last_rand < RANDOM_MASK {
                    (last_ms, last_rand + 1)
                } else {
                    // 2^80 ids in one millisecond: borrow the next millisecond.
                    ((last_ms + 1) & TIME_MASK, 0)
                }
            }
            _ => (ms, random() & RANDOM_MASK),
        };
        self.last = Some((ms, rand));
        encode((u128::from(ms) << 80) | rand)
    }
}

/// The 128-bit value as 26 base32 characters, most significant first (the first carries 3
/// bits, so it is at most '7').
fn encode(value: u128) -> String {
    (0..26)
        .rev()
        .map(|i| char::from(ALPHABET[((value >> (i * 5)) & 0x1f) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::msg::is_ulid;

    #[test]
    fn ids_are_valid_and_increasing() {
        let mut g = UlidGenerator::new();
        let ids: Vec<String> = (0..2000).map(|_| g.next()).collect();
        assert!(ids.iter().all(|id| is_ulid(id)), "{:?}", &ids[..3]);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn layout_is_time_then_random() {
        let mut g = UlidGenerator::new();
        assert_eq!(g.next_at(0, || 0), "0".repeat(26));
        let mut g = UlidGenerator::new();
        // The spec's example: 1469918176385 ms encodes as 01ARYZ6S41.
        let id = g.next_at(1_469_918_176_385, || 0);
        assert_eq!(id, "01ARYZ6S410000000000000000");
        let mut g = UlidGenerator::new();
        assert_eq!(
            g.next_at(TIME_MASK, || u128::MAX),
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
    }

    #[test]
    fn monotonic_within_a_millisecond_and_when_the_clock_goes_back() {
        let mut g = UlidGenerator::new();
        let a = g.next_at(1000, || 41);
        let b = g.next_at(1000, || panic!("no new randomness within a millisecond"));
        let c = g.next_at(999, || panic!("clock went back: continue from the last id"));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(b.ends_with("1A") && c.ends_with("1B"), "{b} {c}"); // 42, 43
        let d = g.next_at(1001, || 7);
        assert!(c < d);
        assert!(d.ends_with('7'));
    }

    #[test]
    fn a_full_random_part_borrows_the_next_millisecond() {
        let mut g = UlidGenerator::new();
        let a = g.next_at(1000, || RANDOM_MASK);
        let b = g.next_at(1000, || 0);
        assert!(a < b, "{a} {b}");
        assert_eq!(&b[..10], &encode(1001u128 << 80)[..10]);
        assert!(is_ulid(&a) && is_ulid(&b));
    }
}
