//! What one hook costs a charm, through the Rust host library directly and through the C
//! ABI (what Go's cgo binding calls), on the same scenario as
//! `host/go/cmd/rollingops-hookcost`: a 3-unit relation where every unit waits, and the
//! leader's `relation-changed` grants the lock (writes are discarded, so every hook makes the
//! same decision).
//!
//! ```sh
//! cargo run -p rollingops-capi --example hook_cost            # in-process table
//! cargo run -p rollingops-capi --example hook_cost -- --once DIR  # one hook, cached runtime
//! ```
//! `--once` is for timing a whole process per hook (as Juju runs a charm) from the shell.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::time::{Duration, Instant};

use rollingops::sandbox::Sandbox;
use rollingops::{
    BagOwner, CallbackOutcome, Config, Event, Host, LogLevel, Runtime, Session, WitError,
};
use rollingops_capi::*;

const T0: i64 = 1_777_636_800_000_000;

/// Three units, each with one queued `restart`; app/0 leads.
fn bags() -> BTreeMap<String, BTreeMap<String, String>> {
    (0..3)
        .map(|i| {
            let op = format!(
                r#"[{{"callback_id":"restart","requested_at":"{}.5","max_retry":null,"attempt":0,"result":null,"kwargs":{{"delay":2}}}}]"#,
                1_777_636_702 - i
            );
            let bag = [("operations", op.as_str()), ("state", "request"), ("processing_backend", "peer")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (format!("app/{i}"), bag)
        })
        .collect()
}

#[derive(Clone)]
struct Frozen {
    bags: BTreeMap<String, BTreeMap<String, String>>,
}

impl Host for Frozen {
    fn unit_name(&mut self) -> String {
        "app/0".into()
    }
    fn model_uuid(&mut self) -> String {
        String::new()
    }
    fn is_leader(&mut self) -> Result<bool, WitError> {
        Ok(true)
    }
    fn relation_ids(&mut self, _: &str) -> Result<Vec<u32>, WitError> {
        Ok(vec![1])
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, WitError> {
        Ok(self
            .bags
            .keys()
            .filter(|u| *u != "app/0")
            .cloned()
            .collect())
    }
    fn relation_get(
        &mut self,
        _: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, WitError> {
        Ok(match owner {
            BagOwner::App => vec![],
            BagOwner::Unit(u) => self.bags[u].clone().into_iter().collect(),
        })
    }
    fn relation_set(&mut self, _: u32, _: bool, _: &[(String, String)]) -> Result<(), WitError> {
        Ok(())
    }
    fn log(&mut self, _: LogLevel, _: &str) {}
    fn dispatch(&mut self, _: &str) -> Result<(), WitError> {
        Ok(())
    }
    fn now_micros(&mut self) -> i64 {
        T0
    }
    fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
        CallbackOutcome::Returned(None)
    }
}

fn config() -> Config {
    Config {
        peer_relation_name: "restart".into(),
        etcd_relation_name: None,
        cluster_id: None,
        base_dir: "/var/lib/rollingops".into(),
        callback_ids: vec!["restart".into()],
        sync_lock_ids: vec![],
    }
}

const CONFIG_JSON: &CStr = cr#"{"peer_relation_name":"restart","callback_ids":["restart"]}"#;

// The same host as C functions over a `Frozen` in user data.
fn frozen(ud: *mut c_void) -> &'static mut Frozen {
    // SAFETY: user data is a live `Frozen` for every session below.
    unsafe { &mut *ud.cast::<Frozen>() }
}
fn ok(reply: *mut Reply, text: &str) {
    // SAFETY: a reply handed to a host function; the data is valid for the call.
    unsafe { rollingops_reply_ok(reply, text.as_ptr().cast(), text.len()) }
}
unsafe extern "C" fn c_unit_name(_: *mut c_void, reply: *mut Reply) {
    ok(reply, "app/0");
}
unsafe extern "C" fn c_is_leader(_: *mut c_void, reply: *mut Reply) {
    ok(reply, "true");
}
unsafe extern "C" fn c_relation_ids(_: *mut c_void, _: *const c_char, reply: *mut Reply) {
    ok(reply, "[1]");
}
unsafe extern "C" fn c_relation_units(ud: *mut c_void, _: u32, reply: *mut Reply) {
    let others: Vec<&String> = frozen(ud).bags.keys().filter(|u| *u != "app/0").collect();
    ok(reply, &serde_json::to_string(&others).unwrap());
}
unsafe extern "C" fn c_relation_get(
    ud: *mut c_void,
    _: u32,
    unit: *const c_char,
    reply: *mut Reply,
) {
    if unit.is_null() {
        return ok(reply, "{}");
    }
    // SAFETY: a NUL-terminated unit name from the library.
    let unit = unsafe { CStr::from_ptr(unit) }.to_str().unwrap();
    ok(
        reply,
        &serde_json::to_string(&frozen(ud).bags[unit]).unwrap(),
    );
}
unsafe extern "C" fn c_relation_set(
    _: *mut c_void,
    _: u32,
    _: bool,
    _: *const c_char,
    reply: *mut Reply,
) {
    ok(reply, "");
}
unsafe extern "C" fn c_log(_: *mut c_void, _: i32, _: *const c_char) {}
unsafe extern "C" fn c_dispatch(_: *mut c_void, _: *const c_char, reply: *mut Reply) {
    ok(reply, "");
}
unsafe extern "C" fn c_now(_: *mut c_void) -> i64 {
    T0
}
unsafe extern "C" fn c_run_callback(
    _: *mut c_void,
    _: *const c_char,
    _: *const c_char,
    reply: *mut Reply,
) {
    ok(reply, "null");
}

fn vtable(host: &mut Frozen) -> HostVtable {
    HostVtable {
        user_data: (host as *mut Frozen).cast(),
        unit_name: Some(c_unit_name),
        model_uuid: None,
        is_leader: Some(c_is_leader),
        relation_ids: Some(c_relation_ids),
        relation_units: Some(c_relation_units),
        relation_get: Some(c_relation_get),
        relation_set: Some(c_relation_set),
        secret_get: None,
        secret_add: None,
        log: Some(c_log),
        dispatch: Some(c_dispatch),
        now_micros: Some(c_now),
        sleep_ms: None,
        run_callback: Some(c_run_callback),
        sync_backend_acquire: None,
        sync_backend_release: None,
        start_worker: None,
        secret_grant: None,
        relation_get_remote_app: None,
        dispatch_after: None,
    }
}

/// One hook through the C ABI: session, relation-changed, free.
fn c_hook(runtime: *const RuntimeHandle, host: &mut Frozen) {
    let vt = vtable(host);
    let mut session = std::ptr::null_mut();
    let mut message = std::ptr::null_mut();
    // SAFETY: valid pointers; `host` outlives the session.
    unsafe {
        assert_eq!(
            rollingops_session_new(
                runtime,
                CONFIG_JSON.as_ptr(),
                &vt,
                &mut session,
                &mut message
            ),
            code::OK
        );
        assert_eq!(
            rollingops_handle_event(session, c"\"peer-relation-changed\"".as_ptr(), &mut message),
            code::OK
        );
        rollingops_session_free(session);
    }
}

fn rust_hook(runtime: &Runtime, host: &Frozen) {
    let sandbox = Sandbox::new("/nonexistent/charm", "/nonexistent/base");
    let mut session = Session::new(runtime, Box::new(host.clone()), sandbox, &config()).unwrap();
    session.handle_event(&Event::PeerRelationChanged).unwrap();
}

/// Median and mean of `runs` timings of `f`.
fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / runs as u32;
    (samples[runs / 2], mean)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--once") {
        let dir = CString::new(args[2].clone()).unwrap();
        let mut runtime = std::ptr::null_mut();
        let mut message = std::ptr::null_mut();
        // SAFETY: valid pointers.
        assert_eq!(
            unsafe { rollingops_runtime_new(dir.as_ptr(), &mut runtime, &mut message) },
            code::OK
        );
        c_hook(runtime, &mut Frozen { bags: bags() });
        return;
    }

    let dir = std::env::temp_dir().join(format!("rollingops-hook-cost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = Instant::now();
    Runtime::new(Some(&dir)).unwrap();
    let compile = start.elapsed();
    let (load, _) = time(20, || {
        Runtime::new(Some(&dir)).unwrap();
    });
    let runtime = Runtime::new(Some(&dir)).unwrap();
    let host = Frozen { bags: bags() };
    let runs = 2000;
    for _ in 0..50 {
        rust_hook(&runtime, &host);
    }
    let (rust_median, rust_mean) = time(runs, || rust_hook(&runtime, &host));

    let cdir = CString::new(dir.to_str().unwrap()).unwrap();
    let mut handle = std::ptr::null_mut();
    let mut message = std::ptr::null_mut();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { rollingops_runtime_new(cdir.as_ptr(), &mut handle, &mut message) },
        code::OK
    );
    let mut c_host = Frozen { bags: bags() };
    for _ in 0..50 {
        c_hook(handle, &mut c_host);
    }
    let (c_median, c_mean) = time(runs, || c_hook(handle, &mut c_host));
    let _ = std::fs::remove_dir_all(&dir);

    println!("rollingops hook cost (3 units, leader relation-changed that grants; {runs} runs)");
    println!(
        "  {:<52} {:>10}",
        "compile the component (first process only)",
        us(compile)
    );
    println!(
        "  {:<52} {:>10}",
        "load the cached .cwasm (every process)",
        us(load)
    );
    println!("  {:<52} {:>10} {:>12}", "", "median", "mean");
    println!(
        "  {:<52} {:>10} {:>12}",
        "Rust host library: instantiate + relation-changed",
        us(rust_median),
        us(rust_mean)
    );
    println!(
        "  {:<52} {:>10} {:>12}",
        "C ABI (Rust vtable): instantiate + relation-changed",
        us(c_median),
        us(c_mean)
    );
}
