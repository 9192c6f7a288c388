//! The Natter peer: home directory, login client, local store, control API and the daemon.

pub mod config;
pub mod control;
pub mod daemon;
pub mod home;
pub mod login_client;
mod net;
pub mod offline;
pub mod store;
pub mod terminal;
mod ulid;

pub use home::{Home, HomeError, Identity};
pub use login_client::{Issued, LoginClient, LoginError};
