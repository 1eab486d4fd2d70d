//! A testing kit for Rust charms: an in-memory peer relation on which every unit runs the
//! real component, so charm tests build states and drive rolling operations without
//! patching anything.
//!
//! State builders ([`Model::queue`], [`Model::hold`], [`Model::pause`]) get there by
//! running the component's own hooks, never by writing databags by hand, so the bytes are
//! exactly what production writes; the hooks those writes cause stay queued, as Juju would
//! have them, until [`Model::run_until_idle`] delivers them. [`Model::run_until_idle`] plays Juju: a hook's writes
//! commit when it succeeds and wake every other unit (`relation-changed`), dispatched
//! hooks queue behind the current one, and delayed dispatches fire when the virtual clock
//! reaches them (the clock jumps; nothing sleeps).
//!
//! ```
//! use rollingops::testing::Model;
//! use rollingops::OperationResult;
//!
//! let mut model = Model::new("app", 3);
//! model.callback("restart", |_call| OperationResult::Release);
//! for unit in model.units() {
//!     model.queue(&unit, "restart", serde_json::json!({})).unwrap();
//! }
//! model.run_until_idle(500).unwrap();
//! assert_eq!(model.calls().len(), 3);
//! assert!(model.holders().is_empty());
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::{Map, Value};

use crate::bindings::juju::rollingops::types::{
    BagOwner, CallbackOutcome, Config, Error as WitError, Event, LogLevel, OperationResult,
};
use crate::host::Host;
use crate::runtime::{Error, Runtime, Session};
use crate::sandbox::Sandbox;

/// The peer endpoint every model uses.
pub const PEER: &str = "restart";
const RELATION_ID: u32 = 1;
/// Virtual seconds a hook takes.
const HOOK_MICROS: i64 = 100_000;
/// 2026-05-01T12:00:00Z.
const EPOCH_MICROS: i64 = 1_777_636_800_000_000;

type Bag = BTreeMap<String, String>;
type Callback = Arc<dyn Fn(&Call) -> OperationResult + Send + Sync>;
type Check = Arc<dyn Fn(&Call) -> bool + Send + Sync>;

/// One callback (or health check) the component ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The unit it ran on.
    pub unit: String,
    /// Callback id.
    pub id: String,
    /// Its keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Virtual seconds since the model started.
    pub at: f64,
}

/// One hook in the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Virtual seconds since the model started.
    pub at: f64,
    /// The unit.
    pub unit: String,
    /// What ran (`relation-changed`, `rollingops_lock_granted`, `request`…).
    pub hook: String,
    /// Callbacks it ran.
    pub calls: Vec<String>,
    /// Whether it committed (a failed hook's writes are discarded).
    pub committed: bool,
    /// Error and warning lines the component logged.
    pub notes: Vec<String>,
}

#[derive(Default)]
struct Shared {
    app_bag: Bag,
    unit_bags: BTreeMap<String, Bag>,
    clock: i64,
    calls: Vec<Call>,
}

/// An application whose units share one peer relation, in memory.
pub struct Model {
    units: Vec<String>,
    leader: String,
    shared: Arc<Mutex<Shared>>,
    callbacks: BTreeMap<String, Callback>,
    checks: BTreeMap<String, Check>,
    pending: VecDeque<(String, Event)>,
    delayed: Vec<(i64, String)>,
    timeline: Vec<Entry>,
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(None).expect("the embedded component compiles"))
}

impl Model {
    /// `units` units `<app>/0…`, `<app>/0` leading, all on the peer relation (each has run
    /// its first `relation-changed`, as units do when they join).
    pub fn new(app: &str, units: usize) -> Self {
        let names: Vec<String> = (0..units).map(|i| format!("{app}/{i}")).collect();
        let shared = Shared {
            unit_bags: names.iter().map(|n| (n.clone(), Bag::new())).collect(),
            clock: EPOCH_MICROS,
            ..Shared::default()
        };
        let mut model = Model {
            leader: names[0].clone(),
            units: names,
            shared: Arc::new(Mutex::new(shared)),
            callbacks: BTreeMap::new(),
            checks: BTreeMap::new(),
            pending: VecDeque::new(),
            delayed: Vec::new(),
            timeline: Vec::new(),
        };
        for unit in model.units.clone() {
            model
                .hook(&unit, &Event::PeerRelationChanged)
                .expect("joining the relation");
        }
        model.pending.clear();
        model
    }

    /// Register a callback (the charm's `callback_targets[id]`).
    pub fn callback(
        &mut self,
        id: &str,
        callback: impl Fn(&Call) -> OperationResult + Send + Sync + 'static,
    ) -> &mut Self {
        self.callbacks.insert(id.into(), Arc::new(callback));
        self
    }

