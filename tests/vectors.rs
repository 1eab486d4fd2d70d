//! Conformance vectors: `tests/vectors/*.json`, one scenario each, in the format of
//! `tests/vectors/README.md`. Every host (Rust here, Go in `host/go/vectors_test.go`,
//! Python) replays them through the same component and must reproduce the recorded
//! outputs exactly.
//!
//! The scenarios are defined below. `ROLLINGOPS_REGENERATE_VECTORS=1 cargo test -p
//! rollingops-tests vectors` rewrites the files from the real component; otherwise every
//! file is replayed and must reproduce itself byte for byte, and the files must match the
//! scenarios defined here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rollingops::runtime::{case_name, message};
use rollingops::{
    BagOwner, CallbackOutcome, Config, Event, Host, LogLevel, ProcessingBackend, Session, Status,
    SyncBackendError, WitError,
};
use serde_json::{Map, Value, json};

/// 2026-05-01T12:00:00Z in microseconds: hooks' clocks are offsets from it.
const T0: i64 = 1_777_636_800_000_000;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

// =====================================================================================
// Replaying one vector

/// The replay host's world: the relation, the scripts and what this call did.
struct World {
    endpoint: String,
    relation_id: Option<u32>,
    units: Vec<String>,
    app: BTreeMap<String, String>,
    bags: BTreeMap<String, BTreeMap<String, String>>,
    callbacks: Map<String, Value>,
    sync_backends: Map<String, Value>,
    /// How many times each script was used: `callback:<id>`, `acquire:<id>`, `release:<id>`.
    uses: BTreeMap<String, usize>,
    unit: String,
    leader: bool,
    now: i64,
    effects: Vec<Value>,
}

impl World {
    /// The next outcome of a script: replies in order, the last one repeating; a missing
    /// script answers `"missing"`.
    fn next(&mut self, key: String, script: Option<&Value>) -> Value {
        let Some(replies) = script.and_then(Value::as_array).filter(|r| !r.is_empty()) else {
            return json!("missing");
        };
        let used = self.uses.entry(key).or_default();
        let reply = replies[(*used).min(replies.len() - 1)].clone();
        *used += 1;
        reply
    }
}

#[derive(Clone)]
struct VectorHost(Arc<Mutex<World>>);

impl VectorHost {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warning",
        LogLevel::Error => "error",
    }
}

impl Host for VectorHost {
    fn unit_name(&mut self) -> String {
        self.world().unit.clone()
    }
    fn model_uuid(&mut self) -> String {
        "00000000-0000-4000-8000-000000000000".into()
    }
    fn is_leader(&mut self) -> Result<bool, WitError> {
        Ok(self.world().leader)
    }
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, WitError> {
        let w = self.world();
        Ok(match w.relation_id {
            Some(id) if endpoint == w.endpoint => vec![id],
            _ => vec![],
        })
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, WitError> {
        let w = self.world();
        Ok(w.units.iter().filter(|u| **u != w.unit).cloned().collect())
    }
    fn relation_get(
        &mut self,
        _: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, WitError> {
        let w = self.world();
        let bag = match owner {
            BagOwner::App => Some(&w.app),
            BagOwner::Unit(unit) => w.bags.get(unit),
        };
        Ok(bag
            .map(|b| b.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), WitError> {
        let mut w = self.world();
        w.effects.push(json!({"relation-set": {
            "relation_id": relation_id,
            "app": app,
            "pairs": pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        }}));
        let unit = w.unit.clone();
        let bag = if app {
            &mut w.app
        } else {
            w.bags.entry(unit).or_default()
        };
        rollingops::sim::host::apply_writes(bag, pairs);
        Ok(())
    }
    fn log(&mut self, level: LogLevel, text: &str) {
        self.world()
            .effects
            .push(json!({"log": {"level": level_name(level), "message": text}}));
    }
    fn dispatch(&mut self, event: &str) -> Result<(), WitError> {
        self.world().effects.push(json!({ "dispatch": event }));
        Ok(())
    }
    fn now_micros(&mut self) -> i64 {
        self.world().now
    }
    fn sleep_ms(&mut self, _: u64) {}
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        let mut w = self.world();
        w.effects
            .push(json!({"run-callback": {"id": id, "kwargs_json": kwargs_json}}));
        let script = w.callbacks.get(id).cloned();
        match w.next(format!("callback:{id}"), script.as_ref()) {
            Value::Object(o) if o.contains_key("returned") => {
                CallbackOutcome::Returned(o["returned"].as_str().map(str::to_owned))
            }
            Value::Object(o) if o.contains_key("raised") => {
                CallbackOutcome::Raised(o["raised"].as_str().unwrap_or_default().to_owned())
            }
            _ => CallbackOutcome::Missing,
        }
    }
    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        let mut w = self.world();
        w.effects.push(json!({"sync-backend-acquire": {
            "id": id, "timeout_seconds": timeout_seconds,
        }}));
        let script = w.sync_backends.get(id).map(|s| s["acquire"].clone());
        sync_outcome(w.next(format!("acquire:{id}"), script.as_ref()))
    }
    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        let mut w = self.world();
        w.effects.push(json!({"sync-backend-release": {"id": id}}));
        let script = w.sync_backends.get(id).map(|s| s["release"].clone());
        sync_outcome(w.next(format!("release:{id}"), script.as_ref()))
    }
}

fn sync_outcome(reply: Value) -> Result<(), SyncBackendError> {
    match reply {
        Value::String(s) if s == "ok" => Ok(()),
        Value::String(s) if s == "timed-out" => Err(SyncBackendError::TimedOut),
        Value::Object(o) if o.contains_key("failed") => Err(SyncBackendError::Failed(
            o["failed"].as_str().unwrap_or_default().to_owned(),
        )),
        _ => Err(SyncBackendError::Missing),
    }
}

/// A call's result as JSON; a trap or a load failure is a bug, never a vector.
fn result_json<T>(result: Result<T, rollingops::Error>, ok: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(v) => json!({ "ok": ok(v) }),
        Err(rollingops::Error::Library(e)) => {
            json!({"error": {"case": case_name(&e), "message": message(&e)}})
        }
        Err(other) => panic!("not a library error: {other}"),
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::NotReady => "not-ready",
        Status::Waiting => "waiting",
        Status::Granted => "granted",
        Status::Idle => "idle",
    }
}

