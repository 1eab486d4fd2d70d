//! The component boundary: errors arrive typed with the reference's class and message and
//! leave stored state untouched; state and queries; the precompiled-component cache.

use std::sync::{Arc, Mutex};

use rollingops::{Event, ProcessingBackend, Status, SyncBackendError, WitError};
use rollingops_tests::{Bags, MemoryHost, session};

fn relation(units: &[&str]) -> Arc<Mutex<Bags>> {
    let mut bags = Bags::default();
    for unit in units {
        bags.units.insert(unit.to_string(), Default::default());
    }
    Arc::new(Mutex::new(bags))
}

fn library_error(result: Result<(), rollingops::Error>) -> WitError {
    result
        .expect_err("must fail")
        .library()
        .cloned()
        .expect("a library error, not a trap")
}

#[test]
fn bad_requests_are_typed_errors_and_change_nothing() {
    let bags = relation(&["app/0", "app/1"]);
    let host = MemoryHost::new("app/1", false, &bags);
    let mut hook = session(&host);
    let before = bags.lock().unwrap().clone();
    let cases: Vec<(&str, &str, Option<i64>, &str)> = vec![
        ("unknown", "{}", None, "Unknown callback_id: unknown"),
        (
            "restart",
            "not json",
            None,
            "Failed to create the lock request",
        ),
        (
            "restart",
            "\"a string\"",
            None,
            "Failed to create the lock request",
        ),
        (
            "restart",
            "[1, 2]",
            None,
            "Failed to create the lock request",
        ),
        ("restart", "42", None, "Failed to create the lock request"),
        (
            "restart",
            "{}",
            Some(-1),
            "Failed to create the lock request",
        ),
        ("restart", "{}", Some(-5), "max_retry must be >= 0"),
    ];
    for (id, kwargs, max_retry, message) in cases {
        match library_error(hook.request_async_lock(id, kwargs, max_retry)) {
            WitError::InvalidLockRequest(m) => assert!(m.contains(message), "{id} {kwargs}: {m}"),
            other => panic!("{id} {kwargs}: {other:?}"),
        }
    }
    assert_eq!(format!("{:?}", bags.lock().unwrap()), format!("{before:?}"));
    // A huge max_retry is a valid budget.
    hook.request_async_lock("restart", "{\"delay\": 1}", Some(i64::MAX))
        .unwrap();
    let ops = bags.lock().unwrap().units["app/1"]["operations"].clone();
    assert!(
        ops.contains(&format!("\"max_retry\":{}", i64::MAX)),
        "{ops}"
    );
}

