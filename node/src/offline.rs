//! What the CLI does with the local store itself, without the daemon: reading the inbox and
//! the outbox, editing contacts, and queueing a message while `natter up` is not running (it
//! goes out when the daemon starts, like any queued message).
//!
//! The checks and sentences are the daemon's (`daemon::messaging`), so a command behaves the
//! same whether the daemon is running or not, except that a message to a user who does not
//! exist is only found out once the daemon runs.

use natter_proto::{UserName, msg};
use serde::{Deserialize, Serialize};

use crate::daemon::api::{InboxEdit, InboxItem, SendView};
use crate::home::{Home, HomeError, Identity};
use crate::store::{FanoutTarget, OutgoingMessage, QueuedMessage, Store, StoreError};
use crate::ulid::UlidGenerator;

mod history;
pub use history::{DeviceItem, HistoryItem};

/// Messages read from the store at a time by `natter inbox`.
pub const INBOX_PAGE: usize = 500;

/// Most ids one `inbox delete` or `outbox drop` takes.
pub const MAX_DELETE_IDS: usize = 1000;

/// Most contact requests `contacts requests` lists.
pub const MAX_CONTACT_REQUESTS: usize = 1000;

fn check_ids(ids: &[String]) -> Result<(), OfflineError> {
    if ids.is_empty() || ids.len() > MAX_DELETE_IDS {
        return Err(OfflineError::Refused(format!(
            "give 1 to {MAX_DELETE_IDS} message ids"
        )));
    }
    Ok(())
}

impl InboxEdit {
    /// Carries the edit out on `store`, of `me`'s home.
    pub fn apply(&self, store: &Store, me: &UserName) -> Result<String, OfflineError> {
        match self {
            InboxEdit::Delete { ids } => {
                check_ids(ids)?;
                let n = store.delete_messages(ids)?;
                if n == 0 {
                    return Err(OfflineError::Refused(
                        "no message with that id is in the inbox".into(),
                    ));
                }
                Ok(format!("deleted {n} message(s)"))
            }
            InboxEdit::Clear { from } => {
                let from = from.as_deref().map(parse).transpose()?;
                let n = store.clear_inbox(from.as_ref().map(UserName::as_str))?;
                Ok(match from {
                    Some(from) => format!("deleted {n} message(s) from {from}"),
                    None => format!("deleted {n} message(s)"),
                })
            }
            InboxEdit::Accept { name } => {
                let name = parse(name)?;
                if name == *me {
                    return Err(OfflineError::Refused(
                        "you cannot add yourself to your contacts".into(),
                    ));
                }
                store.unblock(name.as_str())?;
                store.add_contact(name.as_str())?;
                Ok(format!(
                    "{name} accepted: a contact, whose messages the inbox takes"
                ))
            }
            InboxEdit::Drop { ids } => {
                check_ids(ids)?;
                let n = store.cancel_all(ids)?;
                if n == 0 {
                    return Err(OfflineError::Refused(
                        "no message with that id is in the outbox".into(),
                    ));
                }
                Ok(format!("dropped {n} message(s) from the outbox"))
            }
            InboxEdit::Block { name } => {
                let name = parse(name)?;
                if name == *me {
                    return Err(OfflineError::Refused("you cannot block yourself".into()));
                }
                store.block(name.as_str())?;
                Ok(format!(
                    "{name} blocked: their messages are refused (`contacts accept {name}` undoes it)"
                ))
            }
        }
    }
}

impl From<crate::store::InboxEntry> for InboxItem {
    fn from(m: crate::store::InboxEntry) -> Self {
        Self {
            id: m.id,
            from: m.from,
            text: m.text,
            sent_at: m.sent_at_ms,
            received_at: m.received_at_ms,
        }
    }
}

/// Why an offline command failed; each displays as one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Nobody is logged in to this home, so there is no store (and no daemon) to speak of.
    #[error(
        "natter is not running for {home} and nobody is logged in there: run `{natter} register NAME --login ADDR` (or `login`), then `{natter} up`"
    )]
    NotLoggedIn { home: String, natter: String },
    /// The same refusal the daemon would give (bad name, empty text, …).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Home(HomeError),
    #[error("local store: {0}")]
    Store(#[from] StoreError),
}

/// One message of `natter outbox --json`: still waiting for the recipient's node to store it.
/// Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub id: String,
    pub to: String,
    pub text: String,
    pub sent_at: u64,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Not tried again before this (while the daemon runs).
    pub next_attempt_at: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The recipient's node refused it for good (`last_error` says why): not tried again;
    /// `natter outbox drop ID` takes it out.
    pub refused: bool,
}

/// One line of `natter contacts requests --json`: a sender whose messages wait as a contact
/// request (`contacts accept` or `block` answers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRequest {
    pub from: String,
    pub messages: u64,
    pub bytes: u64,
}

