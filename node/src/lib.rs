//! The Natter peer: home directory, login client, and (as the overlay lands) the daemon.

pub mod home;
pub mod login_client;

pub use home::{Home, HomeError, Identity};
pub use login_client::{Issued, LoginClient, LoginError};
