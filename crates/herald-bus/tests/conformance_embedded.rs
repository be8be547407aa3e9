//! The bus conformance suite against the embedded SQLite backend, each test
//! on a fresh database file.

use std::sync::Arc;

use herald_bus::{Bus, EmbeddedBus};
use tempfile::TempDir;

async fn fresh_bus() -> (Arc<dyn Bus>, TempDir) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let bus = EmbeddedBus::open(dir.path().join("herald.db"))
        .await
        .expect("open the embedded bus");
    (Arc::new(bus), dir)
}

herald_bus::bus_conformance_suite!(fresh_bus);
