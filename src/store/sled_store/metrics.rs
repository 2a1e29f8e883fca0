//! sled's own series: bytes on disk and group commits. Read at scrape time through a weak handle,
//! so the metrics never keep a closed store's directory locked.

use std::fmt;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Inner;

pub(super) fn register(registry: &mut Registry, store: Weak<Inner>) {
    registry.register_collector(Box::new(SledFigures(store)));
}

struct SledFigures(Weak<Inner>);

impl fmt::Debug for SledFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SledFigures")
    }
}

impl Collector for SledFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(store) = self.0.upgrade() else {
            return Ok(());
        };
        let bytes = store.db.size_on_disk().unwrap_or(0);
        let (flushes, writes) = store.commit.counts();
        drop(store);
        let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "latchkey_store_bytes",
            "Bytes the store occupies on disk",
            None,
            gauge.metric_type(),
        )?)?;
        let flushes = ConstCounter::new(flushes);
        flushes.encode(encoder.encode_descriptor(
            "latchkey_store_flushes",
            "Group commits made durable (flush, and fdatasync when configured)",
            None,
            flushes.metric_type(),
        )?)?;
        let writes = ConstCounter::new(writes);
        writes.encode(encoder.encode_descriptor(
            "latchkey_store_writes",
            "Writes acknowledged by group commits; writes per flush shows how well commits group",
            None,
            writes.metric_type(),
        )?)?;
        Ok(())
    }
}