    /// Register a health check: ready when it returns true.
    pub fn health_check(
        &mut self,
        id: &str,
        check: impl Fn(&Call) -> bool + Send + Sync + 'static,
    ) -> &mut Self {
        self.checks.insert(id.into(), Arc::new(check));
        self
    }

    /// The units, in order.
    pub fn units(&self) -> Vec<String> {
        self.units.clone()
    }

    /// The leader.
    pub fn leader(&self) -> &str {
        &self.leader
    }

    /// Move leadership; `leader-elected` runs on the new leader at the next
    /// [`Model::run_until_idle`].
    pub fn set_leader(&mut self, unit: &str) {
        self.leader = unit.to_string();
        self.pending
            .push_back((unit.to_string(), Event::LeaderElected));
    }

    /// Remove `unit` (its machine is gone): its bag leaves the relation, its pending hooks
    /// are dropped, and every other unit gets `relation-departed`.
    pub fn depart(&mut self, unit: &str) {
        self.units.retain(|u| u != unit);
        lock(&self.shared).unit_bags.remove(unit);
        self.pending.retain(|(u, _)| u != unit);
        self.delayed.retain(|(_, u)| u != unit);
        if self.leader == unit
            && let Some(next) = self.units.first().cloned()
        {
            self.set_leader(&next);
        }
        for other in self.units.clone() {
            self.pending
                .push_back((other, Event::PeerRelationDeparted(unit.to_string())));
        }
    }

    /// Deliver queued hooks until `condition` holds (checked after every hook); returns
    /// whether it did before the model went idle.
    pub fn run_until(
        &mut self,
        max_hooks: usize,
        mut condition: impl FnMut(&Model) -> bool,
    ) -> Result<bool, Error> {
        for _ in 0..max_hooks {
            if condition(self) {
                return Ok(true);
            }
            if !self.step()? {
                return Ok(condition(self));
            }
        }
        Ok(condition(self))
    }

    // ---------------------------------------------------------------------------------
    // State builders: run the component's own hooks, deliver nothing else.

    /// "`unit` has `callback_id(kwargs)` queued": its request is committed; the hooks it
    /// causes have not run yet.
    pub fn queue(&mut self, unit: &str, callback_id: &str, kwargs: Value) -> Result<(), Error> {
        let kwargs = kwargs.to_string();
        self.run(unit, "request", |s| {
            s.request_async_lock(callback_id, &kwargs, None)
        })
    }

    /// "`unit` holds the lock for `callback_id(kwargs)` and has not run it yet": queued,
    /// then granted by the leader.
    pub fn hold(&mut self, unit: &str, callback_id: &str, kwargs: Value) -> Result<(), Error> {
        self.queue(unit, callback_id, kwargs)?;
        let leader = self.leader.clone();
        self.hook(&leader, &Event::PeerRelationChanged)?;
        if !self.holders().iter().any(|h| h == unit) {
            return Err(Error::Library(WitError::InvalidArgument(format!(
                "{unit} was not granted the lock (holders: {:?})",
                self.holders()
            ))));
        }
        Ok(())
    }

