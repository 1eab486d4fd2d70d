//! One unit's view of the simulated model during one hook: a snapshot of the committed
//! databags, buffered writes, and the simulated charm's callbacks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::bindings::juju::rollingops::types::{BagOwner, CallbackOutcome, Error, LogLevel};
use crate::host::Host;

/// A databag.
pub type Bag = BTreeMap<String, String>;

/// Apply relation-set writes to a bag, as Juju does: an empty value deletes the key.
pub fn apply_writes(bag: &mut Bag, writes: &[(String, String)]) {
    for (key, value) in writes {
        if value.is_empty() {
            bag.remove(key);
        } else {
            bag.insert(key.clone(), value.clone());
        }
    }
}

/// The relation id every simulated unit uses for the peer relation.
pub const PEER_RELATION_ID: u32 = 7;

/// One callback run inside a hook.
#[derive(Clone, Debug)]
pub struct CallbackRun {
    /// Callback id.
    pub id: String,
    /// The simulator's op token (`"op"` kwarg).
    pub op: Option<u64>,
    /// Offset into the hook (seconds) when it started.
    pub start_offset: f64,
    /// How long it ran (seconds).
    pub duration: f64,
    /// What it returned (`release`, `retry-hold`, …) or `raise`.
    pub outcome: String,
}

/// The simulated charm's behaviour: how many times each op has run so far.
pub type RunCounts = BTreeMap<u64, u32>;

/// When each op last released (micros), for the simulated health check.
pub type Released = BTreeMap<u64, i64>;

/// A unit's state inside one hook.
#[derive(Default)]
pub struct HookState {
    pub(crate) unit: String,
    pub(crate) leader: bool,
    pub(crate) peer_endpoint: String,
    pub(crate) app_bag: Bag,
    pub(crate) unit_bags: BTreeMap<String, Bag>,
    pub(crate) start_micros: i64,
    pub(crate) elapsed: f64,
    pub(crate) unit_writes: Vec<(String, String)>,
    pub(crate) app_writes: Vec<(String, String)>,
    pub(crate) dispatches: Vec<String>,
    pub(crate) delayed: Vec<(String, u32)>,
    pub(crate) runs: Vec<CallbackRun>,
    pub(crate) run_counts: RunCounts,
    pub(crate) released: Released,
    pub(crate) logs: Vec<(LogLevel, String)>,
    pub(crate) fail_relation_set: bool,
    /// What the hook did, in order, for the timeline.
    pub(crate) story: Vec<String>,
}

/// The [`Host`] handed to the component: a handle on the hook's state, which the
/// simulator keeps a second handle on.
#[derive(Clone, Default)]
pub struct SimHost(pub Arc<Mutex<HookState>>);

impl SimHost {
    /// Wrap a hook's state.
    pub fn new(state: HookState) -> Self {
        SimHost(Arc::new(Mutex::new(state)))
    }

    /// The state, for reading after the hook.
    pub fn state(&self) -> MutexGuard<'_, HookState> {
        self.0.lock().expect("the simulator is single-threaded")
    }
}

impl HookState {
    fn bag_mut(&mut self, app: bool) -> &mut Bag {
        if app {
            &mut self.app_bag
        } else {
            let unit = self.unit.clone();
            self.unit_bags.entry(unit).or_default()
        }
    }
}

impl HookState {
    fn unit_name(&mut self) -> String {
        self.unit.clone()
    }

    fn model_uuid(&mut self) -> String {
        "f1d2c3b4-0000-4000-8000-123456789abc".into()
    }

    fn is_leader(&mut self) -> Result<bool, Error> {
        Ok(self.leader)
    }

    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error> {
        Ok(if endpoint == self.peer_endpoint {
            vec![PEER_RELATION_ID]
        } else {
            vec![]
        })
    }

    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error> {
        if relation_id != PEER_RELATION_ID {
            return Err(Error::Host(format!("relation {relation_id} not found")));
        }
        Ok(self
            .unit_bags
            .keys()
            .filter(|u| **u != self.unit)
            .cloned()
            .collect())
    }

