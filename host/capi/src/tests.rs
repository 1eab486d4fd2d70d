//! The C ABI driven as a C caller would: raw pointers, a vtable of `extern "C"` functions
//! over an in-memory relation, codes and freed strings.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::OnceLock;

use super::*;

/// One unit on an in-memory peer relation (id 7, endpoint `restart`).
#[derive(Default)]
struct Fake {
    unit: String,
    leader: bool,
    app: BTreeMap<String, String>,
    units: BTreeMap<String, BTreeMap<String, String>>,
    calls: Vec<(String, String)>,
    callback_reply: Option<(i32, String)>,
    sync_reply: Option<(i32, String)>,
    /// Called back into this session from a callback, to prove it is refused.
    reenter: Option<*mut SessionHandle>,
    reentry_code: Option<i32>,
    fail_unit_name: bool,
    /// Microseconds since the epoch (0: the fixed default).
    now: i64,
    /// What each callback id answers (JSON), by id; default `null`.
    answers: BTreeMap<String, String>,
    /// `dispatch` and `dispatch_after` calls: (event, delay ms; 0 for `dispatch`).
    dispatched: Vec<(String, u32)>,
    logs: Vec<String>,
}

fn fake(user_data: *mut c_void) -> &'static mut Fake {
    // SAFETY: every test passes a live `Fake` as user data.
    unsafe { &mut *user_data.cast::<Fake>() }
}

fn text<'a>(ptr: *const c_char) -> &'a str {
    // SAFETY: the library passes NUL-terminated UTF-8.
    unsafe { CStr::from_ptr(ptr) }.to_str().unwrap()
}

fn ok(reply: *mut Reply, data: &str) {
    // SAFETY: a reply from the library, data valid for the call.
    unsafe { rollingops_reply_ok(reply, data.as_ptr().cast(), data.len()) }
}

fn err(reply: *mut Reply, code: i32, message: &str) {
    // SAFETY: as above.
    unsafe { rollingops_reply_error(reply, code, message.as_ptr().cast(), message.len()) }
}

unsafe extern "C" fn unit_name(ud: *mut c_void, reply: *mut Reply) {
    let f = fake(ud);
    if f.fail_unit_name {
        err(reply, code::HOST, "no JUJU_UNIT_NAME");
    } else {
        ok(reply, &f.unit.clone());
    }
}
unsafe extern "C" fn is_leader(ud: *mut c_void, reply: *mut Reply) {
    ok(reply, if fake(ud).leader { "true" } else { "false" });
}
unsafe extern "C" fn relation_ids(_: *mut c_void, endpoint: *const c_char, reply: *mut Reply) {
    ok(
        reply,
        if text(endpoint) == "restart" {
            "[7]"
        } else {
            "[]"
        },
    );
}
unsafe extern "C" fn relation_units(ud: *mut c_void, _: u32, reply: *mut Reply) {
    let f = fake(ud);
    let others: Vec<&String> = f.units.keys().filter(|u| **u != f.unit).collect();
    ok(reply, &serde_json::to_string(&others).unwrap());
}
unsafe extern "C" fn relation_get(ud: *mut c_void, _: u32, unit: *const c_char, reply: *mut Reply) {
    let f = fake(ud);
    let bag = if unit.is_null() {
        f.app.clone()
    } else {
        f.units.get(text(unit)).cloned().unwrap_or_default()
    };
    ok(reply, &serde_json::to_string(&bag).unwrap());
}
unsafe extern "C" fn relation_set(
    ud: *mut c_void,
    _: u32,
    app: bool,
    pairs: *const c_char,
    reply: *mut Reply,
) {
    let f = fake(ud);
    let pairs: Vec<(String, String)> = serde_json::from_str(text(pairs)).unwrap();
    let unit = f.unit.clone();
    let bag = if app {
        &mut f.app
    } else {
        f.units.entry(unit).or_default()
    };
    for (k, v) in pairs {
        if v.is_empty() {
            bag.remove(&k);
        } else {
            bag.insert(k, v);
        }
    }
    ok(reply, "");
}
unsafe extern "C" fn log(ud: *mut c_void, _: i32, message: *const c_char) {
    fake(ud).logs.push(text(message).into());
}
unsafe extern "C" fn dispatch(ud: *mut c_void, event: *const c_char, reply: *mut Reply) {
    fake(ud).dispatched.push((text(event).into(), 0));
    ok(reply, "");
}
unsafe extern "C" fn dispatch_after(
    ud: *mut c_void,
    event: *const c_char,
    delay_ms: u32,
    reply: *mut Reply,
) {
    fake(ud).dispatched.push((text(event).into(), delay_ms));
    ok(reply, "");
}
unsafe extern "C" fn now_micros(ud: *mut c_void) -> i64 {
    match fake(ud).now {
        0 => 1_777_636_800_000_000,
        now => now,
    }
}
unsafe extern "C" fn run_callback(
    ud: *mut c_void,
    id: *const c_char,
    kwargs: *const c_char,
    reply: *mut Reply,
) {
    let f = fake(ud);
    f.calls.push((text(id).into(), text(kwargs).into()));
    if let Some(session) = f.reenter {
        let mut message = std::ptr::null_mut();
        let mut state = std::ptr::null_mut();
        // SAFETY: a live session (this call is inside it).
        f.reentry_code = Some(unsafe { rollingops_state(session, &mut state, &mut message) });
        // SAFETY: strings from the library.
        unsafe { rollingops_string_free(message) };
    }
    match &f.callback_reply {
        Some((code, message)) => err(reply, *code, message),
        None => {
            let answer = f.answers.get(text(id)).cloned();
            ok(reply, answer.as_deref().unwrap_or("null"))
        }
    }
}
unsafe extern "C" fn sync_acquire(ud: *mut c_void, _: *const c_char, _: i64, reply: *mut Reply) {
    match &fake(ud).sync_reply {
        Some((code, message)) => err(reply, *code, message),
        None => ok(reply, ""),
    }
}
unsafe extern "C" fn sync_release(_: *mut c_void, _: *const c_char, reply: *mut Reply) {
    ok(reply, "");
}