impl From<QueuedMessage> for OutboxItem {
    fn from(m: QueuedMessage) -> Self {
        Self {
            id: m.id,
            to: m.to,
            text: m.text,
            sent_at: m.sent_at_ms,
            attempts: m.attempts,
            next_attempt_at: m.next_attempt_at_ms,
            last_error: m.last_error,
            refused: m.refused,
        }
    }
}

/// The store of a home someone is logged in to.
#[derive(Debug)]
pub struct LocalStore {
    identity: Identity,
    store: Store,
}

impl LocalStore {
    /// Opens the store of `home`; [`OfflineError::NotLoggedIn`] when no identity is there.
    pub fn open(home: &Home) -> Result<Self, OfflineError> {
        let identity = home.identity().map_err(|e| match e {
            HomeError::NotLoggedIn { natter } => OfflineError::NotLoggedIn {
                home: home.dir().display().to_string(),
                natter,
            },
            other => OfflineError::Home(other),
        })?;
        let store = Store::open(home.dir())?;
        Ok(Self { identity, store })
    }

    /// The user this home belongs to.
    pub fn user(&self) -> &UserName {
        &self.identity.user
    }

    /// Queues a message as `natter send` does, with the daemon's checks; the answer is
    /// always "queued".
    pub fn send(&self, to: &str, text: String) -> Result<SendView, OfflineError> {
        let to = UserName::parse(to)
            .map_err(|e| OfflineError::Refused(format!("invalid name {to:?}: {e}")))?;
        msg::check_text(&text)
            .map_err(|e| OfflineError::Refused(format!("{e}; nothing was queued")))?;
        if to == self.identity.user {
            return Err(OfflineError::Refused(
                "cannot send a message to yourself".into(),
            ));
        }
        let id = UlidGenerator::new().next();
        let outgoing = OutgoingMessage {
            id: id.clone(),
            to: to.to_string(),
            text,
            sent_at_ms: now_ms(),
        };
        // This user's other devices get a copy once the daemon runs and knows them.
        let copies = [FanoutTarget {
            owner: self.identity.user.to_string(),
            device: None,
        }];
        self.store
            .enqueue_with_copies(&outgoing, &copies)
            .map_err(|e| OfflineError::Refused(format!("cannot queue the message: {e}")))?;
        Ok(SendView {
            id,
            status: "queued".into(),
            path: None,
            to: to.to_string(),
            reason: None,
        })
    }

    /// Up to [`INBOX_PAGE`] received messages after the one that arrived `after` (from the
    /// first for `None`), in arrival order, with the cursor of the last: `natter inbox` reads
    /// the store page by page, however large the inbox (the store is local; the daemon need
    /// not run, nor hold the whole inbox in memory).
    pub fn inbox_page(
        &self,
        after: Option<i64>,
    ) -> Result<(Vec<InboxItem>, Option<i64>), OfflineError> {
        let page = self.store.inbox(after, INBOX_PAGE)?;
        let last = page.last().map(|m| m.rowid);
        Ok((page.into_iter().map(InboxItem::from).collect(), last))
    }

    /// `inbox delete`, `inbox clear`, `contacts accept|block`: the daemon's sentence.
    pub fn edit(&self, edit: &InboxEdit) -> Result<String, OfflineError> {
        edit.apply(&self.store, &self.identity.user)
    }

    /// Every message still waiting for delivery or refused for good, by recipient then
    /// conversation order.
    /// The last `limit` messages exchanged with `name`, oldest first (`natter history`).
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<HistoryItem>, OfflineError> {
        let peer = UserName::parse(name)
            .map_err(|e| OfflineError::Refused(format!("invalid name {name:?}: {e}")))?;
        let me = self.identity.user.as_str();
        Ok(self
            .store
            .history(peer.as_str(), limit)?
            .into_iter()
            .map(|e| HistoryItem::new(e, me, peer.as_str()))
            .collect())
    }

    pub fn outbox(&self) -> Result<Vec<OutboxItem>, OfflineError> {
        Ok(self
            .store
            .outbox(crate::store::MAX_OUTBOX)?
            .into_iter()
            .map(OutboxItem::from)
            .collect())
    }

    /// Senders whose messages wait as contact requests, by name.
    pub fn contact_requests(&self) -> Result<Vec<ContactRequest>, OfflineError> {
        Ok(self
            .store
            .contact_requests(MAX_CONTACT_REQUESTS)?
            .into_iter()
            .map(|(from, messages, bytes)| ContactRequest {
                from,
                messages,
                bytes,
            })
            .collect())
    }

    pub fn contacts(&self) -> Result<Vec<String>, OfflineError> {
        Ok(self.store.contacts()?)
    }