    fn relation_get(
        &mut self,
        relation_id: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, Error> {
        if relation_id != PEER_RELATION_ID {
            return Err(Error::Host(format!("relation {relation_id} not found")));
        }
        let bag = match owner {
            BagOwner::App => Some(&self.app_bag),
            BagOwner::Unit(unit) => self.unit_bags.get(unit),
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
    ) -> Result<(), Error> {
        if relation_id != PEER_RELATION_ID {
            return Err(Error::Host(format!("relation {relation_id} not found")));
        }
        if self.fail_relation_set {
            self.fail_relation_set = false;
            return Err(Error::Host(
                "relation-set: connection to the controller lost".into(),
            ));
        }
        if app && !self.leader {
            return Err(Error::Host(
                "relation-set --app: this unit is not the leader".into(),
            ));
        }
        for (key, value) in pairs {
            let bag = self.bag_mut(app);
            if value.is_empty() {
                bag.remove(key);
            } else {
                bag.insert(key.clone(), value.clone());
            }
            if app && key == "granted_unit" {
                self.story.push(if value.is_empty() {
                    "releases the lock".into()
                } else {
                    format!("grants the lock to {value}")
                });
            }
            let writes = if app {
                &mut self.app_writes
            } else {
                &mut self.unit_writes
            };
            writes.push((key.clone(), value.clone()));
        }
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        self.logs.push((level, message.to_string()));
    }

    fn dispatch(&mut self, event: &str) -> Result<(), Error> {
        self.dispatches.push(event.to_string());
        self.story.push(format!("dispatches {event}"));
        Ok(())
    }

    fn now_micros(&mut self) -> i64 {
        self.start_micros + (self.elapsed * 1_000_000.0).round() as i64
    }

    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), Error> {
        self.delayed.push((event.to_string(), delay_ms));
        self.story.push(format!(
            "dispatches {event} in {:.1}s",
            f64::from(delay_ms) / 1e3
        ));
        Ok(())
    }

    /// `healthy`: ready once `ready_after` seconds have passed since the op (its `op`
    /// token) last released; a negative `ready_after` never gets ready.
    fn health_check(&mut self, id: &str, kwargs: &Value) -> CallbackOutcome {
        let op = kwargs.get("op").and_then(Value::as_u64);
        let ready_after = kwargs
            .get("ready_after")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let now = self.now_micros();
        let released = op.and_then(|o| self.released.get(&o).copied());
        let ready =
            ready_after >= 0.0 && released.is_some_and(|at| (now - at) as f64 / 1e6 >= ready_after);
        let outcome = if ready { "true" } else { "false" };
        self.runs.push(CallbackRun {
            id: id.to_string(),
            op: None,
            start_offset: self.elapsed,
            duration: 0.0,
            outcome: format!("health {outcome}"),
        });
        self.story
            .push(format!("checks {id} #{} → {outcome}", op.unwrap_or(0)));
        CallbackOutcome::Returned(Some(outcome.into()))
    }

    /// The simulated charm. kwargs: `delay` (seconds), `op` (token), and how its runs go:
    /// the first `raise` runs raise, the next `hold` runs return retry-hold, the next
    /// `retry` runs return retry-release, then it releases. `healthy` is the health check;
    /// any other id but `restart` just records that it was called.
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        let kwargs: Value = serde_json::from_str(kwargs_json).unwrap_or(Value::Null);
        if id == "healthy" {
            return self.health_check(id, &kwargs);
        }
        if id != "restart" {
            self.runs.push(CallbackRun {
                id: id.to_string(),
                op: None,
                start_offset: self.elapsed,
                duration: 0.0,
                outcome: "notified".into(),
            });
            self.story.push(format!("calls {id} with {kwargs}"));
            return CallbackOutcome::Returned(None);
        }
        let number = |key: &str| kwargs.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        let op = kwargs.get("op").and_then(Value::as_u64);
        let run = op
            .map(|o| {
                *self
                    .run_counts
                    .entry(o)
                    .and_modify(|c| *c += 1)
                    .or_insert(1)
            })
            .unwrap_or(1);
        let (raise, hold, retry) = (
            number("raise") as u32,
            number("hold") as u32,
            number("retry") as u32,
        );
        let outcome = if run <= raise {
            "raise"
        } else if run <= raise + hold {
            "retry-hold"
        } else if run <= raise + hold + retry {
            "retry-release"
        } else {
            "release"
        };
        let duration = number("delay").max(0.0);
        self.runs.push(CallbackRun {
            id: id.to_string(),
            op,
            start_offset: self.elapsed,
            duration,
            outcome: outcome.to_string(),
        });
        self.elapsed += duration;
        if outcome == "release"
            && let Some(op) = op
        {
            let now = self.now_micros();
            self.released.insert(op, now);
        }
        self.story.push(format!(
            "runs {id} #{} ({duration:.1}s) → {outcome}",
            op.unwrap_or(0)
        ));
        match outcome {
            "raise" => {
                CallbackOutcome::Raised(format!("RuntimeError: {id} failed on purpose (run {run})"))
            }
            other => CallbackOutcome::Returned(Some(other.to_string())),
        }
    }
}

impl Host for SimHost {
    fn unit_name(&mut self) -> String {
        self.state().unit_name()
    }
    fn model_uuid(&mut self) -> String {
        self.state().model_uuid()
    }
    fn is_leader(&mut self) -> Result<bool, Error> {
        self.state().is_leader()
    }
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error> {
        self.state().relation_ids(endpoint)
    }
    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error> {
        self.state().relation_units(relation_id)
    }
    fn relation_get(
        &mut self,
        relation_id: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, Error> {
        self.state().relation_get(relation_id, owner)
    }
    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error> {
        self.state().relation_set(relation_id, app, pairs)
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        self.state().log(level, message)
    }
    fn dispatch(&mut self, event: &str) -> Result<(), Error> {
        self.state().dispatch(event)
    }
    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), Error> {
        self.state().dispatch_after(event, delay_ms)
    }
    fn now_micros(&mut self) -> i64 {
        self.state().now_micros()
    }
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        self.state().run_callback(id, kwargs_json)
    }
}
