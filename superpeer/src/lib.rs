//! The superpeer role of Natter, as decisions the node's event loop asks for: whether to be a
//! superpeer, held against short dips ([`promotion`]), whom to admit as a leaf ([`leaves`]),
//! what each overlay request gets ([`overlay`]), what to store in the directory
//! ([`directory`]), how a lookup goes from cache to DHT to liveness ([`lookup`]), and how
//! generous the relay is ([`relay`]). Everything here is plain state, state machines and pure
//! functions; the swarm stays in the node.

pub mod directory;
pub mod leaves;
pub mod lookup;
pub mod overlay;
pub mod promotion;
pub mod relay;
#[cfg(test)]
mod test_support;

pub use leaves::{Admission, LeafTable};
pub use promotion::{Decision, Resources, Role, Thresholds};
