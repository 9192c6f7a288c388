//! A leaf's lookup asks both its superpeers, and the freshest valid record wins.
//!
//! A superpeer is any user's node. Asked alone, a hostile one could answer "not found", or
//! replay an older record it holds (validly signed, still within its lease: "online" after
//! the user went away, or a sign-off after the user came back), and the leaf had nothing to
//! compare it with. Asking the standby too means one honest superpeer is enough: a record
//! beats no record, a higher sequence number beats a lower one. Answers are checked one by one
//! before they get here (`leaf.rs` `answer_lookup`); this is the pure part that combines them.
//!
//! Once a record is in, the other answer is awaited for a short window only ([`WINDOW`]);
//! after a "not found", for a longer one ([`NOT_FOUND_WINDOW`]: the other superpeer may still
//! be asking the directory). A silent superpeer delays a lookup by that at most.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use natter_proto::{DeviceRecords, UserName};

use super::LookupOutcome;

/// How long the other answer is awaited once one brought a record.
pub(crate) const WINDOW: Duration = Duration::from_millis(500);
/// How long the other answer is awaited once one said "not found".
pub(crate) const NOT_FOUND_WINDOW: Duration = Duration::from_secs(3);
/// Lookups gathering at once; past it, a new one is refused.
pub(crate) const MAX_OPEN: usize = 1024;
/// Why a lookup was refused past [`MAX_OPEN`].
pub(crate) const TOO_MANY: &str = "too many lookups in flight; try again in a few seconds";

/// A decided lookup: the name, what it was for, and the outcome.
pub(crate) type Decided<P> = (UserName, P, LookupOutcome);

struct Gather<P> {
    name: UserName,
    purpose: P,
    /// Answers still to come.
    waiting: usize,
    best: Option<LookupOutcome>,
    /// Set by the first record or "not found": decide at this time even if an answer is
    /// missing.
    deadline: Option<Instant>,
}

/// The lookups in flight, by id. See the module docs.
pub(crate) struct Gathers<P> {
    next: u64,
    open: HashMap<u64, Gather<P>>,
}

impl<P> Default for Gathers<P> {
    fn default() -> Self {
        Self {
            next: 0,
            open: HashMap::new(),
        }
    }
}

impl<P> Gathers<P> {
    /// Starts a lookup of `name` asked of `asked` superpeers (at least 1). `Err` gives the
    /// purpose back when too many are open.
    pub(crate) fn open(&mut self, name: UserName, purpose: P, asked: usize) -> Result<u64, P> {
        if self.open.len() >= MAX_OPEN {
            return Err(purpose);
        }
        self.next += 1;
        self.open.insert(
            self.next,
            Gather {
                name,
                purpose,
                waiting: asked.max(1),
                best: None,
                deadline: None,
            },
        );
        Ok(self.next)
    }

    /// The name lookup `id` is for (to check answers against).
    pub(crate) fn name(&self, id: u64) -> Option<&UserName> {
        self.open.get(&id).map(|g| &g.name)
    }

    /// One superpeer's checked answer. Returns the lookup once decided: every answer is in,
    /// or (see [`Self::expired`]) the window after a record or a "not found" ended.
    pub(crate) fn answer(
        &mut self,
        id: u64,
        outcome: LookupOutcome,
        now: Instant,
    ) -> Option<Decided<P>> {
        let gather = self.open.get_mut(&id)?;
        gather.waiting = gather.waiting.saturating_sub(1);
        let best = match gather.best.take() {
            None => outcome,
            Some(best) => fresher(best, outcome),
        };
        let window = match best {
            LookupOutcome::Found { .. } => Some(WINDOW),
            LookupOutcome::NotFound { .. } => Some(NOT_FOUND_WINDOW),
            LookupOutcome::Failed(_) => None,
        };
        if let Some(window) = window {
            let at = now + window;
            gather.deadline = Some(gather.deadline.map_or(at, |d| d.min(at)));
        }
        gather.best = Some(best);
        if gather.waiting > 0 {
            return None;
        }
        self.close(id)
    }

