//! `rollingops bridge`: the line-delimited JSON protocol of `host/BRIDGE.md`, driven from
//! here as a foreign host would. The client answers every import from a small in-memory
//! model of one peer relation; the documented transcript is replayed byte for byte.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::fake_juju::binaries;
use rollingops_tests::temp_dir;
use serde_json::{Value, json};

/// A running `rollingops bridge`.
pub struct BridgeProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The `hello` line.
    pub hello: Value,
    next_id: u64,
    /// Every line, `→` client to bridge, `←` bridge to client.
    pub transcript: Vec<String>,
}

/// What the client answers to an import: `Ok(result)` or `Err(error)`.
pub type Reply = Result<Value, Value>;

impl BridgeProcess {
    /// Spawn `command` (a bridge, possibly behind `juju-exec`) and read its hello.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the bridge");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut bridge = BridgeProcess {
            child,
            stdin,
            stdout,
            hello: Value::Null,
            next_id: 0,
            transcript: vec![],
        };
        bridge.hello = bridge.receive();
        bridge
    }

    /// `rollingops bridge <args>`.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(&binaries().rollingops);
        command.arg("bridge").args(args);
        Self::spawn(command)
    }

    /// Send one raw line.
    pub fn send_line(&mut self, line: &str) {
        self.transcript.push(format!("→ {line}"));
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn send(&mut self, message: &Value) {
        self.send_line(&message.to_string());
    }

    /// Read one line.
    pub fn receive(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "the bridge closed its output");
        self.transcript.push(format!("← {}", line.trim_end()));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Call `method`, answering imports with `answer` until the reply arrives.
    pub fn call(
        &mut self,
        method: &str,
        params: Value,
        answer: &mut dyn FnMut(&str, &Value) -> Reply,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"id": id, "method": method, "params": params}));
        loop {
            let message = self.receive();
            if let Some(import) = message.get("import").and_then(Value::as_str) {
                let reply = match answer(import, &message["params"]) {
                    Ok(result) => json!({"id": message["id"], "result": result}),
                    Err(error) => json!({"id": message["id"], "error": error}),
                };
                self.send(&reply);
                continue;
            }
            assert_eq!(message["id"], json!(id), "{message}");
            return match message.get("error") {
                Some(error) => Err(error.clone()),
                None => Ok(message["result"].clone()),
            };
        }
    }

    /// Close stdin and wait for the exit code.
    pub fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One peer relation in memory, answering imports for whichever unit runs a hook.
#[derive(Default)]
pub struct Relation {
    /// Committed app bag.
    pub app: BTreeMap<String, String>,
    /// Committed unit bags (every unit of the application).
    pub units: BTreeMap<String, BTreeMap<String, String>>,
    /// The leader.
    pub leader: String,
    /// Microseconds the client clock returns next (each reading advances it by 1 ms).
    pub clock: i64,
    /// Callback runs: (unit, kwargs, the holder in the committed app bag at that time).
    pub runs: Vec<(String, Value, Option<String>)>,
    /// Log lines: (unit, level, message).
    pub logs: Vec<(String, String, String)>,
    /// What a callback returns, by id (default `"release"`), e.g. a health check's answer.
    pub returns: BTreeMap<String, Value>,
    /// Callback runs of ids other than `restart`: (unit, id, kwargs).
    pub other_runs: Vec<(String, String, Value)>,
}

/// One hook's buffered effects.
#[derive(Default)]
pub struct HookEffects {
    app: BTreeMap<String, String>,
    unit: BTreeMap<String, String>,
    /// Hooks the unit dispatched to itself.
    pub dispatched: Vec<String>,
    /// Hooks the unit dispatched to itself after a delay: (event, delay in ms).
    pub dispatched_after: Vec<(String, u64)>,
}

