//! Protocol identifiers spoken on the wire. Changing one is a breaking change for every peer.

/// Request-response protocol between nodes and the login server (JSON).
pub const LOGIN: &str = "/natter/login/1.0.0";
/// Kademlia protocol of the superpeer directory; distinct from the public IPFS DHT on purpose.
pub const KAD: &str = "/natter/kad/1.0.0";
/// Request-response protocol between leaves and superpeers, and among superpeers (JSON).
pub const OVERLAY: &str = "/natter/overlay/1.0.0";
/// Request-response protocol for direct messages (JSON).
pub const MSG: &str = "/natter/msg/1.0.0";
/// Identify protocol version string, so peers of other networks are recognised and ignored.
pub const IDENTIFY_VERSION: &str = "/natter/1.0.0";
/// Request-response protocol by which a node proves its account on a new connection (JSON):
/// superpeers serve the directory, the relay and the overlay only to peers that did.
pub const INTRODUCE: &str = "/natter/introduce/1.0.0";
