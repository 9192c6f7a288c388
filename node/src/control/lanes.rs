//! The lanes a control server hands requests on: one for every request in order, and
//! optionally a quick one for requests the daemon answers at once.

use std::fmt;

use tokio::sync::mpsc;

use super::server::Incoming;

/// Where [`ControlServer::serve`](super::ControlServer::serve) hands the requests it reads.
/// A daemon can give the requests it answers at once from its own state (`status`) a lane of
/// their own, so that they never queue behind a burst of slower ones (a thousand `send`s
/// waiting for the event loop).
pub struct Lanes<Req, Resp> {
    ordinary: mpsc::Sender<Incoming<Req, Resp>>,
    quick: Option<QuickLane<Req, Resp>>,
}

struct QuickLane<Req, Resp> {
    requests: mpsc::Sender<Incoming<Req, Resp>>,
    takes: fn(&Req) -> bool,
}

impl<Req, Resp> Lanes<Req, Resp> {
    /// Every request on one lane, in the order clients sent them.
    pub fn new(ordinary: mpsc::Sender<Incoming<Req, Resp>>) -> Self {
        Self {
            ordinary,
            quick: None,
        }
    }

    /// Requests for which `takes` is true go to `quick` instead.
    pub fn with_quick(
        mut self,
        quick: mpsc::Sender<Incoming<Req, Resp>>,
        takes: fn(&Req) -> bool,
    ) -> Self {
        self.quick = Some(QuickLane {
            requests: quick,
            takes,
        });
        self
    }

    pub(super) fn lane_for(&self, request: &Req) -> &mpsc::Sender<Incoming<Req, Resp>> {
        match &self.quick {
            Some(quick) if (quick.takes)(request) => &quick.requests,
            _ => &self.ordinary,
        }
    }
}

impl<Req, Resp> fmt::Debug for Lanes<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lanes")
            .field("quick", &self.quick.is_some())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> From<mpsc::Sender<Incoming<Req, Resp>>> for Lanes<Req, Resp> {
    fn from(ordinary: mpsc::Sender<Incoming<Req, Resp>>) -> Self {
        Self::new(ordinary)
    }
}

// Manual impl: deriving would require `Req: Clone` and `Resp: Clone` for no reason.
impl<Req, Resp> Clone for Lanes<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            ordinary: self.ordinary.clone(),
            quick: self.quick.as_ref().map(|q| QuickLane {
                requests: q.requests.clone(),
                takes: q.takes,
            }),
        }
    }
}