    /// Lookups whose window after a first record or "not found" has ended.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<Decided<P>> {
        let due: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, g)| g.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.close(id)).collect()
    }

    fn close(&mut self, id: u64) -> Option<Decided<P>> {
        let g = self.open.remove(&id)?;
        let outcome = g
            .best
            .unwrap_or_else(|| LookupOutcome::Failed("no superpeer answered".into()));
        Some((g.name, g.purpose, outcome))
    }
}

/// The better of two answers: a record beats no record, which beats a failure. Of two
/// records, the user's devices are merged (per device, the higher sequence), and the device
/// shown is: of one device, the higher sequence, confirmed by its home if either answer says
/// so; of two devices, a confirmed one before an unconfirmed one, else the higher sequence.
fn fresher(a: LookupOutcome, b: LookupOutcome) -> LookupOutcome {
    use LookupOutcome::{Failed, Found, NotFound};
    match (a, b) {
        (
            Found {
                record: ra,
                confirmed: ca,
                others: oa,
            },
            Found {
                record: rb,
                confirmed: cb,
                others: ob,
            },
        ) => {
            let same_device = ra.body.cert.device_key() == rb.body.cert.device_key();
            let (a_shown, confirmed) = if same_device {
                match rb.body.seq.cmp(&ra.body.seq) {
                    std::cmp::Ordering::Greater => (false, cb),
                    std::cmp::Ordering::Equal => (true, ca || cb),
                    std::cmp::Ordering::Less => (true, ca),
                }
            } else if ca != cb {
                (ca, ca || cb)
            } else {
                (rb.body.seq <= ra.body.seq, ca)
            };
            let shown = if a_shown { &ra } else { &rb };
            let shown_device = shown.body.cert.device_key();
            // Every record was checked as its answer came in.
            let mut devices = DeviceRecords::new();
            for r in [ra.clone(), rb.clone()].into_iter().chain(oa).chain(ob) {
                devices.merge(r);
            }
            // The shown device's newest record (a newer one may have come as another's).
            let record = devices
                .records()
                .find(|r| r.body.cert.device_key() == shown_device)
                .cloned()
                .unwrap_or(if a_shown { ra } else { rb });
            let others = devices
                .records()
                .filter(|r| r.body.cert.device_key() != shown_device)
                .cloned()
                .collect();
            Found {
                record,
                confirmed,
                others,
            }
        }
        (found @ Found { .. }, _) | (_, found @ Found { .. }) => found,
        (not_found @ NotFound { .. }, _) | (_, not_found @ NotFound { .. }) => not_found,
        (failed @ Failed(_), Failed(_)) => failed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::leaf::tests::NOW;
    use super::*;

    fn name() -> UserName {
        UserName::parse("bob").unwrap()
    }

    fn found(seq: u64, confirmed: bool) -> LookupOutcome {
        let issuer = natter_proto::IssuerSigningKey::from_bytes(&[1; 32]);
        let mut record = super::super::leaf::tests::record("bob", &issuer, NOW + 60);
        record.body.seq = seq;
        LookupOutcome::Found {
            record,
            confirmed,
            others: vec![],
        }
    }

    fn seq(outcome: &LookupOutcome) -> Option<(u64, bool)> {
        match outcome {
            LookupOutcome::Found {
                record, confirmed, ..
            } => Some((record.body.seq, *confirmed)),
            _ => None,
        }
    }

    fn not_found() -> LookupOutcome {
        LookupOutcome::NotFound { exists: None }
    }

    #[test]
    fn the_higher_sequence_wins_in_either_order() {
        let now = Instant::now();
        for (first, second) in [
            (found(1, true), found(2, false)),
            (found(2, false), found(1, true)),
        ] {
            let mut g = Gathers::default();
            let id = g.open(name(), (), 2).unwrap();
            assert!(g.answer(id, first, now).is_none(), "waits for the other");
            let (_, (), outcome) = g.answer(id, second, now).unwrap();
            assert_eq!(seq(&outcome), Some((2, false)));
        }
    }

    #[test]
    fn a_record_beats_not_found_and_failure() {
        let now = Instant::now();
        for other in [not_found(), LookupOutcome::Failed("x".into())] {
            let mut g = Gathers::default();
            let id = g.open(name(), (), 2).unwrap();
            g.answer(id, other, now);
            let (_, (), outcome) = g.answer(id, found(5, true), now).unwrap();
            assert_eq!(seq(&outcome), Some((5, true)));
        }
        let mut g = Gathers::default();
        let id = g.open(name(), (), 2).unwrap();
        g.answer(id, LookupOutcome::Failed("x".into()), now);
        let (_, (), outcome) = g.answer(id, not_found(), now).unwrap();
        assert!(matches!(outcome, LookupOutcome::NotFound { .. }));
    }

    #[test]
    fn equal_sequences_are_confirmed_if_either_home_confirms() {
        let now = Instant::now();
        let mut g = Gathers::default();
        let id = g.open(name(), (), 2).unwrap();
        g.answer(id, found(3, false), now);
        let (_, (), outcome) = g.answer(id, found(3, true), now).unwrap();
        assert_eq!(seq(&outcome), Some((3, true)));
    }

    /// Each superpeer may know another of bob's devices (they published through different
    /// superpeers): the decided answer has both, the confirmed one shown.
    #[test]
    fn answers_about_different_devices_are_merged() {
        let now = Instant::now();
        let issuer = natter_proto::IssuerSigningKey::from_bytes(&[1; 32]);
        let device = |d: u8, seq: u64| {
            let mut r = super::super::leaf::tests::record_on(d, "bob", &issuer, NOW + 60);
            r.body.seq = seq;
            r
        };
        let mut g = Gathers::default();
        let id = g.open(name(), (), 2).unwrap();
        let laptop = LookupOutcome::Found {
            record: device(7, 9),
            confirmed: false,
            others: vec![device(8, 1)],
        };
        let phone = LookupOutcome::Found {
            record: device(8, 2),
            confirmed: true,
            others: vec![],
        };
        g.answer(id, laptop, now);
        let (_, (), outcome) = g.answer(id, phone, now).unwrap();
        let LookupOutcome::Found {
            record,
            confirmed,
            others,
        } = outcome
        else {
            panic!("found");
        };
        assert_eq!(
            (record.body.seq, confirmed),
            (2, true),
            "the confirmed phone"
        );
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].body.seq, 9, "the laptop beside it");
    }

    #[test]
    fn a_silent_superpeer_delays_a_found_record_by_the_window_only() {
        let now = Instant::now();
        let mut g = Gathers::default();
        let id = g.open(name(), 7u8, 2).unwrap();
        assert!(g.answer(id, found(1, true), now).is_none());
        assert!(g.expired(now + WINDOW / 2).is_empty());
        let decided = g.expired(now + WINDOW);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].1, 7);
        // A late answer finds nothing open.
        assert!(g.answer(id, found(9, true), now + WINDOW).is_none());
        // "Not found" waits longer for the other answer, and a record then shortens it.
        let id = g.open(name(), 8u8, 2).unwrap();
        g.answer(id, not_found(), now);
        assert!(g.expired(now + WINDOW * 2).is_empty());
        assert_eq!(g.expired(now + NOT_FOUND_WINDOW).len(), 1);
        let id = g.open(name(), 9u8, 3).unwrap();
        g.answer(id, not_found(), now);
        g.answer(id, found(1, true), now + WINDOW);
        assert!(g.expired(now + WINDOW * 3 / 2).is_empty());
        let decided = g.expired(now + WINDOW * 2);
        assert!(matches!(decided[0].2, LookupOutcome::Found { .. }));
        // A failure alone sets no deadline: the other answer decides.
        let id = g.open(name(), 10u8, 2).unwrap();
        g.answer(id, LookupOutcome::Failed("x".into()), now);
        assert!(g.expired(now + NOT_FOUND_WINDOW * 10).is_empty());
        assert!(g.answer(id, not_found(), now).is_some());
    }

    #[test]
    fn one_superpeer_asked_decides_at_its_answer_and_the_map_is_bounded() {
        let now = Instant::now();
        let mut g = Gathers::default();
        let id = g.open(name(), (), 1).unwrap();
        assert!(g.answer(id, not_found(), now).is_some());
        for _ in 0..MAX_OPEN {
            g.open(name(), (), 2).unwrap();
        }
        assert_eq!(g.open(name(), (), 2), Err(()));
    }
}
