//! The store thread: how the daemon reaches the [`Store`] without blocking its event loop.
//!
//! [`StoreHandle::spawn`] moves the store onto an OS thread of its own ("natter-store") that
//! serves a bounded queue of jobs, each a closure over `&Store`. The thread blocks for one job,
//! takes every other job already waiting (up to [`MAX_GROUP_JOBS`]), and runs them all in one
//! [group](Store::group): one transaction, one fsync. Each job runs in a savepoint of its own, so
//! a job that fails or panics is undone alone. Answers go out only after the group's `COMMIT`
//! returned: a job's `Ok` means what it wrote is on disk; if the commit fails, every job of the
//! group gets [`StoreError::CommitFailed`]. A group of only [lazy](StoreHandle::submit_lazy)
//! jobs (writes whose loss in a power cut costs only a repeat) commits without the fsync.
//!
//! The busier the daemon, the more jobs wait during each commit and the fewer fsyncs per job.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use futures::future::{self, Either};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};

/// Most jobs committed together: bounds how long the first of a group waits for its answer.
pub const MAX_GROUP_JOBS: usize = 256;

/// Cloneable handle to the store thread. When every handle is gone, the thread finishes what
/// is queued and stops.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Box<dyn Job>>,
    /// Groups committed so far (for tests and metrics: jobs per commit is the batching gain).
    commits: Arc<AtomicU64>,
}

/// Owns the store thread: [`StoreThread::shutdown`] stops it and waits for it.
///
/// Dropping it without `shutdown` stops the thread too (queued jobs still run, new ones get
/// [`StoreError::Closed`]) but does not wait for it.
#[derive(Debug)]
pub struct StoreThread {
    /// Sending, or dropping, closes the queue.
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl StoreHandle {
    /// Moves `store` onto its own OS thread ("natter-store") serving a queue of `queue` jobs
    /// (at least 1).
    pub fn spawn(store: Store, queue: usize) -> std::io::Result<(StoreHandle, StoreThread)> {
        let (jobs, queued) = mpsc::channel(queue.max(1));
        let (stop, stopped) = oneshot::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let thread = thread::Builder::new().name("natter-store".into()).spawn({
            let commits = Arc::clone(&commits);
            move || serve(&store, queued, stopped, &commits)
        })?;
        Ok((StoreHandle { jobs, commits }, StoreThread { stop, thread }))
    }

    /// Runs `f` on the store thread, atomically (all of its writes are kept or none), and
    /// returns its result once the group it ran in is committed: `Ok` means durable.
    ///
    /// Errors: `f`'s own; [`StoreError::CommitFailed`] if the group's commit failed;
    /// [`StoreError::Panicked`] if `f` panicked; [`StoreError::Closed`] if the thread stopped.
    /// In every error case nothing `f` wrote is kept.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f).await
    }

    /// [`StoreHandle::submit`] for a write whose loss in a power cut costs only a repeat: its
    /// group commits without waiting for the disk (see [`Store::lazy_group`]) unless a job
    /// that must be durable shares it. `Ok` means committed, not necessarily on disk.
    pub fn submit_lazy<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(f, false)
    }

    /// [`StoreHandle::run`] without borrowing the handle: the job is queued now if there is
    /// room (so jobs submitted one after another run in that order), otherwise the returned
    /// future waits for room first. The future is `'static`, ready for a `FuturesUnordered`.
    /// Dropping it does not cancel a job already queued.
    pub fn submit<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(f, true)
    }

    fn queue<T, F>(
        &self,
        f: F,
        durable: bool,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending { f, reply, durable });
        // A waiting `send` keeps its place: try_send fails while anyone waits for room.
        let waiting = match self.jobs.try_send(job) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(job)) => Ok(Some((self.jobs.clone(), job))),
            Err(TrySendError::Closed(_)) => Err(StoreError::Closed),
        };
        async move {
            if let Some((jobs, job)) = waiting? {
                jobs.send(job).await.map_err(|_| StoreError::Closed)?;
            }
            // No answer at all: the thread died before committing the job's group.
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// How many groups the store thread has committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl StoreThread {
    /// Stops taking jobs, runs those already queued, closes the store and waits for the
    /// thread. Blocks: call it where blocking is fine (`spawn_blocking`, or after the runtime).
    /// Fails only if the thread panicked.
    pub fn shutdown(self) -> Result<(), StoreError> {
        // The thread may be gone already (every handle dropped); then there is no one to tell.
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|panic| StoreError::Panicked(panic_message(&*panic)))
    }
}