fn vtable(f: &mut Fake) -> HostVtable {
    HostVtable {
        user_data: (f as *mut Fake).cast(),
        unit_name: Some(unit_name),
        model_uuid: None,
        is_leader: Some(is_leader),
        relation_ids: Some(relation_ids),
        relation_units: Some(relation_units),
        relation_get: Some(relation_get),
        relation_set: Some(relation_set),
        secret_get: None,
        secret_add: None,
        log: Some(log),
        dispatch: Some(dispatch),
        now_micros: Some(now_micros),
        sleep_ms: None,
        run_callback: Some(run_callback),
        sync_backend_acquire: Some(sync_acquire),
        sync_backend_release: Some(sync_release),
        start_worker: None,
        secret_grant: None,
        relation_get_remote_app: None,
        dispatch_after: Some(dispatch_after),
    }
}

fn runtime() -> *const RuntimeHandle {
    struct Shared(*mut RuntimeHandle);
    // SAFETY: the runtime is shared read-only, as the header allows.
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    static RUNTIME: OnceLock<Shared> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let mut rt = std::ptr::null_mut();
            let mut message = std::ptr::null_mut();
            // SAFETY: valid out-pointers.
            let code = unsafe { rollingops_runtime_new(std::ptr::null(), &mut rt, &mut message) };
            assert_eq!(code, code::OK);
            Shared(rt)
        })
        .0
}

const CONFIG: &CStr =
    cr#"{"peer_relation_name":"restart","callback_ids":["restart"],"sync_lock_ids":["lock"]}"#;

fn relation(units: &[&str]) -> Fake {
    Fake {
        unit: units[0].into(),
        units: units
            .iter()
            .map(|u| (u.to_string(), BTreeMap::new()))
            .collect(),
        ..Fake::default()
    }
}

/// A session over `f`, or the failure.
fn new_session(f: &mut Fake, config: &CStr) -> Result<*mut SessionHandle, (i32, String)> {
    let vt = vtable(f);
    let mut session = std::ptr::null_mut();
    let mut message = std::ptr::null_mut();
    // SAFETY: valid pointers; `f` outlives the session in every test.
    let code = unsafe {
        rollingops_session_new(runtime(), config.as_ptr(), &vt, &mut session, &mut message)
    };
    if code == code::OK {
        assert!(message.is_null());
        Ok(session)
    } else {
        Err((code, take(message)))
    }
}

fn take(s: *mut c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: a string from the library.
    let owned = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_owned();
    unsafe { rollingops_string_free(s) };
    owned
}

fn call(f: impl FnOnce(*mut *mut c_char) -> i32) -> Result<(), (i32, String)> {
    let mut message = std::ptr::null_mut();
    match f(&mut message) {
        code::OK => Ok(()),
        code => Err((code, take(message))),
    }
}