fn event_of(value: &Value) -> Event {
    match value {
        Value::String(name) => match name.as_str() {
            "peer-relation-changed" => Event::PeerRelationChanged,
            "leader-elected" => Event::LeaderElected,
            "update-status" => Event::UpdateStatus,
            "lock-granted" => Event::LockGranted,
            "etcd-failed" => Event::EtcdFailed,
            "etcd-relation-created" => Event::EtcdRelationCreated,
            "etcd-relation-changed" => Event::EtcdRelationChanged,
            "etcd-relation-broken" => Event::EtcdRelationBroken,
            other => panic!("unknown event {other}"),
        },
        Value::Object(o) => match o.iter().next() {
            Some((case, Value::String(arg))) if case == "peer-relation-departed" => {
                Event::PeerRelationDeparted(arg.clone())
            }
            Some((case, Value::String(arg))) if case == "secret-changed" => {
                Event::SecretChanged(arg.clone())
            }
            _ => panic!("unknown event {value}"),
        },
        _ => panic!("unknown event {value}"),
    }
}

fn opt_str(value: &Value) -> Option<&str> {
    value.as_str()
}

/// Run one call on a session.
fn call(session: &mut Session, call: &Value) -> Value {
    let (name, args) = call
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("a call is a one-key object");
    match name.as_str() {
        "request-async-lock" => result_json(
            session.request_async_lock(
                args["callback_id"].as_str().unwrap(),
                args["kwargs_json"].as_str().unwrap(),
                args["max_retry"].as_i64(),
            ),
            |()| Value::Null,
        ),
        "handle-event" => result_json(session.handle_event(&event_of(args)), |()| Value::Null),
        "state" => result_json(session.state(), |s| {
            let backend = match s.processing_backend {
                ProcessingBackend::Peer => "peer",
                ProcessingBackend::Etcd => "etcd",
            };
            json!({"status": status_name(s.status), "processing_backend": backend})
        }),
        "is-waiting" => result_json(
            session.is_waiting(opt_str(&args["unit_name"]), opt_str(&args["callback_id"])),
            Value::Bool,
        ),
        "acquire-sync-lock" => result_json(
            session.acquire_sync_lock(
                args["backend_id"].as_str().unwrap(),
                args["timeout_seconds"].as_u64().map(|t| t as u32),
            ),
            |()| Value::Null,
        ),
        "release-sync-lock" => result_json(
            session.release_sync_lock(args["backend_id"].as_str().unwrap()),
            |()| Value::Null,
        ),
        other => panic!("unknown call {other}"),
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn bag_json(bag: &BTreeMap<String, String>) -> Value {
    Value::Object(
        bag.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn config_of(value: &Value) -> Config {
    let strings = |key: &str| -> Vec<String> {
        value[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    Config {
        peer_relation_name: value["peer_relation_name"].as_str().unwrap().into(),
        etcd_relation_name: value["etcd_relation_name"].as_str().map(Into::into),
        cluster_id: value["cluster_id"].as_str().map(Into::into),
        base_dir: value["base_dir"].as_str().unwrap().into(),
        callback_ids: strings("callback_ids"),
        sync_lock_ids: strings("sync_lock_ids"),
    }
}

/// Replay a vector's inputs; returns the whole vector, outputs included.
fn run(input: &Value) -> Value {
    let config = config_of(&input["config"]);
    let units: Vec<String> = input["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    let initial = &input["initial"];
    let mut bags: BTreeMap<String, BTreeMap<String, String>> =
        units.iter().map(|u| (u.clone(), BTreeMap::new())).collect();
    for (unit, bag) in initial["units"].as_object().unwrap() {
        bags.insert(unit.clone(), string_map(bag));
    }
    let world = Arc::new(Mutex::new(World {
        endpoint: config.peer_relation_name.clone(),
        relation_id: input["relation_id"].as_u64().map(|id| id as u32),
        units: units.clone(),
        app: string_map(&initial["app"]),
        bags,
        callbacks: input["callbacks"].as_object().unwrap().clone(),
        sync_backends: input["sync_backends"].as_object().unwrap().clone(),
        uses: BTreeMap::new(),
        unit: String::new(),
        leader: false,
        now: 0,
        effects: Vec::new(),
    }));
    let host = VectorHost(world.clone());
    let scratch = std::env::temp_dir().join("rollingops-vectors-sandbox");
    let mut hooks = Vec::new();
    for hook in input["hooks"].as_array().unwrap() {
        {
            let mut w = world.lock().unwrap();
            w.unit = hook["unit"].as_str().unwrap().into();
            w.leader = hook["leader"].as_bool().unwrap();
            w.now = hook["now_micros"].as_i64().unwrap();
            w.effects.clear();
            if let Some(gone) = hook.get("depart").and_then(Value::as_str) {
                w.units.retain(|u| u != gone);
                w.bags.remove(gone);
            }
        }
        let sandbox =
            rollingops::sandbox::Sandbox::new(scratch.join("charm"), scratch.join("base"));
        let created = Session::new(
            rollingops_tests::runtime(),
            Box::new(host.clone()),
            sandbox,
            &config,
        );
        assert!(
            world.lock().unwrap().effects.is_empty(),
            "creating a manager had effects; the vector format has no place for them"
        );
        let mut out = Map::new();
        for key in ["unit", "leader", "now_micros", "depart"] {
            if let Some(value) = hook.get(key) {
                out.insert(key.into(), value.clone());
            }
        }
        let inputs = hook["calls"].as_array().unwrap();
        let mut calls = Vec::new();
        match created {
            Ok(mut session) => {
                out.insert("created".into(), json!({"ok": null}));
                for input in inputs {
                    world.lock().unwrap().effects.clear();
                    let result = call(&mut session, &input["call"]);
                    let effects = std::mem::take(&mut world.lock().unwrap().effects);
                    calls
                        .push(json!({"call": input["call"], "result": result, "effects": effects}));
                }
            }
            Err(e) => {
                assert!(inputs.is_empty(), "calls after a failed constructor");
                out.insert(
                    "created".into(),
                    result_json(Err::<(), _>(e), |()| Value::Null),
                );
            }
        }
        out.insert("calls".into(), Value::Array(calls));
        hooks.push(Value::Object(out));
    }
    let w = world.lock().unwrap();
    let mut vector = Map::new();
    for key in [
        "name",
        "description",
        "config",
        "relation_id",
        "units",
        "callbacks",
        "sync_backends",
        "initial",
    ] {
        vector.insert(key.into(), input[key].clone());
    }
    vector.insert("hooks".into(), Value::Array(hooks));
    let final_units: Map<String, Value> = w
        .units
        .iter()
        .map(|u| {
            (
                u.clone(),
                bag_json(&w.bags.get(u).cloned().unwrap_or_default()),
            )
        })
        .collect();
    vector.insert(
        "final".into(),
        json!({"app": bag_json(&w.app), "units": final_units}),
    );
    Value::Object(vector)
}

/// The inputs of a vector: everything but the outputs.
fn inputs_of(vector: &Value) -> Value {
    let mut input = vector.clone();
    let object = input.as_object_mut().unwrap();
    object.remove("final");
    for hook in object["hooks"].as_array_mut().unwrap() {
        let hook = hook.as_object_mut().unwrap();
        hook.remove("created");
        for call in hook["calls"].as_array_mut().unwrap() {
            let call = call.as_object_mut().unwrap();
            call.remove("result");
            call.remove("effects");
        }
    }
    input
}

fn text(vector: &Value) -> String {
    serde_json::to_string_pretty(vector).unwrap() + "\n"
}

#[test]
fn vectors_replay_identically() {
    let scenarios: Vec<Value> = scenarios().into_iter().map(Scenario::into_value).collect();
    let mut names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "scenario names must be unique");

    if std::env::var_os("ROLLINGOPS_REGENERATE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(dir()).unwrap();
        for entry in std::fs::read_dir(dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(path).unwrap();
            }
        }
        for scenario in &scenarios {
            let name = scenario["name"].as_str().unwrap();
            std::fs::write(dir().join(format!("{name}.json")), text(&run(scenario))).unwrap();
        }
        eprintln!("wrote {} vectors to {}", scenarios.len(), dir().display());
        return;
    }

    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/vectors exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let stems: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        stems, names,
        "the vector files differ from the scenarios: run ROLLINGOPS_REGENERATE_VECTORS=1 cargo test -p rollingops-tests vectors"
    );
    for (path, scenario) in files.iter().zip({
        let mut sorted: Vec<&Value> = scenarios.iter().collect();
        sorted.sort_by_key(|s| s["name"].as_str().unwrap().to_owned());
        sorted
    }) {
        let recorded = std::fs::read_to_string(path).unwrap();
        let vector: Value = serde_json::from_str(&recorded).unwrap();
        assert_eq!(
            text(&inputs_of(&vector)),
            text(scenario),
            "{} differs from its scenario: run ROLLINGOPS_REGENERATE_VECTORS=1 cargo test -p rollingops-tests vectors",
            path.display()
        );
        let replayed = text(&run(&inputs_of(&vector)));
        if replayed != recorded {
            let line = replayed
                .lines()
                .zip(recorded.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{}: the component no longer reproduces this vector (first difference at line {}):\n  recorded: {}\n  replayed: {}\nIf the change is intended, run ROLLINGOPS_REGENERATE_VECTORS=1 cargo test -p rollingops-tests vectors",
                path.display(),
                line + 1,
                recorded.lines().nth(line).unwrap_or(""),
                replayed.lines().nth(line).unwrap_or(""),
            );
        }
    }
}

// =====================================================================================
// Scenarios

/// A scenario's inputs, built like the reference's unit-test charm (spec/peer.md §7).
struct Scenario {
    name: String,
    description: String,
    config: Map<String, Value>,
    relation_id: Option<u32>,
    units: Vec<String>,
    leader: Option<String>,
    callbacks: Map<String, Value>,
    sync_backends: Map<String, Value>,
    app: Map<String, Value>,
    bags: Map<String, Value>,
    hooks: Vec<Value>,
}

fn returns(value: Option<&str>) -> Value {
    json!([{ "returned": value }])
}

impl Scenario {
    /// The reference's test charm: app `charm` with `count` units (`charm/0` leads), peer
    /// relation `restart` (id 1), callbacks `_restart` (returns None), `_failed_restart`
    /// (RETRY_RELEASE), `_deferred_restart` (RETRY_HOLD), sync backend
    /// `stop-replset-member`.
    fn charm(name: &str, description: &str, count: usize) -> Self {
        let mut s = Scenario::app("charm", name, description, count);
        s.callbacks = Map::new();
        s.callbacks.insert("_restart".into(), returns(None));
        s.callbacks
            .insert("_failed_restart".into(), returns(Some("retry-release")));
        s.callbacks
            .insert("_deferred_restart".into(), returns(Some("retry-hold")));
        s.sync_backends.insert(
            "stop-replset-member".into(),
            json!({"acquire": ["ok"], "release": ["ok"]}),
        );
        s
    }

    /// Application `app` with `count` units (`<app>/0` leads) and one callback, `restart`,
    /// returning None.
    fn app(app: &str, name: &str, description: &str, count: usize) -> Self {
        let units: Vec<String> = (0..count).map(|i| format!("{app}/{i}")).collect();
        let mut callbacks = Map::new();
        callbacks.insert("restart".into(), returns(None));
        Scenario {
            name: name.into(),
            description: description.into(),
            config: Map::new(),
            relation_id: Some(1),
            leader: units.first().cloned(),
            units,
            callbacks,
            sync_backends: Map::new(),
            app: Map::new(),
            bags: Map::new(),
            hooks: Vec::new(),
        }
    }

    fn callback(mut self, id: &str, replies: Value) -> Self {
        self.callbacks.insert(id.into(), replies);
        self
    }

    fn sync_backend(mut self, id: &str, acquire: Value) -> Self {
        self.sync_backends
            .insert(id.into(), json!({"acquire": acquire, "release": ["ok"]}));
        self
    }

    fn config_value(mut self, key: &str, value: Value) -> Self {
        self.config.insert(key.into(), value);
        self
    }

    fn no_relation(mut self) -> Self {
        self.relation_id = None;
        self
    }

    fn elect(mut self, unit: Option<&str>) -> Self {
        self.leader = unit.map(Into::into);
        self
    }

    fn seed(mut self, unit: &str, pairs: &[(&str, &str)]) -> Self {
        let bag = self
            .bags
            .entry(unit.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap();
        for (k, v) in pairs {
            bag.insert(k.to_string(), json!(v));
        }
        self
    }

    fn seed_app(mut self, pairs: &[(&str, &str)]) -> Self {
        for (k, v) in pairs {
            self.app.insert(k.to_string(), json!(v));
        }
        self
    }

    /// One hook on `unit` at `T0 + micros`, making `calls`.
    fn hook(mut self, unit: &str, micros: i64, calls: Vec<Value>) -> Self {
        let leader = self.leader.as_deref() == Some(unit);
        self.hooks.push(json!({
            "unit": unit,
            "leader": leader,
            "now_micros": T0 + micros,
            "calls": calls.into_iter().map(|c| json!({"call": c})).collect::<Vec<_>>(),
        }));
        self
    }

    /// `unit` leaves the relation (its bag goes with it), then the leader runs
    /// `relation-departed` for it at `T0 + micros`.
    fn depart(mut self, unit: &str, micros: i64) -> Self {
        let leader = self
            .leader
            .clone()
            .expect("a leader runs relation-departed");
        self.hooks.push(json!({
            "unit": leader,
            "leader": true,
            "now_micros": T0 + micros,
            "depart": unit,
            "calls": [{"call": departed(unit)}],
        }));
        self
    }

    fn into_value(self) -> Value {
        let mut callback_ids: Vec<&String> = self.callbacks.keys().collect();
        callback_ids.sort();
        let mut sync_ids: Vec<&String> = self.sync_backends.keys().collect();
        sync_ids.sort();
        let mut config = json!({
            "peer_relation_name": "restart",
            "etcd_relation_name": null,
            "cluster_id": null,
            "base_dir": "/var/lib/rollingops",
            "callback_ids": callback_ids,
            "sync_lock_ids": sync_ids,
        });
        for (k, v) in self.config {
            config[k] = v;
        }
        json!({
            "name": self.name,
            "description": self.description,
            "config": config,
            "relation_id": self.relation_id,
            "units": self.units,
            "callbacks": self.callbacks,
            "sync_backends": self.sync_backends,
            "initial": {"app": self.app, "units": self.bags},
            "hooks": self.hooks,
        })
    }
}

// Calls.

fn request(id: &str, kwargs: &str, max_retry: Option<i64>) -> Value {
    json!({"request-async-lock": {"callback_id": id, "kwargs_json": kwargs, "max_retry": max_retry}})
}

fn event(name: &str) -> Value {
    json!({ "handle-event": name })
}

fn changed() -> Value {
    event("peer-relation-changed")
}

fn departed(unit: &str) -> Value {
    json!({"handle-event": {"peer-relation-departed": unit}})
}

fn state() -> Value {
    json!({"state": {}})
}

fn waiting(unit: Option<&str>, callback: Option<&str>) -> Value {
    json!({"is-waiting": {"unit_name": unit, "callback_id": callback}})
}

fn acquire(id: &str, timeout: Option<u32>) -> Value {
    json!({"acquire-sync-lock": {"backend_id": id, "timeout_seconds": timeout}})
}

fn release(id: &str) -> Value {
    json!({"release-sync-lock": {"backend_id": id}})
}

// Stored data, as the reference writes it.

fn op(id: &str, requested_at: &str, max_retry: Option<u64>, attempt: u64, kwargs: &str) -> String {
    let max_retry = max_retry.map_or("null".to_string(), |m| m.to_string());
    format!(
        r#"{{"callback_id":"{id}","requested_at":"{requested_at}","max_retry":{max_retry},"attempt":{attempt},"result":null,"kwargs":{kwargs}}}"#
    )
}

fn queue(ops: &[String]) -> String {
    format!("[{}]", ops.join(","))
}

/// The seconds timestamp of `T0 + micros`, as the reference writes it.
fn ts(micros: i64) -> String {
    let total = T0 + micros;
    let (secs, frac) = (total.div_euclid(1_000_000), total.rem_euclid(1_000_000));
    if frac == 0 {
        format!("{secs}.0")
    } else {
        let digits = format!("{frac:06}");
        format!("{secs}.{}", digits.trim_end_matches('0'))
    }
}

/// `unit` with one `_restart` op requested at `requested` seconds after T0, the intent,
/// and `executed_at` at `executed` seconds after T0.
fn seeded(
    s: Scenario,
    unit: &str,
    intent: &str,
    requested: i64,
    executed: Option<i64>,
) -> Scenario {
    let ops = queue(&[op("_restart", &ts(requested * 1_000_000), None, 0, "{}")]);
    let s = s.seed(unit, &[("operations", &ops), ("state", intent)]);
    match executed {
        Some(e) => s.seed(unit, &[("executed_at", &ts(e * 1_000_000))]),
        None => s,
    }
}

fn scenarios() -> Vec<Scenario> {
    let restart_op = |at: &str| op("_restart", at, None, 0, "{}");
    let mut all = vec![
        // ---- spec/peer.md §7.2 -------------------------------------------------------
        Scenario::charm(
            "peer_7_2_row_27_request_on_a_non_leader",
            "§7.2 row 27: a non-leader's request stores one operation, byte for byte, and runs nothing",
            1,
        )
        .elect(None)
        .hook(
            "charm/0",
            0,
            vec![
                request("_restart", r#"{"delay":10}"#, None),
                state(),
                waiting(None, None),
                waiting(None, Some("_restart")),
                waiting(None, Some("_failed_restart")),
            ],
        ),
        Scenario::charm(
            "peer_7_2_row_28_negative_max_retry",
            "§7.2 row 28: a negative max_retry is an invalid lock request and writes nothing",
            2,
        )
        .hook(
            "charm/1",
            0,
            vec![
                request("_restart", "{}", Some(-5)),
                request("_restart", "{}", Some(-1)),
                request("_restart", "{}", Some(i64::MIN)),
            ],
        ),
        Scenario::charm(
            "peer_7_2_row_29_unknown_callback_id",
            "§7.2 row 29: unregistered callback ids are invalid lock requests",
            2,
        )
        .hook(
            "charm/1",
            0,
            vec![
                request("", "{}", None),
                request("   ", "{}", None),
                request("unknown", "{}", None),
            ],
        ),
        Scenario::charm(
            "peer_7_2_row_29_unknown_callback_id_is_checked_before_the_relation",
            "§7.2 row 29 and §1.4 step 1: without a relation, an unknown id is still an invalid lock request; a known one is no-relation",
            2,
        )
        .no_relation()
        .hook(
            "charm/1",
            0,
            vec![request("unknown", "{}", None), request("_restart", "{}", None)],
        ),
        Scenario::charm(
            "peer_7_2_row_30_kwargs_not_a_json_object",
            "§7.2 row 30: kwargs that are a string, a list or not JSON are invalid lock requests",
            2,
        )
        .hook(
            "charm/1",
            0,
            vec![
                request("_restart", r#""nope""#, None),
                request("_restart", "[]", None),
                request("_restart", "{x: <object>}", None),
            ],
        ),
        Scenario::charm(
            "peer_7_2_row_31_request_appends_behind_a_queued_operation",
            "§7.2 row 31: a request appends behind a queued operation; the intent stays request",
            2,
        )
        .seed(
            "charm/1",
            &[
                ("operations", &queue(&[op("_failed_restart", "1777636700.0", None, 0, "{}")])),
                ("state", "request"),
            ],
        )
        .hook("charm/1", 1, vec![request("_restart", "{}", None)]),
        Scenario::charm(
            "peer_7_2_row_32_request_behind_a_retrying_head",
            "§7.2 row 32: a request behind a retrying head keeps the intent and executed_at",
            2,
        )
        .seed(
            "charm/1",
            &[
                ("operations", &queue(&[op("_failed_restart", "1777636700.0", None, 1, "{}")])),
                ("state", "retry-release"),
                ("executed_at", &ts(-50_000_000)),
            ],
        )
        .hook("charm/1", 0, vec![request("_restart", "{}", None)]),
        Scenario::charm(
            "peer_7_2_row_33_non_holder_does_not_run",
            "§7.2 row 33: a non-leader whose grant is held by another unit runs nothing",
            2,
        )
        .elect(Some("charm/1"))
        .seed(
            "charm/0",
            &[("operations", &queue(&[restart_op("1777636700.0")])), ("state", "request")],
        )
        .seed_app(&[("granted_unit", "charm/1"), ("granted_at", &ts(0))])
        .hook("charm/0", 0, vec![changed()]),
        Scenario::charm(
            "peer_7_2_row_34_holder_runs_on_relation_changed",
            "§7.2 row 34: the leader grants; the holder runs its operation on relation-changed and goes idle",
            2,
        )
        .seed(
            "charm/1",
            &[("operations", &queue(&[restart_op("1777636700.0")])), ("state", "request")],
        )
        .hook("charm/0", 0, vec![event("leader-elected")])
        .hook("charm/1", 1_000_000, vec![state(), changed(), state()]),
        Scenario::charm(
            "peer_7_2_row_35_release_with_more_work_goes_back_to_request",
            "§7.2 row 35: a holder with two operations runs the first and requests again",
            2,
        )
        .seed(
            "charm/1",
            &[
                (
                    "operations",
                    &queue(&[
                        restart_op("1777636700.0"),
                        op("_failed_restart", "1777636700.5", None, 0, "{}"),
                    ]),
                ),
                ("state", "request"),
            ],
        )
        .hook("charm/0", 0, vec![event("leader-elected")])
        .hook("charm/1", 0, vec![changed()]),
    ];
    for (id, intent) in [
        ("_failed_restart", "retry_release"),
        ("_deferred_restart", "retry_hold"),
    ] {
        all.push(
            Scenario::charm(
                &format!("peer_7_2_row_36_{intent}_keeps_the_head"),
                &format!(
                    "§7.2 row 36: {id} keeps the head, counts the attempt and sets the intent"
                ),
                2,
            )
            .seed(
                "charm/1",
                &[
                    (
                        "operations",
                        &queue(&[op(id, "1777636700.0", Some(3), 0, r#"{"b":1,"a":2}"#)]),
                    ),
                    ("state", "request"),
                ],
            )
            .hook("charm/0", 0, vec![event("leader-elected")])
            .hook("charm/1", 0, vec![changed()]),
        );
        all.push(
            Scenario::charm(
                &format!("peer_7_2_row_37_{intent}_exhausted_is_dropped"),
                &format!(
                    "§7.2 row 37: {id} with its retries used up is dropped; the unit goes idle"
                ),
                2,
            )
            .seed(
                "charm/1",
                &[
                    (
                        "operations",
                        &queue(&[op(id, "1777636700.0", Some(3), 3, "{}")]),
                    ),
                    ("state", "request"),
                ],
            )
            .hook("charm/0", 0, vec![event("leader-elected")])
            .hook("charm/1", 2_000_000, vec![changed()]),
        );
    }
    all.extend([
        Scenario::charm(
            "peer_7_2_row_38_leader_elected_grants_a_requesting_unit",
            "§7.2 row 38: leader-elected grants the requesting unit",
            2,
        )
        .seed(
            "charm/1",
            &[("operations", &queue(&[restart_op("1777636700.0")])), ("state", "request")],
        )
        .hook("charm/0", 250_000, vec![event("leader-elected")]),
        Scenario::charm(
            "peer_7_2_row_39_unfinished_grant_is_kept",
            "§7.2 row 39: while the holder has not run, new requests do not move the grant",
            4,
        )
        .seed(
            "charm/1",
            &[("operations", &queue(&[restart_op("1777636700.0")])), ("state", "request")],
        )
        .hook("charm/0", 0, vec![event("leader-elected")])
        .hook("charm/2", 1_000_000, vec![request("_restart", "{}", None)])
        .hook("charm/3", 1_000_000, vec![request("_restart", "{}", None)])
        .hook("charm/0", 5_000_000, vec![changed()]),
        seeded(
            seeded(
                seeded(
                    Scenario::charm(
                        "peer_7_2_row_40_retry_hold_goes_first",
                        "§7.2 row 40: retry-hold goes before request and retry-release",
                        4,
                    ),
                    "charm/1",
                    "retry-release",
                    -30,
                    Some(-20),
                ),
                "charm/2",
                "request",
                -40,
                None,
            ),
            "charm/3",
            "retry-hold",
            -10,
            Some(-5),
        )
        .hook("charm/0", 0, vec![event("leader-elected")]),
        seeded(
            seeded(
                Scenario::charm(
                    "peer_7_2_row_41_oldest_head_request_goes_first",
                    "§7.2 row 41: between two requests, the older head goes first",
                    3,
                ),
                "charm/1",
                "request",
                -10,
                None,
            ),
            "charm/2",
            "request",
            -20,
            None,
        )
        .hook("charm/0", 0, vec![event("leader-elected")]),
        seeded(
            seeded(
                Scenario::charm(
                    "peer_7_2_row_42_least_recently_executed_retry_release_goes_first",
                    "§7.2 row 42: between retry-release units, the one that executed longest ago goes first",
                    3,
                ),
                "charm/1",
                "retry-release",
                -50,
                Some(-10),
            ),
            "charm/2",
            "retry-release",
            -40,
            Some(-20),
        )
        .hook("charm/0", 0, vec![event("leader-elected")]),
        seeded(
            seeded(
                Scenario::charm(
                    "peer_7_2_row_43_request_beats_retry_release",
                    "§7.2 row 43: a request goes before a retry-release",
                    3,
                ),
                "charm/1",
                "retry-release",
                -50,
                Some(-40),
            ),
            "charm/2",
            "request",
            -10,
            None,
        )
        .hook("charm/0", 0, vec![event("leader-elected")]),
        Scenario::charm(
            "peer_7_2_row_44_all_idle_grants_nobody",
            "§7.2 row 44: with every unit idle, nobody is granted",
            3,
        )
        .seed(
            "charm/1",
            &[("operations", "[]"), ("state", "idle"), ("executed_at", &ts(-5))],
        )
        .hook("charm/0", 0, vec![event("leader-elected"), event("update-status")]),
        Scenario::charm(
            "peer_7_2_row_45_empty_bag_values_read_as_idle_peer",
            "§7.2 row 45: empty stored values read as (idle, peer)",
            2,
        )
        .seed(
            "charm/1",
            &[("operations", ""), ("state", ""), ("processing_backend", "peer")],
        )
        .hook("charm/1", 0, vec![state(), waiting(None, None)]),
        // ---- spec/peer.md §2.5, §7.5 --------------------------------------------------
        Scenario::app(
            "app",
            "peer_2_5_three_unit_rolling_restart",
            "§2.5 worked example (§7.5 row 62): three units restart one at a time; the leader runs its own turn inline",
            3,
        )
        .hook("app/1", 100_000, vec![request("restart", r#"{"delay":2}"#, None)])
        .hook("app/0", 350_000, vec![changed()])
        .hook("app/2", 500_000, vec![request("restart", r#"{"delay":2}"#, None)])
        .hook("app/0", 700_000, vec![request("restart", r#"{"delay":2}"#, None)])
        .hook("app/1", 1_000_000, vec![changed()])
        .hook("app/0", 3_400_000, vec![changed()])
        .hook("app/2", 3_800_000, vec![changed()])
        .hook("app/0", 6_200_000, vec![changed(), state()]),
        Scenario::app(
            "app",
            "peer_2_5_retry_hold_variant",
            "§2.5 retry variant: app/1's retry-hold keeps the lock for its second attempt before app/2 runs",
            3,
        )
        .callback("hold", returns(Some("retry-hold")))
        .hook("app/1", 100_000, vec![request("hold", "{}", Some(1))])
        .hook("app/2", 200_000, vec![request("restart", "{}", None)])
        .hook("app/0", 300_000, vec![changed()])
        .hook("app/1", 400_000, vec![changed()])
        .hook("app/0", 500_000, vec![changed()])
        .hook("app/2", 600_000, vec![changed()])
        .hook("app/1", 600_000, vec![changed()])
        .hook("app/0", 700_000, vec![changed()])
        .hook("app/2", 700_000, vec![changed()]),
        Scenario::charm(
            "peer_7_5_row_64_leader_retry_hold_regrants_itself",
            "§7.5 row 64: the leader grants itself, dispatches lock-granted, and re-grants itself after retry-hold (no worker, the PID key left alone)",
            2,
        )
        .seed_app(&[("peer-rollingops-worker-pid", "12345")])
        .hook("charm/0", 0, vec![request("_deferred_restart", "{}", Some(1))])
        .hook("charm/0", 1_000_000, vec![event("lock-granted")])
        .hook("charm/0", 2_000_000, vec![event("lock-granted")]),
        Scenario::charm(
            "peer_7_5_row_65_identical_request_while_granted_runs_once",
            "§7.5 row 65: an identical request while granted is dropped and the operation runs once",
            2,
        )
        .hook("charm/1", 0, vec![request("_restart", "{}", None)])
        .hook("charm/0", 0, vec![changed()])
        .hook("charm/1", 1_000, vec![request("_restart", "{}", None), changed()])
        .hook("charm/0", 2_000, vec![changed()]),
        Scenario::charm(
            "peer_7_5_row_66_holder_departs",
            "§7.5 row 66: when the holder departs, the next requester is granted in the same hook",
            3,
        )
        .hook("charm/1", 0, vec![request("_restart", "{}", None)])
        .hook("charm/0", 0, vec![changed()])
        .hook("charm/2", 100, vec![request("_restart", "{}", None)])
        .depart("charm/1", 1_000),
        Scenario::charm(
            "peer_7_5_row_68_unit_granted_then_elected",
            "§7.5 row 68: a unit granted and then elected runs on leader-elected and hands the lock on",
            3,
        )
        .hook("charm/1", 0, vec![request("_restart", "{}", None)])
        .hook("charm/2", 100, vec![request("_restart", "{}", None)])
        .hook("charm/0", 100, vec![changed()])
        .elect(Some("charm/1"))
        .hook("charm/1", 1_000_000, vec![event("leader-elected")]),
        Scenario::charm(
            "peer_7_5_row_73_no_relation_and_foreign_names",
            "§7.5 row 73: without the relation, a request is no-relation, state not-ready and is-waiting false",
            2,
        )
        .no_relation()
        .hook(
            "charm/1",
            0,
            vec![request("_restart", "{}", None), state(), waiting(None, None)],
        ),
        Scenario::charm(
            "peer_7_5_row_73_foreign_unit_and_unknown_sync_backend",
            "§7.5 row 73: is-waiting of a unit outside the relation is invalid-argument; an unknown sync backend is sync-lock and never reaches the host",
            2,
        )
        .hook(
            "charm/1",
            0,
            vec![waiting(Some("app/9"), None), acquire("zzz", None)],
        ),
        // ---- Bad input -----------------------------------------------------------------
        Scenario::charm(
            "bad_input_kwargs_not_json_or_not_an_object",
            "Bad input: kwargs that are not a JSON object are refused; nested JSON reaches the callback canonicalised",
            2,
        )
        .callback("cb", returns(None))
        .hook(
            "charm/1",
            0,
            ["not json", r#"{"a":"#, "", r#""{}""#, "[1,2]", "5", "1.5", "null", "true"]
                .into_iter()
                .map(|k| request("_restart", k, None))
                .chain([request("cb", r#"{"z":[1,"é",{"y":null,"x":1.5}],"a":true}"#, None)])
                .collect(),
        )
        .hook("charm/0", 0, vec![changed()])
        .hook("charm/1", 0, vec![changed()]),
        Scenario::charm(
            "bad_input_unknown_callback_at_execution",
            "Bad input: an operation whose callback is no longer registered is dropped with an error log; the next one keeps its place",
            2,
        )
        .seed(
            "charm/1",
            &[
                (
                    "operations",
                    &queue(&[
                        op("_gone", "1777636700.0", None, 0, "{}"),
                        op("_restart", "1777636700.5", None, 0, "{}"),
                    ]),
                ),
                ("state", "request"),
            ],
        )
        .hook("charm/0", 0, vec![event("leader-elected")])
        .hook("charm/1", 0, vec![changed()]),
        Scenario::charm(
            "bad_input_callback_missing_in_the_host",
            "Bad input: a callback the library knows but the host cannot find is dropped as released",
            2,
        )
        .callback("_vanishing", json!(["missing"]))
        .seed(
            "charm/1",
            &[
                ("operations", &queue(&[op("_vanishing", "1", None, 0, "{}")])),
                ("state", "request"),
            ],
        )
        .hook("charm/0", 0, vec![event("leader-elected")])
        .hook("charm/1", 0, vec![changed()])
        .hook("charm/0", 0, vec![changed()]),
        Scenario::charm(
            "bad_input_callback_raises",
            "Bad input: a callback that raises counts as retry-release and is retried",
            2,
        )
        .callback(
            "_flaky",
            json!([{"raised": "RuntimeError: workload did not come back"}, {"returned": null}]),
        )
        .hook("charm/1", 0, vec![request("_flaky", r#"{"n":1}"#, Some(2))])
        .hook("charm/0", 0, vec![changed()])
        .hook("charm/1", 1_000_000, vec![changed()])
        .hook("charm/0", 2_000_000, vec![changed()])
        .hook("charm/1", 3_000_000, vec![changed()]),
        Scenario::charm(
            "bad_input_corrupted_own_queue",
            "Bad input: a request on top of an undecodable own queue is refused and writes nothing; state is a decoding error",
            5,
        )
        .seed("charm/1", &[("operations", "{oops"), ("state", "request"), ("executed_at", "1777636700.0")])
        .seed("charm/2", &[("operations", r#"{"not":"a list"}"#), ("state", "request")])
        .seed("charm/3", &[("operations", r#"[{"callback_id":"x"}]"#), ("state", "request")])
        .seed("charm/4", &[("operations", "null"), ("state", "request")])
        .hook("charm/1", 0, vec![request("_restart", "{}", None), state()])
        .hook("charm/2", 0, vec![request("_restart", "{}", None), state()])
        .hook("charm/3", 0, vec![request("_restart", "{}", None), state()])
        .hook("charm/4", 0, vec![request("_restart", "{}", None), state()]),
        seeded(
            Scenario::charm(
                "bad_input_corrupted_holder_queue",
                "Bad input: a holder whose queue became undecodable runs nothing, leaves it untouched, and the lock moves on",
                3,
            )
            .seed("charm/1", &[("operations", "{oops"), ("state", "request")])
            .seed_app(&[
                ("granted_unit", "charm/1"),
                ("granted_at", &ts(-1_000_000)),
                ("rollingops-grant", r#"{"seq":1,"unit":"charm/1","at":"1777636799.0"}"#),
            ]),
            "charm/2",
            "request",
            -1,
            None,
        )
        .hook("charm/1", 0, vec![changed()])
        .hook("charm/0", 1_000_000, vec![changed()]),
        seeded(
            seeded(
                Scenario::charm(
                    "bad_input_corrupted_bags_on_other_units",
                    "Bad input: undecodable queues and unknown intents on other units are skipped and logged; the leader still grants",
                    4,
                )
                .seed("charm/1", &[("operations", "{oops"), ("state", "request")]),
                "charm/2",
                "bogus-intent",
                -30,
                None,
            ),
            "charm/3",
            "request",
            -10,
            None,
        )
        .hook("charm/0", 0, vec![event("leader-elected")])
        .hook("charm/3", 0, vec![changed()])
        .hook("charm/0", 0, vec![event("update-status")]),
        Scenario::charm(
            "bad_input_sync_backends",
            "Bad input: sync-lock backends that are unknown, time out, fail or work; a timeout stays a timeout",
            2,
        )
        .sync_backend("slow", json!(["timed-out"]))
        .sync_backend("broken", json!([{"failed": "RuntimeError: boom"}]))
        .sync_backend("gone", json!(["missing"]))
        .hook(
            "charm/1",
            0,
            vec![
                acquire("unknown", Some(5)),
                acquire("slow", Some(5)),
                acquire("broken", Some(5)),
                acquire("gone", None),
                acquire("stop-replset-member", Some(5)),
                release("stop-replset-member"),
                release("unknown"),
            ],
        ),
        Scenario::charm(
            "bad_input_cluster_id_without_etcd_relation",
            "Bad input: the constructor refuses a cluster_id without an etcd relation name",
            1,
        )
        .config_value("cluster_id", json!("cluster-12345"))
        .hook("charm/0", 0, vec![]),
        Scenario::charm(
            "bad_input_is_waiting_on_a_foreign_unit",
            "Bad input: is-waiting for a unit outside the relation, from a leader with a queued remote unit",
            2,
        )
        .seed(
            "charm/1",
            &[("operations", &queue(&[restart_op("1777636700.0")])), ("state", "request")],
        )
        .hook(
            "charm/0",
            0,
            vec![
                waiting(Some("charm/1"), None),
                waiting(Some("charm/1"), Some("_restart")),
                waiting(Some("charm/1"), Some("_failed_restart")),
                waiting(Some("charm/9"), None),
            ],
        ),
    ]);
    all
}