fn bag_json(bag: &BTreeMap<String, String>) -> Value {
    Value::Object(bag.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

impl Relation {
    /// A relation with `units` units; `app/0` leads.
    pub fn new(units: usize) -> Self {
        Relation {
            units: (0..units)
                .map(|i| (format!("app/{i}"), BTreeMap::new()))
                .collect(),
            leader: "app/0".into(),
            clock: 1_777_636_800_000_000,
            ..Relation::default()
        }
    }

    /// Answer one import as `unit` inside a hook whose effects go to `hook`.
    pub fn answer(
        &mut self,
        unit: &str,
        hook: &mut HookEffects,
        import: &str,
        params: &Value,
    ) -> Reply {
        let merged = |committed: &BTreeMap<String, String>, pending: &BTreeMap<String, String>| {
            let mut bag = committed.clone();
            for (k, v) in pending {
                if v.is_empty() {
                    bag.remove(k);
                } else {
                    bag.insert(k.clone(), v.clone());
                }
            }
            bag
        };
        match import {
            "unit-name" => Ok(json!(unit)),
            "model-uuid" => Ok(json!("bridge-test-model")),
            "is-leader" => Ok(json!(self.leader == unit)),
            "relation-ids" => Ok(if params["endpoint"] == "restart" {
                json!([3])
            } else {
                json!([])
            }),
            "relation-units" => Ok(json!(
                self.units.keys().filter(|u| *u != unit).collect::<Vec<_>>()
            )),
            "relation-get" => {
                if params["app"] == true {
                    Ok(bag_json(&merged(&self.app, &hook.app)))
                } else {
                    let member = params["unit"].as_str().unwrap();
                    let committed = self.units.get(member).cloned().unwrap_or_default();
                    if member == unit {
                        Ok(bag_json(&merged(&committed, &hook.unit)))
                    } else {
                        Ok(bag_json(&committed))
                    }
                }
            }
            "relation-set" => {
                let target = if params["app"] == true {
                    if self.leader != unit {
                        return Err(json!({"kind": "host", "message": "not the leader"}));
                    }
                    &mut hook.app
                } else {
                    &mut hook.unit
                };
                for (k, v) in params["data"].as_object().unwrap() {
                    target.insert(k.clone(), v.as_str().unwrap().to_string());
                }
                Ok(Value::Null)
            }
            "log" => {
                self.logs.push((
                    unit.to_string(),
                    params["level"].as_str().unwrap().to_string(),
                    params["message"].as_str().unwrap().to_string(),
                ));
                Ok(Value::Null)
            }
            "dispatch" => {
                hook.dispatched
                    .push(params["event"].as_str().unwrap().to_string());
                Ok(Value::Null)
            }
            "dispatch-after" => {
                hook.dispatched_after.push((
                    params["event"].as_str().unwrap().to_string(),
                    params["delay_ms"].as_u64().unwrap(),
                ));
                Ok(Value::Null)
            }
            "now-micros" => {
                self.clock += 1000;
                Ok(json!(self.clock))
            }
            "run-callback" if params["callback_id"] != "restart" => {
                let id = params["callback_id"].as_str().unwrap().to_string();
                self.other_runs
                    .push((unit.to_string(), id.clone(), params["kwargs"].clone()));
                let returned = self.returns.get(&id).cloned().unwrap_or(json!("release"));
                Ok(json!({ "returned": returned }))
            }
            "run-callback" => {
                self.runs.push((
                    unit.to_string(),
                    params["kwargs"].clone(),
                    self.app.get("granted_unit").cloned(),
                ));
                Ok(json!({"returned": "release"}))
            }
            other => Err(json!({"kind": "host", "message": format!("unexpected import {other}")})),
        }
    }

    /// Commit a successful hook's writes; whether a bag changed.
    pub fn commit(&mut self, unit: &str, hook: &HookEffects) -> bool {
        let mut changed = false;
        let mut apply = |bag: &mut BTreeMap<String, String>, writes: &BTreeMap<String, String>| {
            for (k, v) in writes {
                let before = bag.get(k).cloned();
                if v.is_empty() {
                    bag.remove(k);
                } else {
                    bag.insert(k.clone(), v.clone());
                }
                changed |= before != bag.get(k).cloned();
            }
        };
        apply(&mut self.app, &hook.app);
        apply(self.units.entry(unit.to_string()).or_default(), &hook.unit);
        changed
    }
}

/// The test charm's configuration.
pub fn config(base_dir: &Path) -> Value {
    json!({"config": {
        "peer_relation_name": "restart",
        "base_dir": base_dir,
        "callback_ids": ["restart"],
        "sync_lock_ids": ["stop-replset-member"],
    }})
}

/// Run one hook on `unit` over the bridge: create a manager, make one call, drop it,
/// commit on success. Returns the call's outcome and the hook's effects.
pub fn hook(
    bridge: &mut BridgeProcess,
    relation: &mut Relation,
    base_dir: &Path,
    unit: &str,
    method: &str,
    params: Value,
) -> (Result<Value, Value>, HookEffects, bool) {
    hook_with(
        bridge,
        relation,
        config(base_dir),
        unit,
        vec![(method, params)],
    )
    .pop()
    .unwrap()
}

/// Run one hook on `unit` with the manager of `config`, making each call in turn (they
/// share the hook's effects); commit when every call succeeded. Returns, per call, its
/// outcome, the hook's effects so far and whether the commit changed a bag (last call).
pub fn hook_with(
    bridge: &mut BridgeProcess,
    relation: &mut Relation,
    config: Value,
    unit: &str,
    calls: Vec<(&str, Value)>,
) -> Vec<(Result<Value, Value>, HookEffects, bool)> {
    let mut effects = HookEffects::default();
    let mut outcomes = Vec::new();
    let mut answer = |import: &str, p: &Value| relation.answer(unit, &mut effects, import, p);
    let manager = bridge.call("create", config, &mut answer).expect("create")["manager"].clone();
    for (method, mut params) in calls {
        params["manager"] = manager.clone();
        outcomes.push(bridge.call(method, params, &mut answer));
    }
    bridge
        .call("drop", json!({"manager": manager}), &mut answer)
        .expect("drop");
    let ok = outcomes.iter().all(Result::is_ok);
    let changed = ok && relation.commit(unit, &effects);
    let count = outcomes.len();
    outcomes
        .into_iter()
        .enumerate()
        .map(|(i, result)| {
            let snapshot = HookEffects {
                app: effects.app.clone(),
                unit: effects.unit.clone(),
                dispatched: effects.dispatched.clone(),
                dispatched_after: effects.dispatched_after.clone(),
            };
            (result, snapshot, changed && i + 1 == count)
        })
        .collect()
}

#[test]
fn a_foreign_host_drives_a_three_unit_rolling_restart() {
    let base = temp_dir("bridge-rolling");
    let mut bridge = BridgeProcess::start(&["--client-clock"]);
    assert_eq!(bridge.hello["hello"], "rollingops-bridge");
    assert_eq!(bridge.hello["protocol"], 2);
    let mut relation = Relation::new(3);
    let mut queue: VecDeque<(String, &str, Value)> = relation
        .units
        .keys()
        .map(|u| {
            (
                u.clone(),
                "request-async-lock",
                json!({"callback_id": "restart", "kwargs": {"unit": u}}),
            )
        })
        .collect();
    let mut hooks = 0;
    while let Some((unit, method, params)) = queue.pop_front() {
        hooks += 1;
        assert!(hooks < 100, "no progress: {:?}", relation.app);
        let (result, effects, changed) =
            hook(&mut bridge, &mut relation, &base, &unit, method, params);
        result.unwrap_or_else(|e| panic!("{unit} {method}: {e}"));
        let units: Vec<String> = relation.units.keys().cloned().collect();
        if changed {
            for other in units.iter().filter(|u| **u != unit) {
                let event = (
                    other.clone(),
                    "handle-event",
                    json!({"event": "peer-relation-changed"}),
                );
                if !queue.contains(&event) {
                    queue.push_back(event);
                }
            }
        }
        for name in effects.dispatched {
            assert_eq!(name, "rollingops_lock_granted");
            queue.push_back((
                unit.clone(),
                "handle-event",
                json!({"event": "lock-granted"}),
            ));
        }
    }
    // Every unit ran once, each while the committed grant named it.
    let ran: Vec<&String> = relation.runs.iter().map(|(u, _, _)| u).collect();
    assert_eq!(ran.len(), 3, "{:?}", relation.runs);
    for (unit, kwargs, holder) in &relation.runs {
        assert_eq!(kwargs["unit"], json!(unit));
        assert_eq!(
            holder.as_deref(),
            Some(unit.as_str()),
            "{:?}",
            relation.runs
        );
    }
    assert!(!relation.app.contains_key("granted_unit"));
    for bag in relation.units.values() {
        assert_eq!(bag["operations"], "[]");
        assert_eq!(bag["state"], "idle");
    }
    assert_eq!(bridge.finish(), 0);
}

#[test]
fn queries_sync_lock_and_errors_keep_their_reference_classes() {
    let base = temp_dir("bridge-queries");
    let mut bridge = BridgeProcess::start(&[]);
    let mut relation = Relation::new(2);
    let mut effects = HookEffects::default();
    let mut sync_calls = Vec::new();
    let mut answer = |import: &str, p: &Value| -> Reply {
        match import {
            "sync-backend-acquire" => {
                sync_calls.push(format!(
                    "acquire {} {}",
                    p["backend_id"], p["timeout_seconds"]
                ));
                if p["timeout_seconds"] == 1 {
                    Err(json!({"kind": "timed-out"}))
                } else {
                    Ok(Value::Null)
                }
            }
            "sync-backend-release" => {
                sync_calls.push(format!("release {}", p["backend_id"]));
                Err(json!({"kind": "failed", "message": "the backend is gone"}))
            }
            _ => relation.answer("app/1", &mut effects, import, p),
        }
    };
    let manager = bridge.call("create", config(&base), &mut answer).unwrap()["manager"].clone();
    let m = |extra: Value| {
        let mut params = extra;
        params["manager"] = manager.clone();
        params
    };
    // An unknown callback: the reference's class and message.
    let error = bridge
        .call(
            "request-async-lock",
            m(json!({"callback_id": "nope", "kwargs": {}})),
            &mut answer,
        )
        .unwrap_err();
    assert_eq!(error["kind"], "invalid-lock-request");
    assert_eq!(error["class"], "RollingOpsInvalidLockRequestError");
    assert_eq!(error["message"], "Unknown callback_id: nope");
    // A valid request, then the queries.
    bridge
        .call(
            "request-async-lock",
            m(json!({"callback_id": "restart", "kwargs": {"delay": 1}, "max_retry": 2})),
            &mut answer,
        )
        .unwrap();
    let state = bridge.call("state", m(json!({})), &mut answer).unwrap();
    assert_eq!(
        state,
        json!({"status": "waiting", "processing_backend": "peer"})
    );
    assert_eq!(
        bridge
            .call("is-waiting", m(json!({})), &mut answer)
            .unwrap(),
        true
    );
    assert_eq!(
        bridge
            .call(
                "is-waiting",
                m(json!({"callback_id": "other"})),
                &mut answer
            )
            .unwrap(),
        false
    );
    let error = bridge
        .call("is-waiting", m(json!({"unit_name": "db/0"})), &mut answer)
        .unwrap_err();
    assert_eq!(error["class"], "ValueError");
    let described = bridge.call("describe", m(json!({})), &mut answer).unwrap();
    assert_eq!(described["unit"], "app/1");
    let own = described["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "app/1")
        .unwrap();
    assert_eq!(own["queue"][0]["max_retry"], 2);
    assert_eq!(own["queue"][0]["kwargs"], json!({"delay": 1}));
    // Sync lock: a timeout stays a timeout; a failed release is a sync-lock error.
    let error = bridge
        .call(
            "acquire-sync-lock",
            m(json!({"backend_id": "stop-replset-member", "timeout_seconds": 1})),
            &mut answer,
        )
        .unwrap_err();
    assert_eq!(
        (error["kind"].as_str(), error["class"].as_str()),
        (Some("timeout"), Some("TimeoutError"))
    );
    bridge
        .call(
            "acquire-sync-lock",
            m(json!({"backend_id": "stop-replset-member", "timeout_seconds": null})),
            &mut answer,
        )
        .unwrap();
    let error = bridge
        .call(
            "release-sync-lock",
            m(json!({"backend_id": "stop-replset-member"})),
            &mut answer,
        )
        .unwrap_err();
    assert_eq!(error["class"], "RollingOpsSyncLockError");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("the backend is gone"),
        "{error}"
    );
    let error = bridge
        .call(
            "acquire-sync-lock",
            m(json!({"backend_id": "unknown"})),
            &mut answer,
        )
        .unwrap_err();
    assert_eq!(error["class"], "RollingOpsSyncLockError");
    // The worker is etcd-only.
    let error = bridge
        .call("run-worker", m(json!({})), &mut answer)
        .unwrap_err();
    assert_eq!(error["class"], "RollingOpsEtcdNotConfiguredError");
    // Protocol mistakes are answered, not fatal.
    let error = bridge
        .call("frobnicate", m(json!({})), &mut answer)
        .unwrap_err();
    assert_eq!(error["kind"], "protocol");
    let error = bridge
        .call("state", json!({"manager": 99}), &mut answer)
        .unwrap_err();
    assert_eq!(error["message"], "no manager 99");
    let error = bridge
        .call(
            "create",
            json!({"config": {"base_dir": "/tmp"}}),
            &mut answer,
        )
        .unwrap_err();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("peer_relation_name"),
        "{error}"
    );
    let error = bridge
        .call(
            "create",
            json!({"config": {"peer_relation_name": "restart", "cluster_id": "c"}}),
            &mut answer,
        )
        .unwrap_err();
    assert_eq!(error["class"], "ValueError");
    bridge.send_line("this is not json");
    let reply = bridge.receive();
    assert_eq!(reply["error"]["kind"], "protocol");
    assert!(
        sync_calls
            .iter()
            .any(|c| c == "acquire \"stop-replset-member\" 1"),
        "{sync_calls:?}"
    );
    assert_eq!(bridge.finish(), 0);
}

#[test]
fn a_request_during_an_import_is_refused_as_busy() {
    let base = temp_dir("bridge-busy");
    let mut bridge = BridgeProcess::start(&[]);
    let mut relation = Relation::new(1);
    let mut effects = HookEffects::default();
    let mut answer = |import: &str, p: &Value| relation.answer("app/0", &mut effects, import, p);
    let manager = bridge.call("create", config(&base), &mut answer).unwrap()["manager"].clone();
    bridge.send_line(
        &json!({"id": "s", "method": "state", "params": {"manager": manager}}).to_string(),
    );
    // The first import arrives; instead of answering, the client tries another request.
    let import = bridge.receive();
    assert_eq!(import["import"], "unit-name");
    bridge.send_line(
        &json!({"id": "x", "method": "describe", "params": {"manager": manager}}).to_string(),
    );
    let busy = bridge.receive();
    assert_eq!(busy["id"], "x");
    assert!(
        busy["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("busy"),
        "{busy}"
    );
    // Then it answers, and the original request completes.
    bridge.send_line(&json!({"id": import["id"], "result": "app/0"}).to_string());
    loop {
        let message = bridge.receive();
        if message.get("import").is_some() {
            let reply = match answer(message["import"].as_str().unwrap(), &message["params"]) {
                Ok(r) => json!({"id": message["id"], "result": r}),
                Err(e) => json!({"id": message["id"], "error": e}),
            };
            bridge.send_line(&reply.to_string());
            continue;
        }
        assert_eq!(message["id"], "s");
        assert_eq!(message["result"]["status"], "idle");
        break;
    }
    assert_eq!(bridge.finish(), 0);
}

/// The issue-8 calls' configuration: `restart`, a health check and an on-complete callback.
fn features_config(base_dir: &Path) -> Value {
    json!({"config": {
        "peer_relation_name": "restart",
        "base_dir": base_dir,
        "callback_ids": ["restart", "healthy", "done"],
    }})
}

#[test]
fn a_health_gate_is_forwarded_as_dispatch_after_and_passes_on_true() {
    let base = temp_dir("bridge-health");
    let mut bridge = BridgeProcess::start(&["--client-clock"]);
    let mut relation = Relation::new(1);
    let mut run = |relation: &mut Relation, method: &str, params: Value| {
        hook_with(
            &mut bridge,
            relation,
            features_config(&base),
            "app/0",
            vec![(method, params)],
        )
        .pop()
        .unwrap()
    };
    let (result, effects, _) = run(
        &mut relation,
        "request-lock",
        json!({"callback_id": "restart", "kwargs": {"delay": 1}, "max_retry": 3,
               "health_check": "healthy", "health_timeout_seconds": 60,
               "generation_kwarg": "gen"}),
    );
    result.unwrap();
    assert_eq!(effects.dispatched, ["rollingops_lock_granted"]);
    // The turn: the operation runs with its generation; the gate keeps the lock and asks
    // for a hook in 2 s rather than waiting.
    relation.returns.insert("healthy".into(), json!(false));
    let (result, effects, _) = run(
        &mut relation,
        "handle-event",
        json!({"event": "lock-granted"}),
    );
    result.unwrap();
    assert_eq!(relation.runs.len(), 1);
    assert_eq!(relation.runs[0].1, json!({"delay": 1, "gen": 1}));
    assert_eq!(
        effects.dispatched_after,
        [("rollingops_lock_granted".to_string(), 2000)]
    );
    assert_eq!(relation.app["granted_unit"], "app/0");
    // Due: the check answers false (a JSON boolean): checked again later.
    relation.clock += 2_000_000;
    let (result, effects, _) = run(
        &mut relation,
        "handle-event",
        json!({"event": "lock-granted"}),
    );
    result.unwrap();
    assert_eq!(relation.other_runs.len(), 1, "{:?}", relation.other_runs);
    assert_eq!(relation.other_runs[0].1, "healthy");
    assert_eq!(relation.other_runs[0].2["delay"], 1);
    let (event, delay) = effects.dispatched_after[0].clone();
    assert_eq!(event, "rollingops_lock_granted");
    assert!(delay > 2000, "{delay}");
    assert_eq!(relation.app["granted_unit"], "app/0");
    // true passes, as the boolean or as the string "true".
    relation.returns.insert("healthy".into(), json!(true));
    relation.clock += delay as i64 * 1000;
    let (result, effects, _) = run(
        &mut relation,
        "handle-event",
        json!({"event": "lock-granted"}),
    );
    result.unwrap();
    assert_eq!(relation.other_runs.len(), 2);
    assert!(effects.dispatched_after.is_empty());
    assert!(
        !relation.app.contains_key("granted_unit"),
        "{:?}",
        relation.app
    );
    assert_eq!(relation.units["app/0"]["state"], "idle");
    assert_eq!(bridge.finish(), 0);
}

#[test]
fn policy_rank_controls_and_rolls_over_the_bridge() {
    let base = temp_dir("bridge-controls");
    let mut bridge = BridgeProcess::start(&["--client-clock"]);
    let mut relation = Relation::new(1);
    // Every unit advertises what it supports in its first hook.
    let outcomes = hook_with(
        &mut bridge,
        &mut relation,
        features_config(&base),
        "app/0",
        vec![("handle-event", json!({"event": "update-status"}))],
    );
    outcomes[0].0.clone().unwrap();
    let calls = vec![
        (
            "set-policy",
            json!({"max_concurrent": 2, "grant_timeout_seconds": 600, "rank_ordering": true}),
        ),
        ("set-policy", json!({})),
        ("set-rank", json!({"rank": -4})),
        (
            "control",
            json!({"action": "pause", "reason": "maintenance window"}),
        ),
        ("control", json!({"action": "pause"})),
        ("control", json!({"action": "resume"})),
        ("control", json!({"action": "cancel", "callback_id": null})),
        ("control", json!({"action": "force-release"})),
        (
            "start-roll",
            json!({"callback_id": "restart", "kwargs": {"delay": 0},
                   "health_check": "healthy", "health_timeout_seconds": 30,
                   "on_complete": "done"}),
        ),
    ];
    let outcomes = hook_with(
        &mut bridge,
        &mut relation,
        features_config(&base),
        "app/0",
        calls,
    );
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|(r, _, _)| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(
        results,
        [
            Value::Null,
            Value::Null,
            Value::Null,
            json!(1),
            json!(0),
            json!(1),
            json!(0),
            json!(0),
            json!(1),
        ]
    );
    assert_eq!(relation.units["app/0"]["rollingops-rank"], "-4");
    assert!(relation.app["rollingops-policy"].contains("\"max_concurrent\":1"));
    assert!(
        relation.app.contains_key("rollingops-roll"),
        "{:?}",
        relation.app
    );

    // Errors: the component's classes, and protocol errors for malformed params.
    let errors = hook_with(
        &mut bridge,
        &mut relation,
        features_config(&base),
        "app/0",
        vec![
            ("start-roll", json!({"callback_id": "restart"})),
            (
                "control",
                json!({"action": "force-release", "unit": "app/9"}),
            ),
            ("set-policy", json!({"max_concurrent": 0})),
            (
                "request-lock",
                json!({"callback_id": "restart", "health_check": "nope"}),
            ),
            (
                "request-lock",
                json!({"callback_id": "restart", "max_retry": -1}),
            ),
            ("control", json!({"action": "stop"})),
            ("control", json!({})),
            ("set-policy", json!({"rank_ordering": "yes"})),
            ("set-rank", json!({"rank": "high"})),
            ("start-roll", json!({"kwargs": {}})),
            (
                "request-lock",
                json!({"callback_id": "restart", "health_timeout_seconds": -1}),
            ),
        ],
    );
    let kinds: Vec<(String, Value)> = errors
        .into_iter()
        .map(|(r, _, _)| {
            let e = r.unwrap_err();
            (e["kind"].as_str().unwrap().to_string(), e["class"].clone())
        })
        .collect();
    let value_error = || ("invalid-argument".to_string(), json!("ValueError"));
    let lock_request = || {
        (
            "invalid-lock-request".to_string(),
            json!("RollingOpsInvalidLockRequestError"),
        )
    };
    let protocol = || ("protocol".to_string(), Value::Null);
    assert_eq!(
        kinds,
        [
            value_error(),
            value_error(),
            value_error(),
            lock_request(),
            lock_request(),
            protocol(),
            protocol(),
            protocol(),
            protocol(),
            protocol(),
            protocol(),
        ]
    );
    assert_eq!(bridge.finish(), 0);
}

/// The transcript in `host/BRIDGE.md` (between the `transcript` fences), replayed
/// against a real bridge: every request, reply and import must come out as documented,
/// except `log` imports, whose wording and number may change (they are answered here and
/// skipped in the document; import ids are matched up accordingly).
#[test]
fn the_documented_transcript_is_what_the_bridge_says() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/BRIDGE.md"))
            .unwrap();
    let start = doc.find("```transcript\n").expect("a transcript block") + "```transcript\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let base = temp_dir("bridge-transcript");
    let mut lines: Vec<(bool, Value)> = Vec::new();
    for line in doc[start..end].lines().filter(|l| !l.trim().is_empty()) {
        let (arrow, text) = line.split_at(line.find(' ').unwrap());
        let text = text
            .trim()
            .replace("$BASE_DIR", &base.display().to_string());
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        lines.push((arrow == "←", value));
    }
    // Drop documented log imports and their answers.
    let mut script = Vec::new();
    let mut skip_answer_to = None;
    for (from_bridge, value) in lines {
        if from_bridge && value["import"] == "log" {
            skip_answer_to = Some(value["id"].clone());
            continue;
        }
        if !from_bridge
            && value.get("method").is_none()
            && Some(&value["id"]) == skip_answer_to.as_ref()
        {
            continue;
        }
        script.push((from_bridge, value));
    }
    let mut bridge = BridgeProcess::start(&["--client-clock"]);
    let (hello_line, rest) = script.split_first().unwrap();
    assert_eq!(bridge.hello, hello_line.1);
    let mut last_import = Value::Null;
    for (from_bridge, expected) in rest {
        if *from_bridge {
            let mut got = bridge.receive();
            while got["import"] == "log" {
                bridge.send_line(&json!({"id": got["id"], "result": null}).to_string());
                got = bridge.receive();
            }
            if got.get("import").is_some() {
                last_import = got["id"].clone();
                assert_eq!(
                    (&got["import"], &got["params"]),
                    (&expected["import"], &expected["params"]),
                    "\n{}",
                    bridge.transcript.join("\n")
                );
            } else {
                assert_eq!(&got, expected, "\n{}", bridge.transcript.join("\n"));
            }
        } else if expected.get("method").is_none() {
            let mut answer = expected.clone();
            answer["id"] = last_import.clone();
            bridge.send_line(&answer.to_string());
        } else {
            bridge.send_line(&expected.to_string());
        }
    }
    assert_eq!(bridge.finish(), 0);
}

/// Print a fresh transcript for `host/BRIDGE.md` (run with `BRIDGE_TRANSCRIPT=1
/// … -- --nocapture bridge::record`).
#[test]
fn record_transcript() {
    if std::env::var_os("BRIDGE_TRANSCRIPT").is_none() {
        return;
    }
    let dir = temp_dir("bridge-record");
    let base = dir.as_path();
    let mut bridge = BridgeProcess::start(&["--client-clock"]);
    let mut relation = Relation::new(1);
    let (result, effects, _) = hook(
        &mut bridge,
        &mut relation,
        base,
        "app/0",
        "request-async-lock",
        json!({"callback_id": "restart", "kwargs": {"delay": 2}}),
    );
    result.unwrap();
    assert_eq!(effects.dispatched, vec!["rollingops_lock_granted"]);
    let (result, _, _) = hook(
        &mut bridge,
        &mut relation,
        base,
        "app/0",
        "handle-event",
        json!({"event": "lock-granted"}),
    );
    result.unwrap();
    for line in &bridge.transcript {
        println!("{}", line.replace(&dir.display().to_string(), "$BASE_DIR"));
    }
}