    /// "Grants are paused": the leader paused them.
    pub fn pause(&mut self, reason: &str) -> Result<(), Error> {
        let leader = self.leader.clone();
        let control = crate::Control::Pause(reason.into());
        self.run(&leader, "pause", |s| s.control(&control))?;
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // Driving

    /// Run one hook event on `unit` (it commits if it succeeds).
    pub fn hook(&mut self, unit: &str, event: &Event) -> Result<(), Error> {
        let label = event_label(event);
        self.run(unit, &label, |s| s.handle_event(event))
    }

    /// Run any manager call in a hook on `unit` (an action, say): `f` gets the session.
    pub fn run<T>(
        &mut self,
        unit: &str,
        label: &str,
        f: impl FnOnce(&mut Session) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let host = TestHost {
            unit: unit.to_string(),
            leader: self.leader == unit,
            shared: self.shared.clone(),
            callbacks: self.callbacks.clone(),
            checks: self.checks.clone(),
            effects: Arc::default(),
        };
        let effects = host.effects.clone();
        let config = Config {
            peer_relation_name: PEER.into(),
            etcd_relation_name: None,
            cluster_id: None,
            base_dir: "/var/lib/rollingops".into(),
            callback_ids: self
                .callbacks
                .keys()
                .chain(self.checks.keys())
                .cloned()
                .collect(),
            sync_lock_ids: vec![],
        };
        let scratch = std::env::temp_dir().join("rollingops-testing-sandbox");
        let sandbox = Sandbox::new(scratch.join("charm"), scratch.join("base"));
        let result = Session::new(runtime(), Box::new(host), sandbox, &config)
            .and_then(|mut session| f(&mut session));
        let effects = std::mem::take(&mut *lock(&effects));
        let committed = result.is_ok();
        let at = {
            let mut shared = lock(&self.shared);
            let at = (shared.clock - EPOCH_MICROS) as f64 / 1e6;
            if committed {
                crate::sim::host::apply_writes(&mut shared.app_bag, &effects.app_writes);
                let bag = shared.unit_bags.entry(unit.to_string()).or_default();
                crate::sim::host::apply_writes(bag, &effects.unit_writes);
            }
            shared.clock += HOOK_MICROS;
            at
        };
        if committed {
            if !effects.app_writes.is_empty() || !effects.unit_writes.is_empty() {
                for other in self.units.clone().iter().filter(|u| *u != unit) {
                    self.enqueue(other, Event::PeerRelationChanged);
                }
            }
            if effects.dispatches > 0 {
                self.enqueue(unit, Event::LockGranted);
            }
            let now = lock(&self.shared).clock;
            for delay_ms in effects.delayed {
                self.delayed
                    .push((now + i64::from(delay_ms) * 1_000, unit.to_string()));
            }
        }
        self.timeline.push(Entry {
            at,
            unit: unit.to_string(),
            hook: label.to_string(),
            calls: effects.calls,
            committed,
            notes: effects.notes,
        });
        result
    }

    /// Queue a hook unless the same one is already waiting (Juju coalesces them).
    fn enqueue(&mut self, unit: &str, event: Event) {
        let label = event_label(&event);
        let waiting = self
            .pending
            .iter()
            .any(|(u, e)| u == unit && event_label(e) == label);
        if !waiting {
            self.pending.push_back((unit.to_string(), event));
        }
    }

    /// Deliver queued hooks (and, when none are left, delayed dispatches, jumping the
    /// clock) until nothing remains; returns how many hooks ran. A hook that fails is an
    /// error (a test wants to know), unless `max_hooks` is reached first, which is an
    /// error too: the model did not settle.
    pub fn run_until_idle(&mut self, max_hooks: usize) -> Result<usize, Error> {
        let mut count = 0;
        while !self.pending.is_empty() || !self.delayed.is_empty() {
            if count >= max_hooks {
                return Err(Error::Library(WitError::Host(format!(
                    "the model did not settle within {max_hooks} hooks"
                ))));
            }
            self.step()?;
            count += 1;
        }
        Ok(count)
    }

    /// Run the next hook: a queued one, else the earliest delayed dispatch (jumping the
    /// clock). Returns false when there is nothing to run.
    pub fn step(&mut self) -> Result<bool, Error> {
        let next = match self.pending.pop_front() {
            Some(next) => next,
            None => {
                let Some(index) = (0..self.delayed.len()).min_by_key(|i| self.delayed[*i].0) else {
                    return Ok(false);
                };
                let (due, unit) = self.delayed.remove(index);
                let mut shared = lock(&self.shared);
                shared.clock = shared.clock.max(due);
                (unit, Event::LockGranted)
            }
        };
        self.hook(&next.0, &next.1)?;
        Ok(true)
    }

    // ---------------------------------------------------------------------------------
    // Inspection

    /// Units holding the lock now.
    pub fn holders(&self) -> Vec<String> {
        let shared = lock(&self.shared);
        let mut holders: Vec<String> = shared
            .app_bag
            .get("granted_unit")
            .filter(|u| !u.is_empty())
            .cloned()
            .into_iter()
            .collect();
        let record: Option<Value> = shared
            .app_bag
            .get("rollingops-grant")
            .and_then(|r| serde_json::from_str(r).ok());
        if let Some(extra) = record.as_ref().and_then(|r| r["extra"].as_array()) {
            holders.extend(
                extra
                    .iter()
                    .filter_map(|e| e["unit"].as_str().map(str::to_string)),
            );
        }
        holders
    }

    /// Every callback and check that ran, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared).calls.clone()
    }

    /// The application bag.
    pub fn app_bag(&self) -> Bag {
        lock(&self.shared).app_bag.clone()
    }

    /// A unit's bag.
    pub fn unit_bag(&self, unit: &str) -> Bag {
        lock(&self.shared)
            .unit_bags
            .get(unit)
            .cloned()
            .unwrap_or_default()
    }

    /// Every hook so far.
    pub fn timeline(&self) -> &[Entry] {
        &self.timeline
    }

    /// Virtual seconds since the model started.
    pub fn now(&self) -> f64 {
        (lock(&self.shared).clock - EPOCH_MICROS) as f64 / 1e6
    }