fn state(session: *mut SessionHandle) -> Result<String, (i32, String)> {
    let mut out = std::ptr::null_mut();
    // SAFETY: a live session, valid out-pointers.
    call(|m| unsafe { rollingops_state(session, &mut out, m) })?;
    Ok(take(out))
}

fn request(
    session: *mut SessionHandle,
    id: &str,
    kwargs: &str,
    max_retry: Option<i64>,
) -> Result<(), (i32, String)> {
    let id = CString::new(id).unwrap();
    let kwargs = CString::new(kwargs).unwrap();
    let max = max_retry
        .as_ref()
        .map_or(std::ptr::null(), |m| m as *const i64);
    // SAFETY: a live session, valid strings.
    call(|m| unsafe {
        rollingops_request_async_lock(session, id.as_ptr(), kwargs.as_ptr(), max, m)
    })
}

fn event(session: *mut SessionHandle, json: &str) -> Result<(), (i32, String)> {
    let json = CString::new(json).unwrap();
    // SAFETY: a live session, a valid string.
    call(|m| unsafe { rollingops_handle_event(session, json.as_ptr(), m) })
}

fn free(session: *mut SessionHandle) {
    // SAFETY: a session from `new_session`.
    unsafe { rollingops_session_free(session) }
}

#[test]
fn a_request_is_granted_and_run_through_the_c_abi() {
    let mut f = relation(&["app/1", "app/0"]);
    let s = new_session(&mut f, CONFIG).unwrap();
    assert_eq!(
        state(s).unwrap(),
        r#"{"status":"idle","processing_backend":"peer"}"#
    );
    request(s, "restart", r#"{"delay":1}"#, Some(2)).unwrap();
    assert_eq!(
        state(s).unwrap(),
        r#"{"status":"waiting","processing_backend":"peer"}"#
    );
    let mut waiting = false;
    // SAFETY: a live session.
    call(|m| unsafe {
        rollingops_is_waiting(s, std::ptr::null(), c"restart".as_ptr(), &mut waiting, m)
    })
    .unwrap();
    assert!(waiting);
    free(s);

    // The leader grants app/1; app/1 runs its callback on the next relation-changed.
    let mut leader = Fake {
        unit: "app/0".into(),
        leader: true,
        app: f.app.clone(),
        units: f.units.clone(),
        ..Fake::default()
    };
    let s = new_session(&mut leader, CONFIG).unwrap();
    event(s, r#""peer-relation-changed""#).unwrap();
    free(s);
    assert_eq!(leader.app["granted_unit"], "app/1");
    f.app = leader.app.clone();
    let s = new_session(&mut f, CONFIG).unwrap();
    assert!(state(s).unwrap().contains("granted"));
    event(s, r#""peer-relation-changed""#).unwrap();
    assert_eq!(
        f.calls,
        [("restart".to_string(), r#"{"delay":1}"#.to_string())]
    );
    let mut describe = std::ptr::null_mut();
    // SAFETY: a live session.
    call(|m| unsafe { rollingops_describe(s, &mut describe, m) }).unwrap();
    assert!(take(describe).starts_with('{'));
    free(s);
}

#[test]
fn library_errors_carry_their_wit_code_and_message() {
    let mut f = relation(&["app/0"]);
    let s = new_session(&mut f, CONFIG).unwrap();
    let (code, message) = request(s, "nope", "{}", None).unwrap_err();
    assert_eq!(
        (code, message.as_str()),
        (code::INVALID_LOCK_REQUEST, "Unknown callback_id: nope")
    );
    assert_eq!(
        request(s, "restart", "[]", None).unwrap_err().0,
        code::INVALID_LOCK_REQUEST
    );
    assert_eq!(
        request(s, "restart", "{}", Some(-1)).unwrap_err().0,
        code::INVALID_LOCK_REQUEST
    );
    assert_eq!(
        event(s, r#""no-such-event""#).unwrap_err().0,
        code::BAD_CALL
    );
    assert_eq!(event(s, r#"{"peer-relation-departed":"app/9"}"#), Ok(()));
    free(s);

    let mut alone = Fake {
        unit: "app/0".into(),
        ..Fake::default()
    };
    let s = new_session(
        &mut alone,
        cr#"{"peer_relation_name":"other","callback_ids":["restart"]}"#,
    )
    .unwrap();
    assert_eq!(
        request(s, "restart", "{}", None),
        Err((code::NO_RELATION, "No other peer relation yet.".into()))
    );
    free(s);
}

#[test]
fn sync_backend_replies_map_to_timeout_and_sync_lock() {
    let mut f = relation(&["app/0"]);
    f.sync_reply = Some((code::TIMEOUT, "slow".into()));
    let s = new_session(&mut f, CONFIG).unwrap();
    let timeout = 5u32;
    // SAFETY: a live session.
    let acquire =
        |s| call(|m| unsafe { rollingops_acquire_sync_lock(s, c"lock".as_ptr(), &timeout, m) });
    assert_eq!(acquire(s).unwrap_err().0, code::TIMEOUT);
    f.sync_reply = Some((code::RAISED, "boom".into()));
    assert_eq!(acquire(s).unwrap_err().0, code::SYNC_LOCK);
    f.sync_reply = None;
    acquire(s).unwrap();
    // SAFETY: a live session.
    call(|m| unsafe { rollingops_release_sync_lock(s, c"lock".as_ptr(), m) }).unwrap();
    free(s);
}

#[test]
fn bad_configs_and_missing_host_functions_are_bad_calls() {
    let mut f = relation(&["app/0"]);
    for config in [
        c"not json",
        c"[]",
        cr#"{"callback_ids":[]}"#,
        cr#"{"peer_relation_name":"restart","typo":1}"#,
        cr#"{"peer_relation_name":"restart","callback_ids":"restart"}"#,
    ] {
        assert_eq!(
            new_session(&mut f, config).unwrap_err().0,
            code::BAD_CALL,
            "{config:?}"
        );
    }
    let (code, message) = new_session(
        &mut f,
        cr#"{"peer_relation_name":"restart","cluster_id":"c1"}"#,
    )
    .unwrap_err();
    assert_eq!(
        (code, message.as_str()),
        (
            code::INVALID_ARGUMENT,
            "cluster_id provided without etcd_relation_name."
        )
    );

    let mut vt = vtable(&mut f);
    vt.relation_get = None;
    let mut session = std::ptr::null_mut();
    let mut message = std::ptr::null_mut();
    // SAFETY: valid pointers.
    let code = unsafe {
        rollingops_session_new(runtime(), CONFIG.as_ptr(), &vt, &mut session, &mut message)
    };
    assert_eq!(code, code::BAD_CALL);
    assert!(session.is_null());
    assert_eq!(take(message), "host functions missing: relation_get");
    // NULL handles are refused, never dereferenced.
    // SAFETY: NULL is allowed.
    assert_eq!(
        call(|m| unsafe {
            rollingops_handle_event(std::ptr::null_mut(), c"\"update-status\"".as_ptr(), m)
        })
        .unwrap_err()
        .0,
        code::BAD_CALL
    );
}

#[test]
fn hook_tools_need_only_the_charm_functions_and_a_juju_environment() {
    let mut f = relation(&["app/0"]);
    let mut vt = vtable(&mut f);
    let charm_only = HostVtable {
        unit_name: None,
        is_leader: None,
        relation_ids: None,
        relation_units: None,
        relation_get: None,
        relation_set: None,
        log: None,
        dispatch: None,
        now_micros: None,
        ..vt
    };
    let config =
        cr#"{"peer_relation_name":"restart","hook_tools":true,"callback_ids":["restart"]}"#;
    let mut session = std::ptr::null_mut();
    let mut message = std::ptr::null_mut();
    if std::env::var_os("JUJU_UNIT_NAME").is_none() {
        // SAFETY: valid pointers.
        let code = unsafe {
            rollingops_session_new(
                runtime(),
                config.as_ptr(),
                &charm_only,
                &mut session,
                &mut message,
            )
        };
        assert_eq!(code, code::HOST);
        assert!(take(message).contains("JUJU_UNIT_NAME"));
    }
    vt.run_callback = None;
    // SAFETY: valid pointers.
    let code = unsafe {
        rollingops_session_new(runtime(), config.as_ptr(), &vt, &mut session, &mut message)
    };
    assert_eq!(code, code::BAD_CALL);
    assert_eq!(take(message), "host functions missing: run_callback");
}

#[test]
fn reentrant_calls_are_refused_and_panics_break_only_their_session() {
    let mut f = relation(&["app/0"]);
    f.leader = true;
    let s = new_session(&mut f, CONFIG).unwrap();
    request(s, "restart", "{}", None).unwrap();
    free(s);
    // The leader granted itself and dispatched `lock-granted`, where the callback runs; the
    // callback's call back into the session is refused.
    let s = new_session(&mut f, CONFIG).unwrap();
    f.reenter = Some(s);
    event(s, r#""lock-granted""#).unwrap();
    assert_eq!(f.calls.len(), 1);
    assert_eq!(f.reentry_code, Some(code::BAD_CALL));
    free(s);

    let mut g = relation(&["app/0"]);
    g.leader = true;
    let s = new_session(&mut g, CONFIG).unwrap();
    // A host that cannot name its unit fails the hook: the library panics inside the
    // component call, and the panic stops at the boundary.
    g.fail_unit_name = true;
    let (code, message) = request(s, "restart", "{}", None).unwrap_err();
    assert_eq!(code, code::PANIC, "{message}");
    assert!(message.contains("no JUJU_UNIT_NAME"), "{message}");
    g.fail_unit_name = false;
    assert_eq!(state(s).unwrap_err().0, code::PANIC);
    free(s);
    // Other sessions are unaffected.
    let mut h = relation(&["app/0"]);
    let s = new_session(&mut h, CONFIG).unwrap();
    assert!(state(s).is_ok());
    free(s);
}

#[test]
fn callback_replies_map_to_outcomes() {
    for (reply, intent) in [
        (None, "idle"),
        (Some((code::RAISED, "failed".to_string())), "retry-release"),
        (Some((code::MISSING, String::new())), "idle"),
    ] {
        let mut f = relation(&["app/0"]);
        f.leader = true;
        f.callback_reply = reply;
        let s = new_session(&mut f, CONFIG).unwrap();
        request(s, "restart", "{}", None).unwrap();
        free(s);
        let s = new_session(&mut f, CONFIG).unwrap();
        event(s, r#""lock-granted""#).unwrap();
        free(s);
        assert_eq!(f.calls.len(), 1);
        assert_eq!(f.units["app/0"]["state"], intent);
    }
}

#[test]
fn code_classes_match_the_host_library() {
    for code in code::NO_RELATION..=code::HOST {
        let class = rollingops::runtime::class(&wit_error(code, String::new()));
        // SAFETY: a static string.
        let ours = unsafe { CStr::from_ptr(rollingops_code_class(code)) };
        assert_eq!(ours.to_str().unwrap(), class);
        assert_eq!(wit_code(&wit_error(code, String::new())), code);
    }
    // SAFETY: static strings.
    unsafe {
        assert_eq!(CStr::from_ptr(rollingops_code_class(code::TRAP)), c"Trap");
        assert_eq!(CStr::from_ptr(rollingops_code_class(99)), c"Unknown");
        assert_eq!(
            CStr::from_ptr(rollingops_version()).to_str().unwrap(),
            env!("CARGO_PKG_VERSION")
        );
    }
    assert_eq!(rollingops_abi_version(), ABI_VERSION);
}

#[test]
fn header_declares_every_export() {
    let header = include_str!("../include/rollingops.h");
    let source = include_str!("lib.rs");
    let exports: Vec<&str> = source
        .split("pub unsafe extern \"C\" fn ")
        .chain(source.split("pub extern \"C\" fn "))
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.starts_with("rollingops_"))
        .collect();
    assert!(exports.len() >= 23, "{exports:?}");
    for name in exports {
        assert!(
            header.contains(&format!("{name}(")),
            "{name} is not in rollingops.h"
        );
    }
    for (name, value) in [
        ("ROLLINGOPS_OK", code::OK),
        ("ROLLINGOPS_NO_RELATION", code::NO_RELATION),
        ("ROLLINGOPS_HOST", code::HOST),
        ("ROLLINGOPS_RAISED", code::RAISED),
        ("ROLLINGOPS_MISSING", code::MISSING),
        ("ROLLINGOPS_LOAD", code::LOAD),
        ("ROLLINGOPS_TRAP", code::TRAP),
        ("ROLLINGOPS_BAD_CALL", code::BAD_CALL),
        ("ROLLINGOPS_PANIC", code::PANIC),
    ] {
        assert!(header.contains(&format!("{name} = {value}")), "{name}");
    }
    assert!(header.contains(&format!("#define ROLLINGOPS_ABI_VERSION {ABI_VERSION}")));
}

// =====================================================================================
// ABI version 2: dispatch_after and the issue-8 manager calls

const FEATURES_CONFIG: &CStr =
    cr#"{"peer_relation_name":"restart","callback_ids":["restart","healthy","done"]}"#;

fn opt_c(text: Option<&str>) -> Option<CString> {
    text.map(|t| CString::new(t).unwrap())
}

fn ptr(text: &Option<CString>) -> *const c_char {
    text.as_ref().map_or(std::ptr::null(), |t| t.as_ptr())
}

fn request_lock(
    session: *mut SessionHandle,
    id: &str,
    kwargs: Option<&str>,
    options: Option<&str>,
) -> Result<(), (i32, String)> {
    let id = CString::new(id).unwrap();
    let (kwargs, options) = (opt_c(kwargs), opt_c(options));
    // SAFETY: a live session, valid strings or NULL.
    call(|m| unsafe {
        rollingops_request_lock(session, id.as_ptr(), ptr(&kwargs), ptr(&options), m)
    })
}

fn control(session: *mut SessionHandle, json: &str) -> Result<u32, (i32, String)> {
    let json = CString::new(json).unwrap();
    let mut changed = u32::MAX;
    // SAFETY: a live session, valid pointers.
    call(|m| unsafe { rollingops_control(session, json.as_ptr(), &mut changed, m) })?;
    Ok(changed)
}

fn set_policy(session: *mut SessionHandle, json: &str) -> Result<(), (i32, String)> {
    let json = CString::new(json).unwrap();
    // SAFETY: a live session, a valid string.
    call(|m| unsafe { rollingops_set_policy(session, json.as_ptr(), m) })
}

fn start_roll(
    session: *mut SessionHandle,
    id: &str,
    kwargs: Option<&str>,
    options: Option<&str>,
) -> Result<u64, (i32, String)> {
    let id = CString::new(id).unwrap();
    let (kwargs, options) = (opt_c(kwargs), opt_c(options));
    let mut generation = 0;
    // SAFETY: a live session, valid pointers.
    call(|m| unsafe {
        rollingops_start_roll(
            session,
            id.as_ptr(),
            ptr(&kwargs),
            ptr(&options),
            &mut generation,
            m,
        )
    })?;
    Ok(generation)
}

/// One hook on `f`: a fresh session, `body`, free.
fn in_hook<T>(f: &mut Fake, body: impl FnOnce(*mut SessionHandle) -> T) -> T {
    let s = new_session(f, FEATURES_CONFIG).unwrap();
    let out = body(s);
    free(s);
    out
}

#[test]
fn a_health_gate_waits_through_dispatch_after_and_passes_on_true() {
    let mut f = relation(&["app/0"]);
    f.leader = true;
    f.now = 1_777_636_800_000_000;
    in_hook(&mut f, |s| {
        request_lock(
            s,
            "restart",
            Some(r#"{"delay":1}"#),
            Some(r#"{"health_check":"healthy","health_timeout_seconds":60,"generation_kwarg":"gen"}"#),
        )
    })
    .unwrap();
    assert_eq!(f.dispatched, [("rollingops_lock_granted".to_string(), 0)]);
    // The turn: the operation runs (with its generation), then the gate holds the lock and
    // asks for a hook in 2 s instead of sleeping.
    f.dispatched.clear();
    f.answers.insert("healthy".into(), "false".into());
    in_hook(&mut f, |s| event(s, r#""lock-granted""#)).unwrap();
    assert_eq!(f.calls.len(), 1, "{:?}", f.calls);
    assert_eq!(f.calls[0].0, "restart");
    assert!(f.calls[0].1.contains(r#""gen":"#), "{:?}", f.calls);
    assert_eq!(
        f.dispatched,
        [("rollingops_lock_granted".to_string(), 2000)]
    );
    assert_eq!(f.app["granted_unit"], "app/0");
    // Too early: nothing runs. Once due, the check answers false: retry later.
    f.dispatched.clear();
    in_hook(&mut f, |s| event(s, r#""lock-granted""#)).unwrap();
    assert_eq!(f.calls.len(), 1);
    f.now += 2_000_000;
    in_hook(&mut f, |s| event(s, r#""lock-granted""#)).unwrap();
    assert_eq!(f.calls.last().unwrap().0, "healthy");
    let (event_name, delay) = f.dispatched.last().cloned().unwrap();
    assert_eq!(event_name, "rollingops_lock_granted");
    assert!(delay > 2000, "the back-off grows: {delay}");
    assert_eq!(f.app["granted_unit"], "app/0");
    // true passes (a boolean reply is mapped to "true"; Go's health checks send the
    // string): the lock moves on.
    f.answers.insert("healthy".into(), "true".into());
    f.now += i64::from(delay) * 1000;
    in_hook(&mut f, |s| event(s, r#""lock-granted""#)).unwrap();
    assert_eq!(f.calls.last().unwrap().0, "healthy");
    assert!(!f.app.contains_key("granted_unit"), "{:?}", f.app);
    assert_eq!(f.units["app/0"]["state"], "idle");
}

#[test]
fn without_dispatch_after_the_host_error_is_logged_and_the_hook_goes_on() {
    let mut f = relation(&["app/0"]);
    f.leader = true;
    f.answers.insert("healthy".into(), r#""false""#.into());
    let mut vt = vtable(&mut f);
    vt.dispatch_after = None;
    let hook = |f: &mut Fake, body: &dyn Fn(*mut SessionHandle) -> Result<(), (i32, String)>| {
        let mut session = std::ptr::null_mut();
        let mut message = std::ptr::null_mut();
        let vt = HostVtable {
            user_data: (f as *mut Fake).cast(),
            ..vt
        };
        // SAFETY: valid pointers; `f` outlives the session.
        let code = unsafe {
            rollingops_session_new(
                runtime(),
                FEATURES_CONFIG.as_ptr(),
                &vt,
                &mut session,
                &mut message,
            )
        };
        assert_eq!(code, code::OK, "{}", take(message));
        let result = body(session);
        free(session);
        result
    };
    hook(&mut f, &|s| {
        request_lock(s, "restart", None, Some(r#"{"health_check":"healthy"}"#))
    })
    .unwrap();
    hook(&mut f, &|s| event(s, r#""lock-granted""#)).unwrap();
    assert_eq!(f.calls.len(), 1);
    assert!(
        f.logs
            .iter()
            .any(|l| l.contains("this host cannot dispatch a hook after a delay")),
        "{:#?}",
        f.logs
    );
    // The gate still holds the lock; update-status (or any later hook) picks it up.
    assert_eq!(f.app["granted_unit"], "app/0");
}

#[test]
fn policy_rank_controls_and_rolls_through_the_c_abi() {
    let mut f = relation(&["app/0"]);
    f.leader = true;
    in_hook(&mut f, |s| {
        // Every unit (just this one) advertises the features once it has run a hook.
        event(s, r#""update-status""#)
    })
    .unwrap();
    in_hook(&mut f, |s| {
        set_policy(
            s,
            r#"{"max_concurrent":2,"grant_timeout_seconds":600,"rank_ordering":true}"#,
        )
        .unwrap();
        set_policy(s, "{}").unwrap();
        assert_eq!(
            set_policy(s, r#"{"max_concurrent":0}"#).unwrap_err().0,
            code::INVALID_ARGUMENT
        );
        for bad in [r#"{"max_concurrent":-1}"#, r#"{"typo":1}"#, "[]", "nope"] {
            assert_eq!(set_policy(s, bad).unwrap_err().0, code::BAD_CALL, "{bad}");
        }
        // SAFETY: a live session.
        call(|m| unsafe { rollingops_set_rank(s, -3, m) }).unwrap();
        assert_eq!(control(s, r#"{"pause":"maintenance"}"#), Ok(1));
        assert_eq!(control(s, r#"{"pause":"again"}"#), Ok(0));
        assert_eq!(control(s, r#""resume""#), Ok(1));
        assert_eq!(control(s, r#""cancel""#), Ok(0));
        assert_eq!(control(s, r#""force-release""#), Ok(0));
        assert_eq!(
            control(s, r#"{"force-release":"app/7"}"#).unwrap_err().0,
            code::INVALID_ARGUMENT
        );
        for bad in [r#""pause""#, r#"{"cancel":1}"#, r#""stop""#, "{}", "nope"] {
            assert_eq!(control(s, bad).unwrap_err().0, code::BAD_CALL, "{bad}");
        }
        // A control without an out-pointer still works.
        // SAFETY: a live session; NULL `changed` is allowed.
        call(|m| unsafe { rollingops_control(s, c"\"resume\"".as_ptr(), std::ptr::null_mut(), m) })
            .unwrap();
        let generation = start_roll(
            s,
            "restart",
            Some(r#"{"delay":0}"#),
            Some(r#"{"health_check":"healthy","on_complete":"done"}"#),
        )
        .unwrap();
        assert_eq!(generation, 1);
        assert_eq!(
            start_roll(s, "restart", None, None).unwrap_err().0,
            code::INVALID_ARGUMENT,
            "a roll is in progress"
        );
        assert_eq!(
            start_roll(s, "restart", None, Some(r#"{"on_complete":7}"#))
                .unwrap_err()
                .0,
            code::BAD_CALL
        );
    });
    assert_eq!(f.units["app/0"]["rollingops-rank"], "-3");
    assert!(f.app.contains_key("rollingops-roll"), "{:?}", f.app);

    // request-lock's own checks are the component's.
    let mut g = relation(&["app/0"]);
    in_hook(&mut g, |s| {
        assert_eq!(
            request_lock(s, "restart", None, Some(r#"{"max_retry":-1}"#))
                .unwrap_err()
                .0,
            code::INVALID_LOCK_REQUEST
        );
        assert_eq!(
            request_lock(s, "restart", None, Some(r#"{"health_check":"nope"}"#)),
            Err((
                code::INVALID_LOCK_REQUEST,
                "Unknown health_check callback: nope".into()
            ))
        );
        assert_eq!(
            request_lock(s, "restart", None, Some(r#"{"health_timeout_seconds":-5}"#))
                .unwrap_err()
                .0,
            code::BAD_CALL
        );
        request_lock(s, "restart", None, None).unwrap();
        request_lock(s, "restart", Some(r#"{"n":2}"#), Some(r#"{"max_retry":2}"#)).unwrap();
        assert_eq!(control(s, r#"{"cancel":"restart"}"#), Ok(2));
        // Leader-only calls on a follower.
        assert_eq!(set_policy(s, "{}").unwrap_err().0, code::INVALID_ARGUMENT);
        assert_eq!(
            start_roll(s, "restart", None, None).unwrap_err().0,
            code::INVALID_ARGUMENT
        );
    });
    // NULL sessions are refused.
    // SAFETY: NULL is allowed.
    assert_eq!(
        call(|m| unsafe { rollingops_set_rank(std::ptr::null_mut(), 1, m) })
            .unwrap_err()
            .0,
        code::BAD_CALL
    );
}

#[test]
fn json_forms_of_the_new_arguments() {
    let control = |json: &str| format!("{:?}", parse_control(json).unwrap());
    for (json, expected) in [
        (r#"{"pause":"why"}"#, Control::Pause("why".into())),
        (r#""resume""#, Control::Resume),
        (r#"{"resume":null}"#, Control::Resume),
        (r#""cancel""#, Control::Cancel(None)),
        (
            r#"{"cancel":"restart"}"#,
            Control::Cancel(Some("restart".into())),
        ),
        (r#"{"force-release":null}"#, Control::ForceRelease(None)),
        (
            r#"{"force-release":"app/1"}"#,
            Control::ForceRelease(Some("app/1".into())),
        ),
    ] {
        assert_eq!(control(json), format!("{expected:?}"), "{json}");
    }
    assert!(parse_control(r#"{"pause":null}"#).is_err());
    assert!(parse_control(r#"{"cancel":null,"resume":null}"#).is_err());
    let policy = parse_policy("{}").unwrap();
    assert_eq!(
        (
            policy.max_concurrent,
            policy.grant_timeout_seconds,
            policy.rank_ordering,
            policy.halt_on_health_failure
        ),
        (1, None, false, true)
    );
    let options = parse_request_options(None).unwrap();
    assert_eq!(options.max_retry, None);
    assert_eq!(options.health_check, None);
    let options = parse_request_options(Some(
        r#"{"max_retry":3,"health_check":"h","health_timeout_seconds":9,"generation_kwarg":"g"}"#,
    ))
    .unwrap();
    assert_eq!(
        (
            options.max_retry,
            options.health_check.as_deref(),
            options.health_timeout_seconds,
            options.generation_kwarg.as_deref()
        ),
        (Some(3), Some("h"), Some(9), Some("g"))
    );
    let roll = parse_roll("r", "{}", Some(r#"{"on_complete":"d"}"#)).unwrap();
    assert_eq!(roll.on_complete.as_deref(), Some("d"));
    assert!(parse_roll("r", "{}", Some(r#"{"kwargs":{}}"#)).is_err());
}
