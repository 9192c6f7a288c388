//! Answers to the control API. Nothing here waits: replies that need the network are sent
//! later by whoever receives the network's answer.

use natter_proto::UserName;

use super::api::{ControlRequest, ControlResponse, NetcheckView, Observation, StatusView};
use super::leaf::lookup_view;
use super::{Current, Daemon, LookupFor, netcheck};
use crate::control::Replier;

pub(super) fn handle(d: &mut Daemon, request: ControlRequest, reply: Replier<ControlResponse>) {
    match request {
        ControlRequest::Status => {
            let _ = reply.try_send(Ok(ControlResponse::Status(status(d))));
        }
        ControlRequest::Lookup { name } => {
            let name = match UserName::parse(&name) {
                Ok(n) => n,
                Err(e) => {
                    let _ = reply.try_send(Err(format!("invalid name {name:?}: {e}")));
                    return;
                }
            };
            if name == d.identity.user {
                // Oneself needs no network: answer from the record this node would publish.
                if let Some(record) =
                    d.own_record(d.presence, d.attach.primary().or(Some(d.peer_id())))
                {
                    let _ = reply.try_send(Ok(ControlResponse::Lookup(lookup_view(
                        &record,
                        true,
                        &[],
                    ))));
                    return;
                }
            }
            d.lookup(name, LookupFor::Control(reply));
        }
        ControlRequest::Netcheck => {
            let _ = reply.try_send(Ok(ControlResponse::Netcheck(netcheck_view(d))));
        }
        ControlRequest::SetStatus { status } => {
            if status == natter_proto::Status::Offline {
                let _ = reply.try_send(Err("use `natter down` to go offline".into()));
                return;
            }
            d.presence = status;
            d.push_presence();
            match d.role {
                Current::Leaf => d.publish_record(false),
                Current::Superpeer => d.publish_own(status),
            }
            let _ = reply.try_send(Ok(ControlResponse::Done {
                message: format!("status set to {status}"),
            }));
        }
        ControlRequest::Send { to, text, wait } => d.cmd_send(to, text, wait, reply),
        ControlRequest::Inbox { follow } => d.cmd_inbox(follow, reply),
        ControlRequest::Ping {
            name,
            count,
            interval_ms,
        } => d.cmd_ping(name, count, interval_ms, reply),
        ControlRequest::ContactsAdd { name } => d.cmd_contacts(Some(name), None, reply),
        ControlRequest::ContactsRemove { name } => d.cmd_contacts(None, Some(name), reply),
        ControlRequest::ContactsList => d.cmd_contacts(None, None, reply),
        ControlRequest::Edit { edit } => {
            let me = d.identity.user.clone();
            d.store_then(
                move |s| Ok(edit.apply(s, &me)),
                move |_, done| {
                    let answer = match done {
                        Ok(Ok(message)) => Ok(ControlResponse::Done { message }),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = reply.try_send(answer);
                },
            );
        }
        ControlRequest::Down => {
            d.phase("signing off");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            match (d.role, d.attach.primary()) {
                (Current::Leaf, Some(_)) => {
                    d.going_down = Some((deadline, Some(reply)));
                    d.publish_record(true);
                }
                (Current::Superpeer, _) => {
                    d.publish_own(natter_proto::Status::Offline);
                    d.withdraw();
                    // Give the directory a moment to take the offline record.
                    d.going_down = Some((
                        std::time::Instant::now() + std::time::Duration::from_secs(1),
                        Some(reply),
                    ));
                }
                (Current::Leaf, None) => {
                    d.going_down = Some((deadline, Some(reply)));
                    d.finish_down();
                }
            }
            if d.going_down.is_some() {
                d.msg.outbox.stop();
                d.msg.fanout.stop();
                d.push_presence();
            }
        }
    }
}

fn status(d: &Daemon) -> StatusView {
    let superpeers: Vec<String> = [d.attach.primary(), d.attach.standby()]
        .into_iter()
        .flatten()
        .map(|p| p.to_string())
        .collect();
    StatusView {
        user: d.identity.user.to_string(),
        peer_id: d.peer_id().to_string(),
        role: match d.role {
            Current::Leaf => "leaf".into(),
            Current::Superpeer => "superpeer".into(),
        },
        role_reason: d.role_text(),
        reachability: reachability(d).into(),
        superpeers,
        primary: d.attach.primary().map(|p| p.to_string()),
        standby: d.attach.standby().map(|p| p.to_string()),
        primary_since: d
            .attach
            .primary()
            .and_then(|p| d.attached_at.get(&p).copied()),
        standby_since: d
            .attach
            .standby()
            .and_then(|p| d.attached_at.get(&p).copied()),
        home: d.home_since.map(|(p, _)| p.to_string()),
        home_since: d.home_since.map(|(_, at)| at),
        leaves: d.leaves.len(),
        max_leaves: d.leaves.capacity(),
        presence: d.presence.to_string(),
        listen_addrs: d.listeners.iter().map(|a| a.to_string()).collect(),
        external_addrs: d.confirmed.iter().map(|a| a.to_string()).collect(),
        records_stored: d.stats.records_stored,
        records_refused: d.stats.records_refused,
        lookups: d.stats.lookups,
        cert_expires_at: d.identity.cert.expires_at(),
        uptime_secs: d.started.elapsed().as_secs(),
    }
}

fn reachability(d: &Daemon) -> &'static str {
    if !d.confirmed.is_empty() {
        "public"
    } else if d.probes.iter().any(|p| !p.reachable) {
        "private"
    } else {
        "unknown"
    }
}

fn netcheck_view(d: &Daemon) -> NetcheckView {
    let listen: Vec<_> = d.listeners.iter().cloned().collect();
    NetcheckView {
        reachability: reachability(d).into(),
        observed_addrs: d
            .observed
            .iter()
            .map(|(p, a)| Observation {
                observer: p.to_string(),
                observed: a.to_string(),
            })
            .collect(),
        external_addrs: d.confirmed.iter().map(|a| a.to_string()).collect(),
        listen_addrs: listen.iter().map(|a| a.to_string()).collect(),
        probes: d.probes.iter().cloned().collect(),
        nat: netcheck::nat_behaviour(d.observed.values(), &listen, !d.confirmed.is_empty()),
    }
}
