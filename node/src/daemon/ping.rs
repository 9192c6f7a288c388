//! `natter ping`: runs of probes over the msg protocol, each run paced by its own timer (the
//! daemon's loop sleeps until the next probe due), reporting round trip and path per probe.

use std::time::{Duration, Instant};

use natter_proto::UserName;
use natter_proto::msg::{MsgRequest, MsgResponse};

use super::api::{ControlResponse, PingProbe};
use super::messaging::MsgPending;
use super::{Daemon, LookupFor};
use crate::control::Replier;
use crate::net::OutRequest;

/// A `natter ping` in progress.
#[derive(Debug)]
pub(super) struct PingRun {
    id: u64,
    name: UserName,
    count: u32,
    seq: u32,
    reply: Replier<ControlResponse>,
    /// Probes go out every `interval`, counted from when the previous one was sent.
    interval: Duration,
    next_at: Instant,
    waiting: bool,
}

impl Daemon {
    /// The answer to one probe: reported at once, the next one paced from this one's send.
    pub(super) fn on_pong(
        &mut self,
        run: u64,
        sent: Instant,
        answer: Result<(MsgResponse, &'static str), String>,
    ) {
        let (rtt_ms, path, error) = match answer {
            Ok((MsgResponse::Pong { .. }, path)) => (
                Some(sent.elapsed().as_secs_f64() * 1000.0),
                Some(path.to_string()),
                None,
            ),
            Ok((other, _)) => (None, None, Some(format!("unexpected answer {other:?}"))),
            Err(e) => (None, None, Some(e)),
        };
        if let Some(run) = self.msg.pings.iter_mut().find(|r| r.id == run) {
            run.waiting = false;
            // Paced from when this probe went out: every `interval`, not interval
            // plus the round trip.
            run.next_at = sent + run.interval;
            let failed = rtt_ms.is_none();
            let _ = run.reply.try_send(Ok(ControlResponse::Ping(PingProbe {
                seq: run.seq,
                rtt_ms,
                path,
                error,
            })));
            if failed {
                let name = run.name.clone();
                self.msg.outbox.forget_route(&name);
            }
        }
    }

    pub(super) fn cmd_ping(
        &mut self,
        name: String,
        count: u32,
        interval_ms: Option<u64>,
        reply: Replier<ControlResponse>,
    ) {
        let name = match UserName::parse(&name) {
            Ok(n) => n,
            Err(e) => {
                let _ = reply.try_send(Err(format!("invalid name {name:?}: {e}")));
                return;
            }
        };
        if self.msg.pings.len() >= 8 {
            let _ = reply.try_send(Err("too many pings running".into()));
            return;
        }
        self.msg.next_ping += 1;
        self.msg.pings.push(PingRun {
            id: self.msg.next_ping,
            name,
            count: count.clamp(1, 1000),
            seq: 0,
            reply,
            interval: Duration::from_millis(interval_ms.unwrap_or(1000).clamp(1, 60_000)),
            next_at: Instant::now(),
            waiting: false,
        });
        self.ping_tick();
    }

    /// When the next probe of any ping run is due, if one is.
    pub(super) fn next_ping_at(&self) -> Option<Instant> {
        self.msg
            .pings
            .iter()
            .filter(|r| !r.waiting && r.seq < r.count)
            .map(|r| r.next_at)
            .min()
    }

    /// Ends the ping runs to `name` with one failed probe that says why.
    pub(super) fn end_pings(&mut self, name: &UserName, why: &str) {
        for run in self.msg.pings.iter_mut().filter(|r| &r.name == name) {
            let _ = run.reply.try_send(Ok(ControlResponse::Ping(PingProbe {
                seq: run.seq + 1,
                rtt_ms: None,
                path: None,
                error: Some(why.to_owned()),
            })));
        }
        // Dropping the replier ends the client's stream.
        self.msg.pings.retain(|r| &r.name != name);
    }

    pub(super) fn ping_tick(&mut self) {
        let now = Instant::now();
        // Finished or abandoned runs end their stream by dropping the replier.
        self.msg
            .pings
            .retain(|r| !r.reply.is_closed() && (r.seq < r.count || r.waiting));
        for index in 0..self.msg.pings.len() {
            let run = &self.msg.pings[index];
            if run.waiting || run.next_at > now {
                continue;
            }
            let name = run.name.clone();
            let route = self
                .msg
                .outbox
                .route(&name, tokio::time::Instant::now())
                .cloned();
            let Some(route) = route else {
                // Wait for the route (the lookup's answer ends the run if there is none).
                self.msg.pings[index].next_at = now + Duration::from_millis(100);
                if self.msg.outbox.start_resolving(&name) {
                    self.lookup(name, LookupFor::Route);
                }
                continue;
            };
            let token = self.token();
            let run = &mut self.msg.pings[index];
            run.seq += 1;
            run.waiting = true;
            let request = MsgRequest::Ping {
                cert: self.identity.cert.clone(),
                nonce: u64::from(run.seq),
            };
            let run_id = run.id;
            self.net
                .request(token, route.peer, route.addrs, OutRequest::Msg(request));
            self.msg.pending.insert(
                token,
                MsgPending::Ping {
                    run: run_id,
                    sent: Instant::now(),
                },
            );
        }
    }
}
