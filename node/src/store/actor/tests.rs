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
    let acks = join_all((0..50).map(|n| handle.submit(move |s| s.enqueue(&msg(n, "bob"))))).await;
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
