//! What a lookup found, for whoever asked: `natter lookup`, a `send` checking that its
//! recipient exists, the outbox looking for a route, a presence push, the fan-out learning a
//! user's devices. Every lookup of this node ends in [`Daemon::on_lookup_result`].

use libp2p::{Multiaddr, PeerId};
use natter_proto::{PresenceRecord, UserName};
use tokio::time::Instant as TokioInstant;

use super::api::ControlResponse;
use super::leaf::lookup_view;
use super::{Daemon, LookupFor, LookupOutcome, unix_now};

/// The route a lookup found, if its record is live and its home confirmed the device.
fn live_route(outcome: &LookupOutcome) -> Option<(PeerId, Vec<Multiaddr>)> {
    match outcome {
        LookupOutcome::Found {
            record, confirmed, ..
        } if *confirmed && record.is_live(unix_now()) => Some(route_of(record)),
        _ => None,
    }
}

/// Where a record says its device is: the device's PeerId, direct addresses first.
pub(super) fn route_of(record: &PresenceRecord) -> (PeerId, Vec<Multiaddr>) {
    let addrs = record
        .body
        .direct_addrs
        .iter()
        .chain(&record.body.relay_addrs)
        .filter_map(|a| a.parse().ok())
        .collect();
    (record.body.cert.peer_id(), addrs)
}

impl Daemon {
    /// Every lookup ends here, whatever it was for.
    pub(super) fn on_lookup_result(
        &mut self,
        name: UserName,
        purpose: LookupFor,
        outcome: LookupOutcome,
    ) {
        if let LookupOutcome::Found { record, .. } = &outcome {
            self.note_seen(record);
        }
        self.learn_devices(&name, &outcome);
        match purpose {
            LookupFor::Control(reply) => {
                let view = match outcome {
                    LookupOutcome::Found {
                        record,
                        confirmed,
                        others,
                    } => Ok(lookup_view(&record, confirmed, &others)),
                    LookupOutcome::NotFound { exists: Some(true) } => {
                        // Registered, and no record in the directory: offline (or signed on
                        // seconds ago), last seen when this node saw the user last.
                        let user = name.to_string();
                        self.store_then(
                            move |s| s.last_seen(&user),
                            move |_, seen| {
                                let view = super::presence::not_found_view(
                                    &name,
                                    "offline",
                                    seen.ok().flatten(),
                                );
                                let _ = reply.try_send(Ok(ControlResponse::Lookup(view)));
                            },
                        );
                        return;
                    }
                    LookupOutcome::NotFound { .. } => {
                        Ok(super::presence::not_found_view(&name, "unknown", None))
                    }
                    LookupOutcome::Failed(e) => Err(e),
                };
                let _ = reply.try_send(view.map(ControlResponse::Lookup));
            }
            LookupFor::Send => {
                match (live_route(&outcome), outcome) {
                    (
                        _,
                        LookupOutcome::NotFound {
                            exists: Some(false),
                        },
                    ) => self.msg.outbox.user_unknown(&name),
                    (Some((peer, addrs)), _) => {
                        self.msg
                            .outbox
                            .route_found(name, peer, addrs, TokioInstant::now());
                    }
                    _ => self.msg.outbox.check_done(&name),
                }
                self.run_outbox();
            }
            LookupFor::Route => {
                match live_route(&outcome) {
                    Some((peer, addrs)) => {
                        self.msg
                            .outbox
                            .route_found(name, peer, addrs, TokioInstant::now());
                    }
                    None => {
                        self.msg
                            .outbox
                            .route_missing(name.clone(), "recipient is offline");
                        self.end_pings(
                            &name,
                            &format!("{name} is offline or unknown: no route to their device"),
                        );
                    }
                }
                self.run_outbox();
            }
            LookupFor::Devices => {}
            LookupFor::Push => {
                if let LookupOutcome::Found {
                    record,
                    confirmed: true,
                    ..
                } = outcome
                {
                    self.learn_route(&name, &record);
                    self.push_presence_to(&name);
                }
            }
        }
    }

    pub(super) fn learn_route(&mut self, name: &UserName, record: &PresenceRecord) {
        let (peer, addrs) = route_of(record);
        self.msg
            .outbox
            .learn_route(name.clone(), peer, addrs, TokioInstant::now());
    }
}
