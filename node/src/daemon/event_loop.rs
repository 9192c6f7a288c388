//! The event loop: the one place the daemon's state changes. Each turn takes one thing that
//! is ready (a control request, a network event, a finished store job, a timer) and hands it
//! to the service it concerns; quick control requests (`status`) go first.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{ControlRequest, ControlResponse};
use natter_superpeer::Role;

use super::{Current, Daemon, LoginPending, SUPPLY_POLL, commands, unix_now};
use crate::control::Incoming;
use crate::net::NetEvent;

/// Events the event loop handles before it lets the runtime's other tasks run.
const YIELD_EVERY: u32 = 2;
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    pub(super) async fn run(
        &mut self,
        [mut quick, mut control]: [mpsc::Receiver<Incoming<ControlRequest, ControlResponse>>; 2],
        mut events: mpsc::Receiver<NetEvent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.phase(&format!(
            "natter {} as {} ({})",
            env!("CARGO_PKG_VERSION"),
            self.identity.user,
            self.peer_id()
        ));
        self.phase(&format!("logging in to {}", self.identity.login));
        self.renew();
        self.phase("probing reachability (AutoNAT v2)");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handled = 0u32;
        loop {
            // A busy loop would keep the thread until tokio's budget runs out (about a hundred
            // events); giving way every few events lets the control socket's tasks accept,
            // read and answer in between.
            handled += 1;
            if handled == YIELD_EVERY {
                handled = 0;
                tokio::task::yield_now().await;
            }
            // Quick control requests (`status`) go before whatever else is ready.
            while let Ok(incoming) = quick.try_recv() {
                self.on_control(incoming);
            }
            // Each ping run has its own pace, not the tick's.
            let ping_at = self.next_ping_at();
            let gathered_at = self.lookups.deadline();
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.phase("stopping");
                    break;
                }
                Some(incoming) = quick.recv() => self.on_control(incoming),
                Some(incoming) = control.recv() => self.on_control(incoming),
                event = events.recv() => match event {
                    Some(event) => self.on_net_event(event),
                    None => anyhow::bail!("the network task stopped"),
                },
                () = self.net.flush(), if self.net.has_backlog() => {}
                Some(then) = self.store_jobs.next(), if !self.store_jobs.is_empty() => then(self),
                () = sleep_until_or_never(ping_at), if ping_at.is_some() => self.ping_tick(),
                () = sleep_until_or_never(gathered_at), if gathered_at.is_some() => {
                    self.on_lookups_gathered();
                }
                _ = tick.tick() => {
                    self.on_tick();
                    if let Some((deadline, _)) = &self.going_down
                        && Instant::now() >= *deadline
                    {
                        self.finish_down();
                        break;
                    }
                }
            }
            if self
                .going_down
                .as_ref()
                .is_some_and(|(_, reply)| reply.is_none())
            {
                break;
            }
        }
        Ok(())
    }

    fn on_tick(&mut self) {
        self.evaluate_role();
        self.reprobe_tick();
        self.gather_tick();
        match self.role {
            Current::Leaf => self.leaf_tick(),
            Current::Superpeer => self.superpeer_tick(),
        }
        self.revocation_tick();
        self.messaging_tick();
        if let Some(m) = &self.metrics {
            m.superpeer.set(i64::from(self.role == Current::Superpeer));
            m.leaves.set(self.leaves.len() as i64);
            m.records_stored.set(self.stats.records_stored as i64);
            m.records_refused.set(self.stats.records_refused as i64);
            m.lookups.set(self.stats.lookups as i64);
            self.store_then(
                |s| s.outbox_len(),
                |d, n| {
                    if let (Some(m), Ok(n)) = (&d.metrics, n) {
                        m.outbox.set(n as i64);
                    }
                },
            );
        }
        // A reachable leaf that may promote learns whether the network needs it (its
        // superpeers may have filled up since it logged in).
        if self.config.role == Role::Auto
            && self.role == Current::Leaf
            && !self.confirmed.is_empty()
            && self.supply_asked.is_none_or(|t| t.elapsed() > SUPPLY_POLL)
        {
            self.supply_asked = Some(Instant::now());
            if self.supply.is_some() {
                self.bootstrap();
            }
        }
        // Renew at 80% of the certificate lifetime; after a failure, retry every 30 s.
        let cert = &self.identity.cert;
        let lifetime = cert.expires_at().saturating_sub(cert.issued_at());
        let renew_at = cert.issued_at() + lifetime * 4 / 5;
        let pending = self
            .login_pending
            .values()
            .any(|p| matches!(p, LoginPending::Renew));
        if unix_now() >= renew_at
            && !pending
            && self
                .renew_failed_at
                .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
        {
            self.renew();
        }
    }

    fn on_control(&mut self, incoming: Incoming<ControlRequest, ControlResponse>) {
        let Incoming { request, reply } = incoming;
        commands::handle(self, request, reply);
    }
}
