//! All integration tests in one binary (one component compile).
//!
//! * `simulation` — scenarios and the seeded property search over the simulator;
//! * `boundary` — errors, state and the cache across the component boundary;
//! * `bridge` — `rollingops bridge` driven as a foreign host would, and its documented
//!   transcript;
//! * `e2e` — real processes: the example Rust charm per unit under a fake Juju
//!   (`fake_juju`, hook tools in `fake-juju/`), rolling restarts, faults, and costs;
//! * `e2e_etcd` — the same in etcd mode on a real etcd: two applications on one lock, each
//!   unit with its detached `rollingops worker`, and the fallback when etcd goes away;
//! * `sync_lock` — the synchronous lock through the component on a real etcd;

mod boundary;
mod bridge;
mod e2e;
mod e2e_etcd;
mod e2e_features;
mod e2e_go;
mod etcd;
mod fake_juju;
mod features;
mod simulation;
mod sync_lock;
mod testing_kit;
mod vectors;