#[test]
fn corrupted_own_queue_is_refused_and_left_byte_for_byte() {
    let bags = relation(&["app/0", "app/1"]);
    bags.lock()
        .unwrap()
        .units
        .get_mut("app/1")
        .unwrap()
        .insert("operations".into(), "[{broken".into());
    let host = MemoryHost::new("app/1", false, &bags);
    let mut hook = session(&host);
    match library_error(hook.request_async_lock("restart", "{}", None)) {
        WitError::InvalidLockRequest(m) => assert!(m.contains("cannot be decoded"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        bags.lock().unwrap().units["app/1"]["operations"],
        "[{broken"
    );
    match hook
        .state()
        .expect_err("state of a corrupt queue")
        .library()
        .cloned()
    {
        Some(WitError::Decoding(m)) => assert!(m.contains("Failed to deserialize"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupted_peer_does_not_stop_the_leader() {
    let bags = relation(&["app/0", "app/1", "app/2"]);
    {
        let mut b = bags.lock().unwrap();
        b.units
            .get_mut("app/1")
            .unwrap()
            .insert("operations".into(), "{\"not\": \"a list\"}".into());
        b.units
            .get_mut("app/1")
            .unwrap()
            .insert("state".into(), "request".into());
        let op = r#"[{"callback_id":"restart","requested_at":"1777636700.0","max_retry":null,"attempt":0,"result":null,"kwargs":{}}]"#;
        b.units
            .get_mut("app/2")
            .unwrap()
            .insert("operations".into(), op.into());
        b.units
            .get_mut("app/2")
            .unwrap()
            .insert("state".into(), "request".into());
    }
    let host = MemoryHost::new("app/0", true, &bags);
    let mut hook = session(&host);
    hook.handle_event(&Event::PeerRelationChanged).unwrap();
    assert_eq!(bags.lock().unwrap().app["granted_unit"], "app/2");
    assert!(
        host.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("cannot be decoded") && l.contains("app/1"))
    );
}

#[test]
fn state_and_waiting_queries() {
    let no_relation = MemoryHost {
        bags: None,
        ..MemoryHost::new("app/0", false, &relation(&[]))
    };
    let mut hook = session(&no_relation);
    let state = hook.state().unwrap();
    assert_eq!(
        (state.status, state.processing_backend),
        (Status::NotReady, ProcessingBackend::Peer)
    );
    assert!(!hook.is_waiting(None, None).unwrap());
    match library_error(hook.request_async_lock("restart", "{}", None)) {
        WitError::NoRelation(m) => assert_eq!(m, "No restart peer relation yet."),
        other => panic!("{other:?}"),
    }

    let bags = relation(&["app/0", "app/1"]);
    let host = MemoryHost::new("app/1", false, &bags);
    let mut hook = session(&host);
    assert_eq!(hook.state().unwrap().status, Status::Idle);
    hook.request_async_lock("restart", "{}", None).unwrap();
    assert_eq!(hook.state().unwrap().status, Status::Waiting);
    assert!(hook.is_waiting(None, Some("restart")).unwrap());
    assert!(!hook.is_waiting(None, Some("other")).unwrap());
    let leader = MemoryHost::new("app/0", true, &bags);
    let mut hook = session(&leader);
    assert!(hook.is_waiting(Some("app/1"), None).unwrap());
    match library_error(hook.is_waiting(Some("app/9"), None).map(|_| ())) {
        WitError::InvalidArgument(m) => assert_eq!(
            m,
            "unit_name provided does not belong to the peer relation."
        ),
        other => panic!("{other:?}"),
    }
    // The leader grants app/1; app/1 then reports granted until it runs.
    hook.handle_event(&Event::PeerRelationChanged).unwrap();
    let mut hook = session(&host);
    assert_eq!(hook.state().unwrap().status, Status::Granted);
    hook.handle_event(&Event::PeerRelationChanged).unwrap();
    assert_eq!(host.calls.lock().unwrap().len(), 1);
    assert_eq!(hook.state().unwrap().status, Status::Idle);
}

#[test]
fn sync_lock_errors_keep_their_meaning() {
    let bags = relation(&["app/0"]);
    let mut host = MemoryHost::new("app/0", true, &bags);
    let mut hook = session(&host);
    hook.acquire_sync_lock("stop-replset-member", Some(30))
        .unwrap();
    hook.release_sync_lock("stop-replset-member").unwrap();
    match library_error(hook.acquire_sync_lock("zzz", None)) {
        WitError::SyncLock(m) => assert_eq!(m, "Unknown sync lock backend: zzz."),
        other => panic!("{other:?}"),
    }
    host.sync_acquire = Err(SyncBackendError::TimedOut);
    let mut hook = session(&host);
    assert!(matches!(
        library_error(hook.acquire_sync_lock("stop-replset-member", Some(1))),
        WitError::Timeout(_)
    ));
    host.sync_acquire = Err(SyncBackendError::Failed("boom".into()));
    let mut hook = session(&host);
    match library_error(hook.acquire_sync_lock("stop-replset-member", Some(1))) {
        WitError::SyncLock(m) => {
            assert!(m.starts_with("Failed to acquire sync lock backend stop-replset-member"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn constructor_rejects_cluster_id_without_etcd_relation() {
    let bags = relation(&["app/0"]);
    let host = MemoryHost::new("app/0", true, &bags);
    let mut config = rollingops_tests::config();
    config.cluster_id = Some("c1".into());
    let sandbox = rollingops::sandbox::Sandbox::new("/nonexistent", "/nonexistent");
    match rollingops::Session::new(
        rollingops_tests::runtime(),
        Box::new(host),
        sandbox,
        &config,
    ) {
        Err(rollingops::Error::Library(WitError::InvalidArgument(m))) => {
            assert_eq!(m, "cluster_id provided without etcd_relation_name.")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn precompiled_cache_hits_and_rebuilds_corrupt_files() {
    use rollingops::cache::CacheOutcome;
    let dir = std::env::temp_dir().join(format!("rollingops-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = rollingops::Runtime::new(Some(&dir)).unwrap();
    assert_eq!(first.cache_outcome, CacheOutcome::Compiled);
    let second = rollingops::Runtime::new(Some(&dir)).unwrap();
    assert_eq!(second.cache_outcome, CacheOutcome::Hit);
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(file.extension().is_some_and(|e| e == "cwasm"));
    // Replace the file (never rewrite it in place: live runtimes map it into memory).
    drop((first, second));
    let temp = dir.join("corrupt.tmp");
    std::fs::write(&temp, b"not a precompiled component").unwrap();
    std::fs::rename(&temp, &file).unwrap();
    let third = rollingops::Runtime::new(Some(&dir)).unwrap();
    assert_eq!(third.cache_outcome, CacheOutcome::Rebuilt);
    let fourth = rollingops::Runtime::new(Some(&dir)).unwrap();
    assert_eq!(fourth.cache_outcome, CacheOutcome::Hit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn component_stays_small() {
    let size = rollingops::COMPONENT.len();
    eprintln!("rollingops.wasm: {size} bytes");
    // 472 KB before issue 8's features (health gates, rolls, N holders, controls) and the
    // watch-based etcd worker, 597 KB after; the budget keeps further growth deliberate.
    assert!(size <= 640 * 1024, "the component grew to {size} bytes");
}