    /// The component's `describe()` as `unit` sees it.
    pub fn describe(&mut self, unit: &str) -> Result<Value, Error> {
        let text = self.run(unit, "describe", |s| s.describe())?;
        self.pending.clear();
        serde_json::from_str(&text)
            .map_err(|e| Error::Library(WitError::Decoding(format!("describe() is not JSON: {e}"))))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn event_label(event: &Event) -> String {
    match event {
        Event::PeerRelationChanged => "relation-changed".into(),
        Event::PeerRelationDeparted(unit) => format!("relation-departed {unit}"),
        Event::LeaderElected => "leader-elected".into(),
        Event::UpdateStatus => "update-status".into(),
        Event::LockGranted => "rollingops_lock_granted".into(),
        other => format!("{other:?}"),
    }
}

#[derive(Default)]
struct Effects {
    app_writes: Vec<(String, String)>,
    unit_writes: Vec<(String, String)>,
    dispatches: usize,
    delayed: Vec<u32>,
    calls: Vec<String>,
    notes: Vec<String>,
}

/// One hook's view: reads the committed bags, buffers writes (committed by the model).
struct TestHost {
    unit: String,
    leader: bool,
    shared: Arc<Mutex<Shared>>,
    callbacks: BTreeMap<String, Callback>,
    checks: BTreeMap<String, Check>,
    effects: Arc<Mutex<Effects>>,
}

impl Host for TestHost {
    fn unit_name(&mut self) -> String {
        self.unit.clone()
    }
    fn model_uuid(&mut self) -> String {
        "00000000-0000-4000-8000-000000000000".into()
    }
    fn is_leader(&mut self) -> Result<bool, WitError> {
        Ok(self.leader)
    }
    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, WitError> {
        Ok(if endpoint == PEER {
            vec![RELATION_ID]
        } else {
            vec![]
        })
    }
    fn relation_units(&mut self, _: u32) -> Result<Vec<String>, WitError> {
        Ok(lock(&self.shared)
            .unit_bags
            .keys()
            .filter(|u| **u != self.unit)
            .cloned()
            .collect())
    }
    fn relation_get(
        &mut self,
        _: u32,
        owner: &BagOwner,
    ) -> Result<Vec<(String, String)>, WitError> {
        let shared = lock(&self.shared);
        let effects = lock(&self.effects);
        // A hook sees its own writes on top of the committed bags.
        let bag = match owner {
            BagOwner::App => {
                let mut bag = shared.app_bag.clone();
                crate::sim::host::apply_writes(&mut bag, &effects.app_writes);
                bag
            }
            BagOwner::Unit(u) => {
                let mut bag = shared.unit_bags.get(u).cloned().unwrap_or_default();
                if *u == self.unit {
                    crate::sim::host::apply_writes(&mut bag, &effects.unit_writes);
                }
                bag
            }
        };
        Ok(bag.into_iter().collect())
    }
    fn relation_set(
        &mut self,
        _: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), WitError> {
        if app && !self.leader {
            return Err(WitError::Host(
                "relation-set: only the leader can write the application bag".into(),
            ));
        }
        let mut effects = lock(&self.effects);
        let writes = if app {
            &mut effects.app_writes
        } else {
            &mut effects.unit_writes
        };
        writes.extend(pairs.iter().cloned());
        Ok(())
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        if matches!(level, LogLevel::Warning | LogLevel::Error) {
            lock(&self.effects).notes.push(message.to_string());
        }
    }
    fn dispatch(&mut self, _: &str) -> Result<(), WitError> {
        lock(&self.effects).dispatches += 1;
        Ok(())
    }
    fn dispatch_after(&mut self, _: &str, delay_ms: u32) -> Result<(), WitError> {
        lock(&self.effects).delayed.push(delay_ms);
        Ok(())
    }
    fn now_micros(&mut self) -> i64 {
        lock(&self.shared).clock
    }
    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        let kwargs = match serde_json::from_str(kwargs_json) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let call = {
            let mut shared = lock(&self.shared);
            let call = Call {
                unit: self.unit.clone(),
                id: id.to_string(),
                kwargs,
                at: (shared.clock - EPOCH_MICROS) as f64 / 1e6,
            };
            shared.calls.push(call.clone());
            call
        };
        lock(&self.effects).calls.push(id.to_string());
        if let Some(check) = self.checks.get(id) {
            return CallbackOutcome::Returned(Some(check(&call).to_string()));
        }
        match self.callbacks.get(id) {
            Some(callback) => {
                let result = callback(&call);
                CallbackOutcome::Returned(Some(crate::charm::wire_result(result).into()))
            }
            None => CallbackOutcome::Missing,
        }
    }
}
