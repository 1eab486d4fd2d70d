//! A small in-memory Juju model for the core's acceptance tests.
//!
//! One application, one peer relation (id 0, endpoint [`PEER`]), a leader flag, shared
//! databags, a microsecond clock (with optional per-unit skew) and scripted charm
//! callbacks. Every hook goes through the real [`driver`]: [`Model::run`] builds the
//! unit's [`Effects`], loads the manager from the committed bags, runs one entry point,
//! and commits the hook's buffered writes only if it succeeded (Juju semantics). Each
//! committed change queues the `relation-changed` hooks Juju would fire, and each
//! dispatch queues a `rollingops_lock_granted` hook; [`Model::settle`] runs them.
#![allow(dead_code)]

use rollingops_guest::features::{FEATURES, advertised};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rollingops_guest::driver::{self, BagOwner, Effects};
use rollingops_guest::manager::SyncBackendError;
use rollingops_guest::wire::Bag;
use rollingops_guest::{
    CallbackOutcome, Config, Error, Event, LogLevel, Manager, State, Timestamp,
};
use serde_json::Value;

/// 2026-05-01T12:00:00Z in microseconds: the model's clock starts here.
pub const T0: i64 = 1_777_636_800_000_000;
/// The peer endpoint name (the reference test charm's).
pub const PEER: &str = "restart";
/// The hook a dispatch runs.
pub const LOCK_GRANTED: &str = "rollingops_lock_granted";

/// A callback returning `value` (`None` = Python `None`).
pub fn ret(value: Option<&str>) -> CallbackOutcome {
    CallbackOutcome::Returned(value.map(str::to_string))
}

/// A callback raising an exception.
pub fn raise(description: &str) -> CallbackOutcome {
    CallbackOutcome::Raised(description.to_string())
}

/// A stored operation, as the reference writes it.
pub fn op(
    id: &str,
    requested_at: &str,
    max_retry: Option<u64>,
    attempt: u64,
    kwargs: &str,
) -> String {
    let max_retry = max_retry.map_or("null".to_string(), |m| m.to_string());
    format!(
        r#"{{"callback_id":"{id}","requested_at":"{requested_at}","max_retry":{max_retry},"attempt":{attempt},"result":null,"kwargs":{kwargs}}}"#
    )
}

/// A stored queue from operations.
pub fn queue(ops: &[String]) -> String {
    format!("[{}]", ops.join(","))
}

/// A timestamp string at `T0 + micros`.
pub fn ts(micros: i64) -> String {
    Timestamp::from_micros(T0 + micros).to_string()
}

/// What a scripted callback does: replies in order, the last one repeating.
#[derive(Clone, Debug)]
pub struct Script {
    /// Replies in order.
    pub replies: Vec<CallbackOutcome>,
    /// How long each call takes, in microseconds of model time.
    pub duration: i64,
    calls: usize,
}

/// One callback invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The unit it ran on.
    pub unit: String,
    /// Callback id.
    pub id: String,
    /// kwargs exactly as handed over.
    pub kwargs_json: String,
    /// kwargs parsed.
    pub kwargs: Value,
    /// `granted_unit` as this hook saw it (committed app bag plus the hook's own writes).
    pub granted_unit: Option<String>,
}

