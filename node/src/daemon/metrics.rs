//! What `natter up --metrics` exposes besides libp2p's own metrics (which the network task
//! records): Natter's gauges and counters, registered from a table.

/// What `--metrics` exposes: libp2p's own metrics and Natter's.
pub(crate) struct NodeMetrics {
    pub(super) superpeer: Gauge,
    pub(super) leaves: Gauge,
    pub(super) records_stored: Gauge,
    pub(super) records_refused: Gauge,
    pub(super) lookups: Gauge,
    pub(super) outbox: Gauge,
    pub(crate) delivered: Counter,
    pub(crate) received: Counter,
}

type Gauge = prometheus_client::metrics::gauge::Gauge<i64>;
type Counter = prometheus_client::metrics::counter::Counter;

impl NodeMetrics {
    pub(super) fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            superpeer: Gauge::default(),
            leaves: Gauge::default(),
            records_stored: Gauge::default(),
            records_refused: Gauge::default(),
            lookups: Gauge::default(),
            outbox: Gauge::default(),
            delivered: Counter::default(),
            received: Counter::default(),
        };
        let natter = registry.sub_registry_with_prefix("natter");
        let gauges = [
            (
                "superpeer",
                "1 while this node is a superpeer",
                &m.superpeer,
            ),
            ("leaves", "Leaves attached to this superpeer", &m.leaves),
            (
                "records_stored",
                "Directory records validated and stored",
                &m.records_stored,
            ),
            (
                "records_refused",
                "Directory records refused by validation",
                &m.records_refused,
            ),
            ("lookups", "Lookups served by this superpeer", &m.lookups),
            ("outbox_queued", "Messages waiting in the outbox", &m.outbox),
        ];
        for (name, help, gauge) in gauges {
            natter.register(name, help, gauge.clone());
        }
        let counters = [
            (
                "messages_delivered",
                "Messages acknowledged by their recipient",
                &m.delivered,
            ),
            (
                "messages_received",
                "Messages received and stored (duplicates excluded)",
                &m.received,
            ),
        ];
        for (name, help, counter) in counters {
            natter.register(name, help, counter.clone());
        }
        m
    }
}
