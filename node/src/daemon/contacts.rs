//! `contacts add|remove|list` in the daemon: a name is added only if the login server knows
//! the account; the store keeps the list.

use natter_proto::UserName;

use super::Daemon;
use super::api::ControlResponse;
use crate::control::Replier;

impl Daemon {
    pub(super) fn cmd_contacts(
        &mut self,
        add: Option<String>,
        remove: Option<String>,
        reply: Replier<ControlResponse>,
    ) {
        let parse = |n: String| UserName::parse(&n).map_err(|e| format!("invalid name {n:?}: {e}"));
        match (add, remove) {
            (Some(n), _) => match parse(n) {
                Ok(n) if n == self.identity.user => {
                    let _ = reply.try_send(Err("you cannot add yourself to your contacts".into()));
                }
                // Only a user who exists: the login server is asked first.
                Ok(n) => {
                    let request = natter_proto::login::LoginRequest::Exists {
                        name: n.to_string(),
                    };
                    self.send_login(
                        request,
                        super::LoginPending::ContactExists { name: n, reply },
                    );
                }
                Err(e) => {
                    let _ = reply.try_send(Err(e));
                }
            },
            (_, Some(n)) => match parse(n) {
                Ok(n) => self.store_then(
                    move |s| s.remove_contact(n.as_str()).map(|removed| (n, removed)),
                    move |_, removed| {
                        let _ = reply.try_send(match removed {
                            Ok((n, true)) => Ok(ControlResponse::Done {
                                message: format!("{n} removed from contacts"),
                            }),
                            Ok((n, false)) => Err(format!("{n} is not a contact")),
                            Err(e) => Err(e.to_string()),
                        });
                    },
                ),
                Err(e) => {
                    let _ = reply.try_send(Err(e));
                }
            },
            (None, None) => self.store_then(
                |s| s.contacts(),
                move |_, contacts| {
                    let _ = reply.try_send(
                        contacts
                            .map(ControlResponse::Contacts)
                            .map_err(|e| e.to_string()),
                    );
                },
            ),
        }
    }

    /// The login server's answer for `contacts add name`: added if the account exists (or if
    /// the login server cannot tell now: the user asked for it, and it can be removed).
    pub(super) fn add_contact(
        &mut self,
        name: UserName,
        exists: Option<bool>,
        reply: Replier<ControlResponse>,
    ) {
        if exists == Some(false) {
            let _ = reply.try_send(Err(format!(
                "no user named {name}: nobody registered that name; nothing was added"
            )));
            return;
        }
        let note = if exists.is_none() {
            " (the login server could not say whether that user exists)"
        } else {
            ""
        };
        self.store_then(
            move |s| s.add_contact(name.as_str()).map(|_| name),
            move |_, added| {
                let _ = reply.try_send(
                    added
                        .map(|n| ControlResponse::Done {
                            message: format!("{n} added to contacts{note}"),
                        })
                        .map_err(|e| e.to_string()),
                );
            },
        );
    }
}