/// One sync-backend call: `(unit, "acquire" | "release", id, timeout)`.
pub type SyncCall = (String, &'static str, String, Option<u32>);

/// What one hook did.
#[derive(Clone, Debug)]
pub struct HookRecord {
    /// The unit.
    pub unit: String,
    /// A label (event name or entry point).
    pub what: String,
    /// Whether it succeeded (and so committed).
    pub ok: bool,
    /// App-bag keys the hook tried to write, net of later writes ("" = delete).
    pub app_writes: Bag,
    /// Own-bag keys the hook tried to write, net.
    pub unit_writes: Bag,
    /// App-bag keys whose committed value actually changed ("" = deleted).
    pub app_changed: Bag,
    /// Own-bag keys whose committed value actually changed.
    pub unit_changed: Bag,
}

/// The model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Units on the peer relation, in order.
    pub units: Vec<String>,
    /// The leader.
    pub leader: String,
    /// Whether the peer relation exists.
    pub relation: bool,
    /// Whether the charm configures an etcd relation and a cluster id (reference §7.3 charm).
    pub etcd_configured: bool,
    /// The application bag (committed).
    pub app_bag: Bag,
    /// Unit bags (committed).
    pub bags: BTreeMap<String, Bag>,
    /// Model time in microseconds.
    pub clock: i64,
    /// Per-unit clock offsets in microseconds.
    pub skew: BTreeMap<String, i64>,
    /// The charm's callback registry.
    pub callbacks: BTreeMap<String, Script>,
    /// Units whose `relation-set` fails (so their hooks fail and commit nothing).
    pub failing_writes: BTreeSet<String>,
    /// The charm's sync-lock backends: how each acquire answers.
    pub sync_backends: BTreeMap<String, Result<(), SyncBackendError>>,
    /// Every callback invocation.
    pub calls: Vec<Call>,
    /// Every sync-backend call.
    pub sync_calls: Vec<SyncCall>,
    /// Every dispatch: `(unit, event)`.
    pub dispatched: Vec<(String, String)>,
    /// Every delayed dispatch: `(unit, delay_ms)`; delivered by [`Model::deliver_delayed`].
    pub delayed: Vec<(String, u32)>,
    /// Every log line: `(unit, level, message)`.
    pub logs: Vec<(String, LogLevel, String)>,
    /// Every hook run.
    pub hooks: Vec<HookRecord>,
    /// Hooks Juju would run next.
    pub pending: VecDeque<(String, Event)>,
    /// Units whose hooks [`Model::settle`] drops (they stand for reference-library units,
    /// whose bags a test writes by hand).
    pub foreign: BTreeSet<String>,
    /// Callback ids that run without the lock (a roll's completion callback).
    pub notifications: BTreeSet<String>,
    /// Leadership moves to this unit while the next callback runs (mid-hook).
    pub leader_after_callback: Option<String>,
}

impl Model {
    /// `count` units `<app>/0..`, unit 0 the leader, a peer relation on which every unit
    /// already advertised this library's features (the steady state after an upgrade; the
    /// extended keys are then never rewritten), no callbacks.
    pub fn new(app: &str, count: usize) -> Self {
        let units: Vec<String> = (0..count).map(|i| format!("{app}/{i}")).collect();
        let advertised: Bag = [(FEATURES.to_string(), advertised())].into_iter().collect();
        Model {
            leader: units[0].clone(),
            bags: units
                .iter()
                .map(|u| (u.clone(), advertised.clone()))
                .collect(),
            units,
            relation: true,
            etcd_configured: false,
            app_bag: advertised.clone(),
            clock: T0,
            skew: BTreeMap::new(),
            callbacks: BTreeMap::new(),
            failing_writes: BTreeSet::new(),
            sync_backends: BTreeMap::new(),
            calls: Vec::new(),
            sync_calls: Vec::new(),
            dispatched: Vec::new(),
            delayed: Vec::new(),
            logs: Vec::new(),
            hooks: Vec::new(),
            pending: VecDeque::new(),
            foreign: BTreeSet::new(),
            notifications: BTreeSet::new(),
            leader_after_callback: None,
        }
    }

    /// Register a callback with its replies (the last repeats).
    pub fn on(&mut self, id: &str, replies: &[CallbackOutcome]) -> &mut Self {
        self.on_timed(id, 0, replies)
    }

    /// Register a callback whose every call takes `duration` microseconds.
    pub fn on_timed(&mut self, id: &str, duration: i64, replies: &[CallbackOutcome]) -> &mut Self {
        assert!(!replies.is_empty(), "a script needs at least one reply");
        self.callbacks.insert(
            id.into(),
            Script {
                replies: replies.to_vec(),
                duration,
                calls: 0,
            },
        );
        self
    }

    /// The library configuration the charm would pass.
    pub fn config(&self) -> Config {
        Config {
            peer_relation_name: PEER.into(),
            etcd_relation_name: self.etcd_configured.then(|| "etcd".into()),
            cluster_id: self.etcd_configured.then(|| "cluster-12345".into()),
            base_dir: "/var/lib/rollingops".into(),
            callback_ids: self.callbacks.keys().cloned().collect(),
            sync_lock_ids: self.sync_backends.keys().cloned().collect(),
        }
    }

