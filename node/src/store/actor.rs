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
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::time::{Duration, Instant};

    use futures::future::join_all;

    use super::super::test_util::*;
    use super::super::{OutgoingMessage, QueuedMessage};
    use super::*;

    fn msg(n: u32, to: &str) -> OutgoingMessage {
        OutgoingMessage {
            id: ulid(n),
            to: to.into(),
            text: format!("message {n}"),
            sent_at_ms: 1_000 + u64::from(n),
        }
    }

    /// Jobs waiting in the queue.
    fn queued(handle: &StoreHandle) -> usize {
        handle.jobs.max_capacity() - handle.jobs.capacity()
    }

    /// Occupies the store thread until the returned sender is used or dropped, so that the
    /// jobs queued meanwhile form one group. Returns once the gate job runs (in a group of its
    /// own).
    async fn close_gate(handle: &StoreHandle) -> std_mpsc::SyncSender<()> {
        let (open, gate) = std_mpsc::sync_channel::<()>(1);
        let (started, running) = oneshot::channel();
        // Queued now; its answer is not needed.
        drop(handle.submit(move |_| {
            let _ = started.send(());
            let _ = gate.recv();
            Ok(())
        }));
        running.await.unwrap();
        open
    }

    #[tokio::test]
    async fn results_come_back() {
        let (_dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 16).unwrap();
        let q = handle.run(|s| s.enqueue(&msg(1, "alice"))).await.unwrap();
        assert_eq!(q.conv_seq, 1);
        let queued = handle.run(|s| s.queued_for("alice")).await.unwrap();
        assert_eq!(queued, [q]);
        let err = handle.run(|s| s.add_contact("Alice")).await.unwrap_err();
        assert!(matches!(err, StoreError::BadName { .. }), "{err}");
        assert_eq!(handle.commits(), 3);
        thread.shutdown().unwrap();
    }

    /// The `synchronous` setting a job runs under (1 = NORMAL, 2 = FULL).
    fn synchronous(s: &Store) -> Result<i64, StoreError> {
        Ok(s.conn().query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    /// A lazy job's group commits without waiting for the disk, unless a durable job shares
    /// the group; a durable job alone is back to waiting for it.
    #[tokio::test]
    async fn only_groups_of_lazy_jobs_skip_the_fsync() {
        let (_dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 16).unwrap();
        assert_eq!(handle.submit_lazy(synchronous).await.unwrap(), 1, "NORMAL");
        assert_eq!(handle.run(synchronous).await.unwrap(), 2, "FULL");
        let gate = close_gate(&handle).await;
        let lazy = handle.submit_lazy(synchronous);
        let durable = handle.submit(synchronous);
        gate.send(()).unwrap();
        assert_eq!(
            lazy.await.unwrap(),
            2,
            "a lazy job beside a durable one waits too"
        );
        assert_eq!(durable.await.unwrap(), 2);
        let id = msg(1, "alice");
        handle.submit_lazy(move |s| s.enqueue(&id)).await.unwrap();
        assert_eq!(
            handle.run(|s| s.queued_for("alice")).await.unwrap().len(),
            1
        );
        thread.shutdown().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_share_one_commit() {
        let (dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 256).unwrap();
        let gate = close_gate(&handle).await;
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.run(move |s| s.enqueue(&msg(n, "alice"))).await })
            })
            .collect();
        while queued(&handle) < 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gate.send(()).unwrap();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap().conv_seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        assert_eq!(
            handle.commits(),
            2,
            "the gate's group, then all 200 together"
        );
        drop(handle);
        thread.shutdown().unwrap();
        assert_eq!(reopen_dir(&dir).outbox_len().unwrap(), 200);
    }

    #[tokio::test]
    async fn a_failing_job_does_not_undo_the_others() {
        let (dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 16).unwrap();
        let gate = close_gate(&handle).await;
        let first = handle.submit(|s| s.enqueue(&msg(1, "alice")));
        let duplicate = handle.submit(|s| s.enqueue(&msg(1, "alice")));
        let second = handle.submit(|s| s.enqueue(&msg(2, "alice")));
        let half_done = handle.submit(|s| {
            s.enqueue(&msg(3, "alice"))?;
            s.add_contact("Not A Name")
        });
        let panicking = handle.submit(|s| -> Result<(), StoreError> {
            s.enqueue(&msg(4, "alice"))?;
            panic!("bug in a job")
        });
        gate.send(()).unwrap();
        assert_eq!(first.await.unwrap().conv_seq, 1);
        assert!(matches!(
            duplicate.await,
            Err(StoreError::DuplicateId(id)) if id == ulid(1)
        ));
        assert_eq!(second.await.unwrap().conv_seq, 2);
        assert!(matches!(half_done.await, Err(StoreError::BadName { .. })));
        let err = panicking.await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Panicked(m) if m == "bug in a job"),
            "{err}"
        );
        assert_eq!(handle.commits(), 2);
        // The failed jobs left nothing, not even a sequence number; the thread still serves.
        let next = handle.run(|s| s.enqueue(&msg(5, "alice"))).await;
        assert_eq!(next.unwrap().conv_seq, 3);
        thread.shutdown().unwrap();
        let ids: Vec<String> = reopen_dir(&dir)
            .queued_for("alice")
            .unwrap()
            .into_iter()
            .map(|m: QueuedMessage| m.id)
            .collect();
        assert_eq!(ids, [ulid(1), ulid(2), ulid(5)]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_job_of_the_group() {
        let (dir, store) = fresh();
        // A deferred foreign key is checked only at COMMIT.
        store
            .conn()
            .execute_batch(
                "PRAGMA foreign_keys = ON;
                 CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (parent INTEGER
                     REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .unwrap();
        let (handle, thread) = StoreHandle::spawn(store, 16).unwrap();
        let gate = close_gate(&handle).await;
        let write = handle.submit(|s| s.enqueue(&msg(1, "alice")));
        let read = handle.submit(|s| s.outbox_len());
        let dangling = handle.submit(|s| {
            s.conn()
                .execute_batch("INSERT INTO child (parent) VALUES (42)")?;
            Ok(())
        });
        gate.send(()).unwrap();
        for err in [
            write.await.map(drop).unwrap_err(),
            read.await.map(drop).unwrap_err(),
            dangling.await.unwrap_err(),
        ] {
            assert!(matches!(&err, StoreError::CommitFailed(_)), "{err}");
            assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        }
        assert_eq!(handle.commits(), 1, "only the gate's group");
        // Nothing of the group was kept, and the next group commits.
        assert_eq!(handle.run(|s| s.outbox_len()).await.unwrap(), 0);
        assert_eq!(
            handle
                .run(|s| s.enqueue(&msg(1, "alice")))
                .await
                .unwrap()
                .conv_seq,
            1
        );
        thread.shutdown().unwrap();
        assert_eq!(reopen_dir(&dir).outbox_len().unwrap(), 1);
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_shutdown_and_later_jobs_are_refused() {
        let (dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 8).unwrap();
        let acks =
            join_all((0..50).map(|n| handle.submit(move |s| s.enqueue(&msg(n, "bob"))))).await;
        assert!(acks.iter().all(Result::is_ok));
        thread.shutdown().unwrap();
        assert!(matches!(
            handle.run(|s| s.outbox_len()).await,
            Err(StoreError::Closed)
        ));
        let store = reopen_dir(&dir);
        assert_eq!(store.outbox_len().unwrap(), 50);
        assert_eq!(store.queued_for("bob").unwrap().len(), 50);
    }

    #[tokio::test]
    async fn dropping_every_handle_ends_the_thread() {
        let (_dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 4).unwrap();
        handle.run(|s| s.add_contact("alice")).await.unwrap();
        drop(handle);
        wait_finished(&thread).await;
        thread.shutdown().unwrap();
    }

    #[tokio::test]
    async fn dropping_the_thread_runs_what_is_queued_then_refuses() {
        let (dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 4).unwrap();
        let gate = close_gate(&handle).await;
        let queued_job = handle.submit(|s| s.add_contact("alice"));
        // Keep a way to watch the thread end; dropping StoreThread must not wait for it.
        let StoreThread { stop, thread } = thread;
        drop(stop);
        gate.send(()).unwrap();
        assert!(queued_job.await.unwrap());
        while !thread.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(matches!(
            handle.run(|s| s.contacts()).await,
            Err(StoreError::Closed)
        ));
        assert_eq!(reopen_dir(&dir).contacts().unwrap(), ["alice"]);
    }

    /// Prints how well grouping works under load; asserts correctness only, never timings.
    /// `cargo test -p natter-node --lib store::actor::tests::measure -- --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measure_group_commit() {
        const JOBS: u32 = 1000;
        const TASKS: usize = 16;
        let (dir, store) = fresh();
        let (handle, thread) = StoreHandle::spawn(store, 256).unwrap();
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for n in (0..JOBS).skip(t).step_by(TASKS) {
                        handle
                            .run(move |s| s.enqueue(&msg(n, "carol")))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in join_all(tasks).await {
            task.unwrap();
        }
        let grouped = started.elapsed();
        let jobs = u64::from(JOBS);
        let commits = handle.commits();
        assert!(commits < jobs, "{commits} commits for {jobs} jobs");
        drop(handle);
        thread.shutdown().unwrap();
        assert_eq!(reopen_dir(&dir).outbox_len().unwrap(), 1000);

        // The same writes one transaction each, as the daemon did before.
        let store = reopen_dir(&dir);
        let started = Instant::now();
        for n in 0..100 {
            store.enqueue(&msg(100_000 + n, "dave")).unwrap();
        }
        let single = started.elapsed() / 100;
        println!(
            "group commit: {jobs} enqueues from {TASKS} tasks: {commits} commits \
             ({:.1} jobs/commit) in {grouped:?} ({:?}/job); one transaction per write: {single:?}/write",
            jobs as f64 / commits as f64,
            grouped / JOBS,
        );
    }

    async fn wait_finished(thread: &StoreThread) {
        while !thread.thread.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn reopen_dir(dir: &tempfile::TempDir) -> Store {
        Store::open(dir.path()).unwrap()
    }
}
