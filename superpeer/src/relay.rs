//! Relay (circuit v2) limits sized for chat. libp2p's defaults (2 min and 128 KiB per circuit,
//! 16 circuits in all) suit a short hole-punch handshake, not a superpeer whose leaves stay
//! reachable through it all day and exchange messages before (or instead of) a direct path.

use std::num::NonZeroU32;
use std::time::Duration;

use libp2p::relay;

/// Relay limits of a superpeer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once; a leaf holds one per superpeer it is attached to.
    pub max_reservations: usize,
    /// Reservations per peer (a leaf re-reserves over TCP and QUIC).
    pub max_reservations_per_peer: usize,
    pub reservation_duration: Duration,
    /// Circuits open at once, and per peer.
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// How long one circuit may stay open, and how many bytes it may carry each way.
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
    /// New reservations per source IP per minute: many leaves behind one home or carrier NAT
    /// share an IP, so this is generous.
    pub reservations_per_ip_per_minute: u32,
}

impl RelayLimits {
    /// Sized from the leaf capacity of the superpeer.
    pub fn for_leaves(max_leaves: usize) -> Self {
        Self {
            max_reservations: max_leaves * 2 + 16,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: max_leaves * 4 + 64,
            max_circuits_per_peer: 64,
            max_circuit_duration: Duration::from_secs(6 * 3600),
            max_circuit_bytes: 64 * 1024 * 1024,
            reservations_per_ip_per_minute: 120,
        }
    }

    pub fn to_config(self) -> relay::Config {
        let mut config = relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            ..relay::Config::default()
        };
        config.reservation_rate_limiters.clear();
        config.circuit_src_rate_limiters.clear();
        let per_ip = NonZeroU32::new(self.reservations_per_ip_per_minute.max(1)).expect("nonzero");
        config = config.reservation_rate_per_ip(per_ip, Duration::from_secs(60));
        config.circuit_src_per_ip(per_ip, Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_above_libp2p_defaults() {
        let c = RelayLimits::for_leaves(1000).to_config();
        let d = relay::Config::default();
        assert!(c.max_circuit_duration > d.max_circuit_duration * 100);
        assert!(c.max_circuit_bytes > d.max_circuit_bytes * 100);
        assert!(c.max_circuits >= 4000);
        assert!(c.max_reservations >= 2000);
        assert_eq!(c.reservation_rate_limiters.len(), 1);
    }
}