    // ---------------------------------------------------------------------------------
    // Hooks

    /// Run one hook on `unit`: load the manager, call `f`, commit if it succeeded.
    pub fn run<T>(
        &mut self,
        unit: &str,
        what: &str,
        f: impl FnOnce(&mut Manager, &mut UnitFx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        assert!(self.bags.contains_key(unit), "{unit} is not in the model");
        let config = self.config();
        let mut fx = UnitFx {
            model: self,
            unit: unit.into(),
            app_writes: Bag::new(),
            unit_writes: Bag::new(),
        };
        let result = driver::load(config, &mut fx).and_then(|mut manager| f(&mut manager, &mut fx));
        let UnitFx {
            app_writes,
            unit_writes,
            ..
        } = fx;
        self.commit(unit, what, result.is_ok(), app_writes, unit_writes);
        result
    }

    /// One hook event on `unit`.
    pub fn hook(&mut self, unit: &str, event: Event) -> Result<(), Error> {
        let what = format!("{event:?}");
        self.run(unit, &what, |m, fx| driver::handle_event(m, fx, event))
    }

    /// `request_async_lock` in a hook (an action) on `unit`.
    pub fn request(
        &mut self,
        unit: &str,
        id: &str,
        kwargs: &str,
        max_retry: Option<i64>,
    ) -> Result<(), Error> {
        self.run(unit, "request", |m, fx| {
            driver::request_async_lock(m, fx, id, kwargs, max_retry)
        })
    }

    /// `state` read in a hook on `unit`.
    pub fn state(&mut self, unit: &str) -> Result<State, Error> {
        self.run(unit, "state", |m, fx| driver::state(m, fx))
    }

    /// `is_waiting` / `is_waiting_callback` read in a hook on `unit`.
    pub fn is_waiting(
        &mut self,
        unit: &str,
        of: Option<&str>,
        callback: Option<&str>,
    ) -> Result<bool, Error> {
        self.run(unit, "is_waiting", |m, fx| {
            driver::is_waiting(m, fx, of, callback)
        })
    }

    /// Advance the clock past the earliest delayed dispatch and run it; returns the unit.
    pub fn deliver_delayed(&mut self) -> Option<String> {
        if self.delayed.is_empty() {
            return None;
        }
        let (index, _) = self
            .delayed
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, ms))| *ms)?;
        let (unit, ms) = self.delayed.remove(index);
        self.clock += i64::from(ms) * 1_000;
        for other in &mut self.delayed {
            other.1 = other.1.saturating_sub(ms);
        }
        self.hook(&unit, Event::LockGranted).expect("delayed hook");
        Some(unit)
    }

    /// Run queued hooks until none are left; returns how many ran. Panics on a failed
    /// hook or if the model does not settle.
    pub fn settle(&mut self) -> usize {
        let mut count = 0;
        while let Some((unit, event)) = self.pending.pop_front() {
            if !self.bags.contains_key(&unit) || self.foreign.contains(&unit) {
                continue;
            }
            if let Err(e) = self.hook(&unit, event.clone()) {
                panic!("{event:?} on {unit} failed: {e}");
            }
            count += 1;
            assert!(count < 1000, "the model did not settle");
        }
        count
    }

    fn commit(&mut self, unit: &str, what: &str, ok: bool, app_writes: Bag, unit_writes: Bag) {
        let (mut app_changed, mut unit_changed) = (Bag::new(), Bag::new());
        if ok {
            app_changed = apply(&mut self.app_bag, &app_writes);
            unit_changed = apply(self.bags.get_mut(unit).expect("unit exists"), &unit_writes);
            if !app_changed.is_empty() || !unit_changed.is_empty() {
                for other in self.units.clone() {
                    if other != unit {
                        self.queue_hook(&other, Event::PeerRelationChanged);
                    }
                }
            }
        }
        self.hooks.push(HookRecord {
            unit: unit.into(),
            what: what.into(),
            ok,
            app_writes,
            unit_writes,
            app_changed,
            unit_changed,
        });
    }

    /// Queue a hook unless the same one is already queued (Juju coalesces them).
    pub fn queue_hook(&mut self, unit: &str, event: Event) {
        let item = (unit.to_string(), event);
        if !self.pending.contains(&item) {
            self.pending.push_back(item);
        }
    }

    // ---------------------------------------------------------------------------------
    // Membership and leadership

    /// Make `unit` the leader (the caller runs `leader-elected`).
    pub fn elect(&mut self, unit: &str) {
        self.leader = unit.into();
    }

    /// Remove `unit` from the relation (its bag goes with it) and run
    /// `relation-departed` on the leader.
    pub fn depart(&mut self, unit: &str) -> Result<(), Error> {
        self.units.retain(|u| u != unit);
        self.bags.remove(unit);
        let leader = self.leader.clone();
        self.hook(&leader, Event::PeerRelationDeparted(unit.into()))
    }

    // ---------------------------------------------------------------------------------
    // Bags and clock

    /// Set keys in a unit's committed bag ("" deletes), as if written earlier.
    pub fn seed(&mut self, unit: &str, pairs: &[(&str, &str)]) {
        let bag = self.bags.get_mut(unit).expect("unit exists");
        apply(
            bag,
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// Set keys in the committed app bag.
    pub fn seed_app(&mut self, pairs: &[(&str, &str)]) {
        apply(
            &mut self.app_bag,
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// A committed unit-bag value.
    pub fn get(&self, unit: &str, key: &str) -> Option<&str> {
        self.bags.get(unit)?.get(key).map(String::as_str)
    }

    /// A committed app-bag value.
    pub fn app(&self, key: &str) -> Option<&str> {
        self.app_bag.get(key).map(String::as_str)
    }

    /// The committed holder.
    pub fn holder(&self) -> Option<&str> {
        self.app("granted_unit")
    }

    /// Set the model clock to `T0 + micros`.
    pub fn at(&mut self, micros: i64) {
        self.clock = T0 + micros;
    }

    /// The last hook's record.
    pub fn last(&self) -> &HookRecord {
        self.hooks.last().expect("a hook ran")
    }

    /// Callback ids run on `unit`, in order.
    pub fn calls_on(&self, unit: &str) -> Vec<&str> {
        self.calls
            .iter()
            .filter(|c| c.unit == unit)
            .map(|c| c.id.as_str())
            .collect()
    }

    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs
            .iter()
            .any(|(_, _, message)| message.contains(needle))
    }
}

/// Apply writes to a bag; returns what actually changed.
fn apply(bag: &mut Bag, writes: &Bag) -> Bag {
    let mut changed = Bag::new();
    for (key, value) in writes {
        let before = bag.get(key).cloned().unwrap_or_default();
        if before == *value {
            continue;
        }
        if value.is_empty() {
            bag.remove(key);
        } else {
            bag.insert(key.clone(), value.clone());
        }
        changed.insert(key.clone(), value.clone());
    }
    changed
}

/// One unit's view of the model during a hook: [`Effects`] with buffered writes.
pub struct UnitFx<'a> {
    model: &'a mut Model,
    unit: String,
    app_writes: Bag,
    unit_writes: Bag,
}

impl UnitFx<'_> {
    /// The app bag as this hook sees it (committed plus its own writes).
    fn app_view(&self) -> Bag {
        let mut bag = self.model.app_bag.clone();
        apply(&mut bag, &self.app_writes);
        bag
    }
}

