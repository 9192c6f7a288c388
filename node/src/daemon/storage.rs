//! The daemon's side of the store thread: each job's continuation runs in the event loop once
//! the job's group is committed, so the loop never waits for the disk.

use std::future::Future;

use futures::StreamExt as _;

use super::Daemon;
use crate::store::{Store, StoreError};

/// What the loop runs once a store job is done.
pub(super) type Then = Box<dyn FnOnce(&mut Daemon) + Send>;

impl Daemon {
    /// Runs `job` on the store thread; `then` gets its result here, in this loop, once the
    /// job's group is committed (durable).
    pub(super) fn store_then<T, F, C>(&mut self, job: F, then: C)
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        C: FnOnce(&mut Daemon, Result<T, StoreError>) + Send + 'static,
    {
        let done = self.store.submit(job);
        self.after_store(done, then);
    }

    fn after_store<T, C>(
        &mut self,
        done: impl Future<Output = Result<T, StoreError>> + Send + 'static,
        then: C,
    ) where
        T: Send + 'static,
        C: FnOnce(&mut Daemon, Result<T, StoreError>) + Send + 'static,
    {
        self.store_jobs.push(Box::pin(async move {
            let result = done.await;
            Box::new(move |d: &mut Daemon| then(d, result)) as Then
        }));
    }

    /// A store write nobody waits for; a failure is logged.
    pub(super) fn store_write<F>(&mut self, what: &'static str, job: F)
    where
        F: FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
    {
        let done = self.store.submit(job);
        self.after_store(done, log_failure(what));
    }

    /// [`Daemon::store_write`] for a write whose loss in a power cut costs only a repeat
    /// (see `StoreHandle::submit_lazy`): it does not add an fsync of its own.
    pub(super) fn store_write_lazy<F>(&mut self, what: &'static str, job: F)
    where
        F: FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
    {
        let done = self.store.submit_lazy(job);
        self.after_store(done, log_failure(what));
    }

    /// Waits for the store jobs in flight and runs what follows them (at shutdown).
    pub(super) async fn finish_store_jobs(&mut self) {
        while let Some(then) = self.store_jobs.next().await {
            then(self);
        }
        self.net.drain().await;
    }
}

fn log_failure(what: &'static str) -> impl FnOnce(&mut Daemon, Result<(), StoreError>) + Send {
    move |_, result| {
        if let Err(e) = result {
            tracing::warn!(error = %e, "{what} failed");
        }
    }
}
