//! The signed revocation list the login server hands out: read from the database again when
//! older than [`FRESH`] (a `natter-login user disable` in another process shows within that
//! time), and signed again only when its entries changed, so that holders of the current list
//! are told "nothing new".

use std::sync::Mutex;
use std::time::{Duration, Instant};

use natter_proto::IssuerSigningKey;
use natter_proto::cert::CLOCK_SKEW_SECS;
use natter_proto::revocation::{MAX_REVOKED, RevocationList, Revocations};

use crate::accounts::Accounts;
use crate::service::unix_now;

/// How long the list is served before the database is read again.
const FRESH: Duration = Duration::from_secs(2);

/// The list last signed, and when the database was last read for it.
#[derive(Debug, Default)]
pub(crate) struct RevocationCache(Mutex<Option<(Instant, Revocations)>>);

impl RevocationCache {
    /// The current list. `keep`: how long an entry can still revoke a valid or renewable
    /// certificate (a certificate's lifetime and renewal grace); older ones are dropped.
    pub(crate) fn get(
        &self,
        accounts: &Accounts,
        issuer: &IssuerSigningKey,
        keep: Duration,
    ) -> Result<Revocations, String> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((read, revocations)) = &*cache
            && read.elapsed() < FRESH
        {
            return Ok(revocations.clone());
        }
        let now = unix_now();
        let since = now.saturating_sub(keep.as_secs() + CLOCK_SKEW_SECS);
        let revoked = accounts
            .revocations(since, MAX_REVOKED)
            .map_err(|e| e.to_string())?;
        let held = cache.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
        let revocations = match held.list() {
            Some(list) if list.revoked == revoked => held,
            _ => {
                let issued_at = now.max(held.issued_at() + 1);
                RevocationList::sign(issuer, issued_at, revoked)
                    .and_then(|list| list.verify(&issuer.public()))
                    .map_err(|e| e.to_string())?
            }
        };
        *cache = Some((Instant::now(), revocations.clone()));
        Ok(revocations)
    }

    /// Reads the database again at the next [`RevocationCache::get`].
    #[cfg(test)]
    pub(crate) fn expire(&self) {
        if let Some((read, _)) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            *read -= FRESH;
        }
    }
}