    /// `contacts add`; the daemon's sentence on success.
    pub fn add_contact(&self, name: &str) -> Result<String, OfflineError> {
        let name = parse(name)?;
        self.store.add_contact(name.as_str())?;
        Ok(format!("{name} added to contacts"))
    }

    /// `contacts remove`; the daemon's sentence on success.
    pub fn remove_contact(&self, name: &str) -> Result<String, OfflineError> {
        let name = parse(name)?;
        if self.store.remove_contact(name.as_str())? {
            Ok(format!("{name} removed from contacts"))
        } else {
            Err(OfflineError::Refused(format!("{name} is not a contact")))
        }
    }
}

fn parse(name: &str) -> Result<UserName, OfflineError> {
    UserName::parse(name).map_err(|e| OfflineError::Refused(format!("invalid name {name:?}: {e}")))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::IssuerSigningKey;

    /// A home logged in as `user`, with a certificate no network will ever check.
    fn home_of(user: &str) -> (tempfile::TempDir, Home) {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(Some(tmp.path().join("home"))).unwrap();
        let device = home.device_key().unwrap();
        let issuer = IssuerSigningKey::from_bytes(&[7; 32]);
        let name = UserName::parse(user).unwrap();
        let device_key = device.public().try_into_ed25519().unwrap().to_bytes();
        let cert = issuer.issue(name.clone(), device_key, 1, 0, 3600).unwrap();
        home.save_identity(&Identity {
            user: name,
            login: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            issuer_key: issuer.public(),
            cert,
        })
        .unwrap();
        (tmp, home)
    }

    #[test]
    fn a_home_without_identity_says_how_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(Some(tmp.path().to_owned())).unwrap();
        let err = LocalStore::open(&home).unwrap_err().to_string();
        assert!(err.contains("natter is not running"), "{err}");
        assert!(err.contains("register NAME"), "{err}");
        assert!(
            err.contains(&format!("--home {}", tmp.path().display())),
            "{err}"
        );
    }

    #[test]
    fn send_checks_like_the_daemon_and_queues() {
        let (_tmp, home) = home_of("alice");
        let local = LocalStore::open(&home).unwrap();
        let refused = |to: &str, text: &str| local.send(to, text.into()).unwrap_err().to_string();
        assert!(refused("bob!", "hi").starts_with("invalid name \"bob!\""));
        assert!(refused("bob", "  ").contains("nothing was queued"));
        assert!(refused("bob", "a\0b").contains("nothing was queued"));
        let big = "x".repeat(natter_proto::limits::MAX_MESSAGE_TEXT_BYTES + 1);
        assert!(refused("bob", &big).contains("nothing was queued"));
        assert_eq!(refused("Alice", "hi"), "cannot send a message to yourself");
        assert!(local.outbox().unwrap().is_empty());

        let a = local.send("Bob", "first".into()).unwrap();
        let b = local.send("bob", "second".into()).unwrap();
        assert_eq!((a.status.as_str(), a.path.as_deref()), ("queued", None));
        assert_eq!(a.to, "bob");
        assert!(msg::is_ulid(&a.id) && a.id != b.id);
        let outbox = local.outbox().unwrap();
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox[0].text, "first");
        assert_eq!(outbox[1].to, "bob");
        assert_eq!(outbox[0].attempts, 0);
        assert_eq!(outbox[0].last_error, None);
        let json = serde_json::to_value(&outbox[0]).unwrap();
        for key in [
            "id",
            "to",
            "text",
            "sent_at",
            "attempts",
            "next_attempt_at",
            "last_error",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
    }

    #[test]
    fn contacts_and_inbox_from_the_store() {
        let (_tmp, home) = home_of("alice");
        let local = LocalStore::open(&home).unwrap();
        assert_eq!(
            local.add_contact("Carol").unwrap(),
            "carol added to contacts"
        );
        assert_eq!(local.contacts().unwrap(), ["carol"]);
        assert_eq!(
            local.remove_contact("carol").unwrap(),
            "carol removed from contacts"
        );
        assert_eq!(
            local.remove_contact("carol").unwrap_err().to_string(),
            "carol is not a contact"
        );
        assert!(local.add_contact("c d").is_err());
        assert!(local.inbox_page(None).unwrap().0.is_empty());
        let store = Store::open(home.dir()).unwrap();
        store
            .receive(&crate::store::IncomingMessage {
                id: UlidGenerator::new().next(),
                from: "bob".into(),
                text: "hi\nthere".into(),
                sent_at_ms: 5,
                conv_seq: 1,
                received_at_ms: 6,
            })
            .unwrap();
        let inbox = local.inbox_page(None).unwrap().0;
        assert_eq!(inbox.len(), 1);
        assert_eq!(
            (inbox[0].from.as_str(), inbox[0].text.as_str()),
            ("bob", "hi\nthere")
        );
        assert_eq!((inbox[0].sent_at, inbox[0].received_at), (5, 6));
    }
}
