//! Kademlia in the network task: records peers store here go up to the daemon (which checks
//! them), and a query's records found and its end go back with the caller's token.

use libp2p::kad;

use super::{NetEvent, Network};

impl Network {
    pub(super) fn on_kad_event(&mut self, event: kad::Event) -> Option<NetEvent> {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => Some(NetEvent::KadPut { source, record }),
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
                let token = *self.queries.get(&id)?;
                match result {
                    kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                        if step.last {
                            self.queries.remove(&id);
                            // The last step's value, then the end.
                            self.ready.push_back(NetEvent::KadFound {
                                token,
                                value: found.record.value,
                            });
                            return Some(NetEvent::KadDone(token));
                        }
                        Some(NetEvent::KadFound {
                            token,
                            value: found.record.value,
                        })
                    }
                    _ if step.last => {
                        self.queries.remove(&id);
                        Some(NetEvent::KadDone(token))
                    }
                    kad::QueryResult::GetRecord(Err(_)) => {
                        self.queries.remove(&id);
                        Some(NetEvent::KadDone(token))
                    }
                    _ => None,
                }
            }
            other => {
                tracing::trace!(?other, "kad event");
                None
            }
        }
    }
}
