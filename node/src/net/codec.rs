//! The msg protocol's codec: JSON, as libp2p's, but a request is read against a byte budget
//! shared by every connection, so that peers who open many streams and stall each one with
//! most of a maximal request (a request is read whole before its certificate can be checked)
//! cost at most [`MSG_READ_BUDGET`] together, whoever and however many they are. A request
//! that finds the budget spent is dropped (its stream closes; an honest sender retries); the
//! number of such streams per connection is bounded by the behaviour's stream limit.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::prelude::*;
use libp2p::StreamProtocol;
use libp2p::request_response;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of msg requests being read at once, from all peers together.
pub(crate) const MSG_READ_BUDGET: u64 = 16 * 1024 * 1024;
/// Read at a time: the budget is taken in steps of at most this.
const CHUNK: usize = 16 * 1024;

/// Bytes that may be held by requests being read; shared by every clone of the codec.
#[derive(Debug, Clone)]
pub(crate) struct ReadBudget {
    left: Arc<AtomicU64>,
}

impl ReadBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        Self {
            left: Arc::new(AtomicU64::new(bytes)),
        }
    }

    /// Bytes not taken.
    #[cfg(test)]
    fn left(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }
}

/// What one read holds of the budget; given back when the read ends, however it ends.
struct Taken<'a> {
    budget: &'a ReadBudget,
    bytes: u64,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// JSON request-response codec whose requests are read within a [`ReadBudget`].
pub(crate) struct BudgetedJson<Req, Resp> {
    budget: ReadBudget,
    request_max: u64,
    response_max: u64,
    types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for BudgetedJson<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            budget: self.budget.clone(),
            request_max: self.request_max,
            response_max: self.response_max,
            types: PhantomData,
        }
    }
}

impl<Req, Resp> BudgetedJson<Req, Resp> {
    pub(crate) fn new(budget: ReadBudget, request_max: u64, response_max: u64) -> Self {
        Self {
            budget,
            request_max,
            response_max,
            types: PhantomData,
        }
    }
}

/// Reads to the end of `io`, at most `max` bytes, each byte taken from `budget` first.
async fn read_budgeted<T>(io: &mut T, max: u64, budget: &ReadBudget) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut taken = Taken { budget, bytes: 0 };
    let mut data = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(data);
        }
        let n64 = n as u64;
        if taken.bytes + n64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request over {max} bytes"),
            ));
        }
        if !budget.take(n64) {
            tracing::debug!("msg request dropped: the read budget is spent");
            return Err(io::Error::other(
                "too many requests being read; retry later",
            ));
        }
        taken.bytes += n64;
        data.extend_from_slice(&chunk[..n]);
    }
}

impl<Req, Resp> request_response::Codec for BudgetedJson<Req, Resp>
where
    Req: Send + Serialize + DeserializeOwned,
    Resp: Send + Serialize + DeserializeOwned,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let data = read_budgeted(io, self.request_max, &self.budget).await?;
        Ok(serde_json::from_slice(&data)?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        // Answers to this node's own requests, to peers it chose: only the size bound.
        let mut data = Vec::new();
        io.take(self.response_max).read_to_end(&mut data).await?;
        Ok(serde_json::from_slice(&data)?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&serde_json::to_vec(&req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&serde_json::to_vec(&resp)?).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use request_response::Codec as _;

    use super::*;

    type Codec = BudgetedJson<serde_json::Value, serde_json::Value>;

    fn protocol() -> StreamProtocol {
        StreamProtocol::new("/test")
    }

    #[test]
    fn a_request_is_read_within_the_budget_and_gives_it_back() {
        futures::executor::block_on(async {
            let budget = ReadBudget::new(64 * 1024);
            let mut codec = Codec::new(budget.clone(), 1024 * 1024, 1024);
            let small = serde_json::to_vec(&serde_json::json!({"text": "x".repeat(1000)})).unwrap();
            let read = codec
                .read_request(&protocol(), &mut futures::io::Cursor::new(small))
                .await
                .unwrap();
            assert_eq!(read["text"].as_str().unwrap().len(), 1000);
            assert_eq!(budget.left(), 64 * 1024);
            // Larger than what is left of the budget: refused, and nothing stays taken.
            let big =
                serde_json::to_vec(&serde_json::json!({"text": "x".repeat(100_000)})).unwrap();
            let refused = codec
                .read_request(&protocol(), &mut futures::io::Cursor::new(big))
                .await;
            assert!(refused.is_err());
            assert_eq!(budget.left(), 64 * 1024);
        });
    }

    #[test]
    fn stalled_requests_hold_at_most_the_budget() {
        futures::executor::block_on(async {
            let budget = ReadBudget::new(100_000);
            // Reads that never end hold what they read: the second one cannot take more than
            // what the first left.
            let mut stalled = [Stalled::new(60_000), Stalled::new(60_000)];
            let mut codec = Codec::new(budget.clone(), 1024 * 1024, 1024);
            let mut codec2 = codec.clone();
            let [a, b] = &mut stalled;
            let p = protocol();
            let mut first = Box::pin(codec.read_request(&p, a));
            assert!(futures::poll!(first.as_mut()).is_pending());
            assert_eq!(budget.left(), 40_000);
            let second = codec2.read_request(&protocol(), b).await;
            assert!(second.is_err());
            assert_eq!(budget.left(), 40_000);
            drop(first);
            assert_eq!(budget.left(), 100_000);
        });
    }

    /// A stream that yields `len` bytes, then waits forever: a sender that stalls.
    struct Stalled {
        left: usize,
    }

    impl Stalled {
        fn new(len: usize) -> Self {
            Self { left: len }
        }
    }

    impl AsyncRead for Stalled {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            if self.left == 0 {
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.left);
            buf[..n].fill(b' ');
            self.left -= n;
            std::task::Poll::Ready(Ok(n))
        }
    }
}