impl Effects for UnitFx<'_> {
    fn unit_name(&mut self) -> String {
        self.unit.clone()
    }

    fn is_leader(&mut self) -> Result<bool, Error> {
        Ok(self.model.leader == self.unit)
    }

    fn relation_ids(&mut self, endpoint: &str) -> Result<Vec<u32>, Error> {
        Ok(if self.model.relation && endpoint == PEER {
            vec![0]
        } else {
            vec![]
        })
    }

    fn relation_units(&mut self, relation_id: u32) -> Result<Vec<String>, Error> {
        assert_eq!(relation_id, 0);
        Ok(self
            .model
            .units
            .iter()
            .filter(|u| **u != self.unit)
            .cloned()
            .collect())
    }

    fn relation_get(&mut self, relation_id: u32, owner: BagOwner<'_>) -> Result<Bag, Error> {
        assert_eq!(relation_id, 0);
        match owner {
            BagOwner::App => Ok(self.app_view()),
            BagOwner::Unit(name) if name == self.unit => {
                let mut bag = self.model.bags[name].clone();
                apply(&mut bag, &self.unit_writes);
                Ok(bag)
            }
            BagOwner::Unit(name) => match self.model.bags.get(name) {
                Some(bag) if self.model.units.iter().any(|u| u == name) => Ok(bag.clone()),
                _ => Err(Error::Host(format!(
                    "relation-get: {name} is not on the relation"
                ))),
            },
        }
    }

    fn relation_set(
        &mut self,
        relation_id: u32,
        app: bool,
        pairs: &[(String, String)],
    ) -> Result<(), Error> {
        assert_eq!(relation_id, 0);
        if self.model.failing_writes.contains(&self.unit) {
            return Err(Error::Host("relation-set: hook tool failed".into()));
        }
        if app && self.model.leader != self.unit {
            return Err(Error::Host("relation-set --app: not the leader".into()));
        }
        let target = if app {
            &mut self.app_writes
        } else {
            &mut self.unit_writes
        };
        for (key, value) in pairs {
            target.insert(key.clone(), value.clone());
        }
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        self.model
            .logs
            .push((self.unit.clone(), level, message.to_string()));
    }

    fn dispatch(&mut self, event: &str) -> Result<(), Error> {
        assert_eq!(event, LOCK_GRANTED, "the only hook the core dispatches");
        self.model
            .dispatched
            .push((self.unit.clone(), event.to_string()));
        let unit = self.unit.clone();
        self.model.queue_hook(&unit, Event::LockGranted);
        Ok(())
    }

    fn dispatch_after(&mut self, event: &str, delay_ms: u32) -> Result<(), Error> {
        assert_eq!(event, LOCK_GRANTED, "the only hook the core dispatches");
        self.model.delayed.push((self.unit.clone(), delay_ms));
        Ok(())
    }

    fn now(&mut self) -> Timestamp {
        let skew = self.model.skew.get(&self.unit).copied().unwrap_or(0);
        Timestamp::from_micros(self.model.clock + skew)
    }

    fn run_callback(&mut self, id: &str, kwargs_json: &str) -> CallbackOutcome {
        if let Some(next) = self.model.leader_after_callback.take() {
            self.model.leader = next;
        }
        let app = self.app_view();
        let granted_unit = app.get("granted_unit").cloned();
        let holders = rollingops_guest::wire::LockState::decode(&app).holders();
        assert!(
            self.model.notifications.contains(id) || holders.iter().any(|g| g.unit == self.unit),
            "{id} ran without the lock"
        );
        let Some(script) = self.model.callbacks.get_mut(id) else {
            return CallbackOutcome::Missing;
        };
        let reply = script.replies[script.calls.min(script.replies.len() - 1)].clone();
        script.calls += 1;
        if reply == CallbackOutcome::Missing {
            return reply; // registered with the library, gone from the charm: nothing runs
        }
        self.model.clock += script.duration;
        self.model.calls.push(Call {
            unit: self.unit.clone(),
            id: id.to_string(),
            kwargs_json: kwargs_json.to_string(),
            kwargs: serde_json::from_str(kwargs_json)
                .expect("kwargs handed to a callback are JSON"),
            granted_unit,
        });
        reply
    }

    fn sync_backend_acquire(
        &mut self,
        id: &str,
        timeout_seconds: Option<u32>,
    ) -> Result<(), SyncBackendError> {
        self.model.sync_calls.push((
            self.unit.clone(),
            "acquire",
            id.to_string(),
            timeout_seconds,
        ));
        self.model
            .sync_backends
            .get(id)
            .cloned()
            .unwrap_or(Err(SyncBackendError::Missing))
    }

    fn sync_backend_release(&mut self, id: &str) -> Result<(), SyncBackendError> {
        self.model
            .sync_calls
            .push((self.unit.clone(), "release", id.to_string(), None));
        match self.model.sync_backends.get(id) {
            Some(_) => Ok(()),
            None => Err(SyncBackendError::Missing),
        }
    }
}