/// A queued job, its result type erased so that one queue carries every kind.
trait Job: Send {
    /// Runs the job in a savepoint of the open group; the result waits for the commit.
    fn run(self: Box<Self>, store: &Store) -> Box<dyn Ran>;
    /// Answers without running: the group could not begin.
    fn fail(self: Box<Self>, error: Arc<StoreError>);
    /// Must its group's commit wait for the disk?
    fn durable(&self) -> bool;
}

/// A job that ran, waiting for its group's commit before it answers.
trait Ran: Send {
    fn answer(self: Box<Self>, commit: Result<(), &Arc<StoreError>>);
}

struct Pending<F, T> {
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
    durable: bool,
}

impl<F, T> Job for Pending<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, store: &Store) -> Box<dyn Ran> {
        let Pending { f, reply, .. } = *self;
        let result = store.atomically(|| {
            // Caught inside the savepoint, so the panicking job's writes are rolled back.
            panic::catch_unwind(AssertUnwindSafe(|| f(store)))
                .unwrap_or_else(|panic| Err(StoreError::Panicked(panic_message(&*panic))))
        });
        Box::new(Done { result, reply })
    }

    fn fail(self: Box<Self>, error: Arc<StoreError>) {
        // The caller may have stopped waiting; nothing to tell then.
        let _ = self.reply.send(Err(StoreError::CommitFailed(error)));
    }

    fn durable(&self) -> bool {
        self.durable
    }
}

struct Done<T> {
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Ran for Done<T> {
    fn answer(self: Box<Self>, commit: Result<(), &Arc<StoreError>>) {
        let result = match (commit, self.result) {
            (Err(e), Ok(_)) => Err(StoreError::CommitFailed(Arc::clone(e))),
            // A job that failed keeps its own error: it wrote nothing either way.
            (_, result) => result,
        };
        let _ = self.reply.send(result);
    }
}

/// The store thread's loop: a group per batch of waiting jobs, until the queue is closed (stop
/// requested, or every handle dropped) and empty.
fn serve(
    store: &Store,
    mut queued: mpsc::Receiver<Box<dyn Job>>,
    stopped: oneshot::Receiver<()>,
    commits: &AtomicU64,
) {
    let _span = tracing::info_span!("store", path = %store.path().display()).entered();
    let mut stopped = Some(stopped);
    while let Some(first) = next_job(&mut queued, &mut stopped) {
        let mut batch = Vec::with_capacity(MAX_GROUP_JOBS);
        batch.push(first);
        while batch.len() < MAX_GROUP_JOBS {
            match queued.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_group(store, batch, commits);
    }
    tracing::debug!("store thread stopped");
}

/// Blocks for the next job; `None` once the queue is closed and empty. A stop request (or the
/// [`StoreThread`] dropped) closes the queue: queued jobs still run, new ones are refused.
fn next_job(
    queued: &mut mpsc::Receiver<Box<dyn Job>>,
    stopped: &mut Option<oneshot::Receiver<()>>,
) -> Option<Box<dyn Job>> {
    if let Some(stop) = stopped.as_mut() {
        {
            // The stop signal first, so a queue that never empties cannot keep the thread
            // alive. `recv` is cancel-safe: dropping it unfinished loses no job.
            let recv = pin!(queued.recv());
            if let Either::Right((job, _)) = futures::executor::block_on(future::select(stop, recv))
            {
                return job;
            }
        }
        *stopped = None;
        queued.close();
    }
    queued.blocking_recv()
}

/// Runs `batch` as one group and answers every job once the commit's outcome is known.
fn run_group(store: &Store, batch: Vec<Box<dyn Job>>, commits: &AtomicU64) {
    let jobs = batch.len();
    let durable = batch.iter().any(|job| job.durable());
    let mut ran = Vec::with_capacity(jobs);
    let mut waiting = batch.into_iter();
    let run = || ran.extend(waiting.by_ref().map(|job| job.run(store)));
    let committed = if durable {
        store.group(run)
    } else {
        store.lazy_group(run)
    };
    match committed {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(jobs, "store group committed");
            for job in ran {
                job.answer(Ok(()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs, "store group failed; nothing of it was kept");
            let e = Arc::new(e);
            for job in ran {
                job.answer(Err(&e));
            }
            // Not run: the group did not even begin.
            for job in waiting {
                job.fail(Arc::clone(&e));
            }
        }
    }
}

/// The text of a panic's payload, when it has one.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests;
