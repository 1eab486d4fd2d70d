//! All integration tests in one binary (one component compile).
//!
//! * `simulation` — scenarios and the seeded property search over the simulator;
//! * `boundary` — errors, state and the cache across the component boundary.

mod boundary;
mod etcd;
mod simulation;
