//! Users on several devices, carried out: the fan-out service's actions (`fanout.rs` decides),
//! the devices lookups tell of, and the copies this user's other devices send here.

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use natter_proto::msg::{MAX_BATCH, MsgRefusal, MsgResponse};
use natter_proto::{PresenceRecord, UserName};
use tokio::time::Instant as TokioInstant;

use super::fanout::{DeviceRoute, FanAction, FanOutcome};
use super::inbox;
use super::messaging::{MsgPending, now_ms};
use super::{Daemon, LookupFor, LookupOutcome, outbox, unix_now};
use crate::net::Command;
use crate::store::{CopyMessage, FANOUT_TTL_MS, FanoutTarget};

/// Devices with due rows a read takes at most; the next read takes the others.
const MAX_DEVICES_PER_READ: usize = 64;

/// A device as a record in the directory describes it.
pub(super) fn device_route(record: &PresenceRecord, now: u64) -> DeviceRoute {
    let (peer, addrs) = super::lookup_result::route_of(record);
    DeviceRoute {
        peer,
        addrs,
        live: record.is_live(now),
        status: record.body.status,
    }
}

impl Daemon {
    /// The further devices of `owner` but `except` a message goes to: those the fan-out
    /// knows, or one row naming none while it does not know them yet.
    pub(super) fn further_targets(
        &self,
        owner: &UserName,
        except: Option<PeerId>,
    ) -> Vec<FanoutTarget> {
        match self
            .msg
            .fanout
            .further_devices(owner, except, TokioInstant::now())
        {
            Some(devices) => devices
                .into_iter()
                .map(|d| FanoutTarget {
                    owner: owner.to_string(),
                    device: Some(d.to_string()),
                })
                .collect(),
            None => vec![FanoutTarget {
                owner: owner.to_string(),
                device: None,
            }],
        }
    }

    /// What any lookup says about `name`'s devices, for the fan-out. No record at all is
    /// taken as "not known", not as "no devices": this node's own record may not be in the
    /// directory yet (it just started), and rows resolved against an empty list would be
    /// gone; they wait instead, and are given up after 7 days.
    pub(super) fn learn_devices(&mut self, name: &UserName, outcome: &LookupOutcome) {
        let now = unix_now();
        let devices = match outcome {
            LookupOutcome::Found { record, others, .. } => std::iter::once(record)
                .chain(others)
                .map(|r| device_route(r, now))
                .collect(),
            LookupOutcome::NotFound { .. } => {
                self.msg
                    .fanout
                    .lookup_failed(name, "no record in the directory");
                self.run_fanout();
                return;
            }
            LookupOutcome::Failed(why) => {
                self.msg.fanout.lookup_failed(name, why);
                self.run_fanout();
                return;
            }
        };
        self.msg
            .fanout
            .learned(name.clone(), devices, TokioInstant::now());
        self.run_fanout();
    }

    /// Carries out what the fan-out decided.
    pub(super) fn run_fanout(&mut self) {
        while let Some(action) = self.msg.fanout.next_action() {
            match action {
                FanAction::ReadDue => {
                    let now = now_ms();
                    self.store_then(
                        move |s| s.fanout_due(now, MAX_DEVICES_PER_READ, MAX_BATCH),
                        |d, due| {
                            let due = due
                                .map_err(
                                    |e| tracing::error!(error = %e, "reading the fan-out failed"),
                                )
                                .ok();
                            d.msg.fanout.due_read(due, TokioInstant::now());
                            d.run_fanout();
                        },
                    );
                }
                FanAction::Lookup(name) => self.lookup(name, LookupFor::Devices),
                FanAction::Wake { owner, device } => {
                    tracing::debug!(%owner, %device, "a further device is back");
                    self.store_write_lazy("waking deliveries to a further device", move |s| {
                        s.fanout_wake(owner.as_str(), &device, now_ms()).map(drop)
                    });
                }
                FanAction::Expire => {
                    let before = now_ms().saturating_sub(FANOUT_TTL_MS);
                    self.store_write_lazy("giving up further devices", move |s| {
                        let given_up = s.fanout_expire(before)?;
                        if given_up > 0 {
                            tracing::info!(
                                given_up,
                                "messages to further devices not reached within 7 days given up"
                            );
                        }
                        Ok(())
                    });
                }
                FanAction::Resolve { owner, devices } => {
                    let me = self.peer_id().to_string();
                    let devices: Vec<String> = devices.iter().map(PeerId::to_string).collect();
                    self.store_write_lazy("resolving further devices", move |s| {
                        s.fanout_resolve(owner.as_str(), &devices, &me).map(drop)
                    });
                }
                FanAction::Deliver {
                    owner,
                    peer,
                    addrs,
                    messages,
                } => {
                    tracing::debug!(%owner, %peer, messages = messages.len(), "to a further device");
                    self.deliver(peer, addrs, messages, MsgPending::Fanout { peer });
                }
                FanAction::Done {
                    owner,
                    peer,
                    ids,
                    path,
                } => {
                    let at = now_ms();
                    self.store_write_lazy("recording deliveries to further devices", move |s| {
                        s.fanout_done(owner.as_str(), &peer.to_string(), &ids, path, at)
                            .map(drop)
                    });
                }
                FanAction::Postpone { owner, device, why } => {
                    self.store_write_lazy("postponing deliveries to a further device", move |s| {
                        s.fanout_postpone(owner.as_str(), &device, now_ms(), outbox::BACKOFF, &why)
                            .map(drop)
                    });
                }
                FanAction::Drop {
                    owner,
                    peer,
                    ids,
                    why,
                } => {
                    tracing::warn!(%owner, %peer, reason = %why, "a further device refused messages for good");
                    self.store_write("giving up messages to a further device", move |s| {
                        s.fanout_drop(owner.as_str(), &peer.to_string(), &ids)
                            .map(drop)
                    });
                }
            }
        }
    }

    /// A further device answered.
    pub(super) fn on_fanout_response(
        &mut self,
        peer: PeerId,
        answer: Result<(MsgResponse, &'static str), String>,
    ) {
        let outcome = match answer {
            Ok((MsgResponse::Stored { .. }, path)) => FanOutcome::Stored(path),
            Ok((
                MsgResponse::Partial {
                    accepted, message, ..
                },
                path,
            )) => FanOutcome::Partial {
                accepted: accepted as usize,
                path,
                why: message,
            },
            Ok((
                MsgResponse::Refused {
                    code: MsgRefusal::BadMessage | MsgRefusal::WrongRecipient,
                    message,
                },
                _,
            )) => FanOutcome::RefusedForGood(message),
            Ok((MsgResponse::Refused { message, .. }, _)) => FanOutcome::Failed(message),
            Ok((other, _)) => FanOutcome::Failed(format!("unexpected answer {other:?}")),
            Err(e) => FanOutcome::Failed(e),
        };
        self.msg.fanout.answered(peer, outcome, TokioInstant::now());
        self.run_fanout();
    }

    /// Copies of what another device of this user sent: kept, then acknowledged.
    pub(super) fn keep_copies(
        &mut self,
        peer: PeerId,
        copies: Vec<CopyMessage>,
        channel: ResponseChannel<MsgResponse>,
    ) {
        let device = peer.to_string();
        self.store_then(
            move |s| s.receive_copies(&device, &copies),
            move |d, receipts| {
                let (response, stored) = inbox::stored_answer(&receipts);
                if stored > 0 {
                    tracing::debug!(%peer, stored, "copies from another device of this user");
                }
                d.net.send(Command::RespondMsg { channel, response });
            },
        );
    }
}
