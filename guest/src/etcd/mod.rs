//! etcd mode, pure parts (spec/etcd.md): identities and key layout ([`keys`]), the exact
//! etcdctl argv and transaction bodies ([`txn`]), and how etcdctl's output and failures are
//! read ([`etcdctl`]). Nothing here runs a process; the flows that do run etcdctl through
//! the `process` import build on these.

pub mod config;
pub mod etcdctl;
pub mod handoff;
pub mod keys;
pub mod queue;
pub mod turn;
pub mod txn;
pub mod worker;

#[cfg(test)]
pub(crate) mod fake;
