//! A deterministic in-memory Juju model running the real component.
//!
//! Units run hooks one at a time each, in parallel with each other, on a virtual clock.
//! A hook reads the committed databags when it starts; its writes commit when it ends,
//! and only then wake the other units (`relation-changed`). Leadership moves, units
//! depart, hook processes get killed mid-callback (Juju retries the hook), and dispatched
//! hooks queue behind the unit's current one. Every random choice comes from one seed.
//!
//! Callbacks take virtual time, so two units' callbacks overlapping in time is exactly a
//! mutual-exclusion violation; [`check`] looks for that and for lost or duplicated ops.

pub mod check;
pub mod host;
pub mod report;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::bindings::juju::rollingops::types::{Config, Event, LogLevel};
use crate::runtime::{Runtime, Session};
use crate::sandbox::Sandbox;
use host::{Bag, HookState, RunCounts, SimHost};

/// Start of virtual time: 2026-05-01T12:00:00Z.
pub const EPOCH_MICROS: i64 = 1_777_636_800_000_000;

/// An operator asking a unit for an operation (an action calling `request_async_lock`).
#[derive(Clone, Debug)]
pub struct RequestSpec {
    /// Virtual seconds when the action runs.
    pub at: f64,
    /// Unit index (`app/<index>`).
    pub unit: usize,
    /// Callback id.
    pub callback: String,
    /// Callback delay in seconds.
    pub delay: f64,
    /// Runs that raise, then return retry-hold, then retry-release, before releasing.
    pub raise: u32,
    /// See `raise`.
    pub hold: u32,
    /// See `raise`.
    pub retry: u32,
    /// `max_retry`.
    pub max_retry: Option<i64>,
    /// Health gate: the `healthy` check passes this many seconds after the op released
    /// (negative: never), and the gate gives up after the given seconds.
    pub health: Option<(f64, u32)>,
}

impl RequestSpec {
    /// A plain restart taking `delay` seconds.
    pub fn restart(at: f64, unit: usize, delay: f64) -> Self {
        RequestSpec {
            at,
            unit,
            callback: "restart".into(),
            delay,
            raise: 0,
            hold: 0,
            retry: 0,
            max_retry: None,
            health: None,
        }
    }
}

/// What an operator (an action on a unit) asks the library.
#[derive(Clone, Debug)]
pub enum OperatorAction {
    /// `set-policy`.
    SetPolicy(crate::Policy),
    /// `set-rank` on the unit.
    SetRank(i64),
    /// `start-roll` of `restart` taking `delay` seconds, gated by `healthy` passing
    /// `ready_after` seconds after each unit's restart (`None`: ungated), calling
    /// `roll-done` at the end.
    StartRoll {
        /// Restart duration.
        delay: f64,
        /// Health gate.
        health: Option<(f64, u32)>,
    },
    /// `control`.
    Control(crate::Control),
    /// Not an action: Juju moves leadership to the step's unit.
    Elect,
}

/// An operator action at a time on a unit (`None`: whoever leads then).
#[derive(Clone, Debug)]
pub struct OperatorStep {
    /// Virtual seconds.
    pub at: f64,
    /// Unit index, or the leader.
    pub unit: Option<usize>,
    /// What.
    pub action: OperatorAction,
}

/// Faults to inject, at random times within the first `window` seconds.
#[derive(Clone, Debug, Default)]
pub struct Chaos {
    /// Leadership moves to another unit this many times.
    pub leader_changes: usize,
    /// This many units are removed.
    pub departures: usize,
    /// Probability that a hook which ran a callback is killed before it commits.
    pub crash_probability: f64,
    /// Probability that a hook's first relation-set fails (hook error, retried).
    pub relation_set_failure_probability: f64,
    /// Seconds over which chaos events are spread.
    pub window: f64,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Application name.
    pub app: String,
    /// Number of units (`app/0` … `app/N-1`); `app/0` leads first.
    pub units: usize,
    /// Seed for every random choice.
    pub seed: u64,
    /// Operator requests.
    pub requests: Vec<RequestSpec>,
    /// Faults.
    pub chaos: Chaos,
    /// Seconds a hook costs besides its callbacks (uniform range).
    pub hook_cost: (f64, f64),
    /// Seconds between a commit and the hooks it causes starting (uniform range).
    pub delivery: (f64, f64),
    /// update-status interval per unit.
    pub update_status_interval: f64,
    /// Give up (a liveness failure) after this many virtual seconds.
    pub horizon: f64,
    /// Keep a timeline of every hook.
    pub record_timeline: bool,
    /// Operator actions.
    pub operator: Vec<OperatorStep>,
    /// How many units may run callbacks at once (the policy's `max_concurrent`).
    pub max_holders: usize,
}

impl Scenario {
    /// `units` units, each requesting one `restart` of `delay` seconds at t≈0.
    pub fn rolling_restart(units: usize, delay: f64, seed: u64) -> Self {
        Scenario {
            app: "app".into(),
            units,
            seed,
            requests: (0..units)
                .map(|u| RequestSpec::restart(0.001 * u as f64, u, delay))
                .collect(),
            chaos: Chaos::default(),
            hook_cost: (0.1, 0.3),
            delivery: (0.05, 0.2),
            update_status_interval: 300.0,
            horizon: 86_400.0,
            record_timeline: true,
            operator: Vec::new(),
            max_holders: 1,
        }
    }

    /// A random scenario for property testing.
    pub fn random(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_cafe);
        let units = rng.random_range(2..=6);
        let count = rng.random_range(1..=units * 3);
        let requests = (0..count)
            .map(|_| {
                let mut spec = RequestSpec::restart(
                    rng.random_range(0.0..60.0),
                    rng.random_range(0..units),
                    rng.random_range(0.0..5.0),
                );
                spec.raise = if rng.random_bool(0.15) {
                    rng.random_range(1..=2)
                } else {
                    0
                };
                spec.hold = if rng.random_bool(0.2) {
                    rng.random_range(1..=3)
                } else {
                    0
                };
                spec.retry = if rng.random_bool(0.2) {
                    rng.random_range(1..=3)
                } else {
                    0
                };
                spec.max_retry = if rng.random_bool(0.5) {
                    Some(rng.random_range(0..=4))
                } else {
                    None
                };
                spec
            })
            .collect();
        Scenario {
            app: "app".into(),
            units,
            seed,
            requests,
            chaos: Chaos {
                leader_changes: rng.random_range(0..=2),
                departures: if units > 2 {
                    rng.random_range(0..=1)
                } else {
                    0
                },
                crash_probability: if rng.random_bool(0.3) { 0.15 } else { 0.0 },
                relation_set_failure_probability: if rng.random_bool(0.3) { 0.05 } else { 0.0 },
                window: 120.0,
            },
            hook_cost: (0.05, 1.0),
            delivery: (0.01, 2.0),
            update_status_interval: 300.0,
            horizon: 3.0 * 86_400.0,
            record_timeline: false,
            operator: Vec::new(),
            max_holders: 1,
        }
    }
}

/// Which hook.
#[derive(Clone, Debug, PartialEq)]
pub enum HookKind {
    /// An action that requests the lock.
    Action(usize),
    /// `<peer>-relation-changed`.
    RelationChanged,
    /// `<peer>-relation-departed`.
    RelationDeparted(String),
    /// `leader-elected`.
    LeaderElected,
    /// `update-status`.
    UpdateStatus,
    /// `rollingops_lock_granted` (dispatched).
    LockGranted,
    /// `rollingops_lock_granted` dispatched after a delay (never coalesced).
    Wakeup,
    /// An operator action.
    Operator(usize),
}

impl HookKind {
    /// For the timeline.
    pub fn label(&self) -> String {
        match self {
            HookKind::Action(_) => "action restart".into(),
            HookKind::RelationChanged => "relation-changed".into(),
            HookKind::RelationDeparted(u) => format!("relation-departed {u}"),
            HookKind::LeaderElected => "leader-elected".into(),
            HookKind::UpdateStatus => "update-status".into(),
            HookKind::LockGranted => "rollingops_lock_granted".into(),
            HookKind::Wakeup => "rollingops_lock_granted (delayed)".into(),
            HookKind::Operator(i) => format!("action #{i}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Pending {
    kind: HookKind,
    ready_at: f64,
    cause: Option<usize>,
}

/// One executed hook, for the timeline and the checks.
#[derive(Clone, Debug)]
pub struct HookRecord {
    /// Sequence number.
    pub id: usize,
    /// Unit.
    pub unit: String,
    /// Whether the unit led when the hook started.
    pub leader: bool,
    /// Which hook.
    pub kind: HookKind,
    /// Virtual start time (seconds).
    pub start: f64,
    /// Virtual end time (commit, failure or kill).
    pub end: f64,
    /// The hook whose commit caused this one, if any.
    pub cause: Option<usize>,
    /// Callback runs.
    pub runs: Vec<host::CallbackRun>,
    /// How it ended.
    pub fate: Fate,
    /// App-bag writes.
    pub app_writes: Vec<(String, String)>,
    /// Unit-bag writes.
    pub unit_writes: Vec<(String, String)>,
    /// Dispatched hooks.
    pub dispatches: Vec<String>,
    /// Errors and warnings the component logged.
    pub notes: Vec<String>,
    /// What the hook did, in order.
    pub story: Vec<String>,
    /// The app bag and unit bags the hook started from (leader hooks only).
    pub snapshot: Option<(Bag, BTreeMap<String, Bag>)>,
}

/// How a hook ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Fate {
    /// Writes committed.
    Committed,
    /// The process was killed (writes lost); Juju retries the hook.
    Killed,
    /// The hook errored (writes lost); Juju retries it.
    Failed(String),
    /// The unit was removed while the hook ran.
    Departed,
}

/// The outcome of a simulation.
pub struct Outcome {
    /// The scenario run.
    pub scenario: Scenario,
    /// Every hook.
    pub hooks: Vec<HookRecord>,
    /// Units removed, with the time.
    pub departed: BTreeMap<String, f64>,
    /// Committed bags at the end.
    pub final_app: Bag,
    /// Committed unit bags at the end.
    pub final_units: BTreeMap<String, Bag>,
    /// Virtual seconds until quiescence (or the horizon).
    pub finished_at: f64,
    /// Whether the model went quiet before the horizon.
    pub quiescent: bool,
    /// Leadership changes: (time, new leader).
    pub leader_changes: Vec<(f64, String)>,
}

#[derive(Clone, Debug, PartialEq, PartialOrd)]
struct Time(f64);
impl Eq for Time {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for Time {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    Unit(String),
    Finish(String),
    LeaderChange,
    Departure,
    UpdateStatus(String),
    Operator(usize),
}

struct InFlight {
    record: HookRecord,
    host: HookState,
    pending: Pending,
}

/// The simulated model.
pub struct Simulation<'r> {
    runtime: &'r Runtime,
    scenario: Scenario,
    rng: SmallRng,
    app_bag: Bag,
    unit_bags: BTreeMap<String, Bag>,
    alive: BTreeSet<String>,
    leader: String,
    queues: BTreeMap<String, VecDeque<Pending>>,
    busy: BTreeMap<String, InFlight>,
    run_counts: RunCounts,
    released: host::Released,
    events: BinaryHeap<Reverse<(Time, u64, Wake)>>,
    event_seq: u64,
    now: f64,
    hooks: Vec<HookRecord>,
    departed: BTreeMap<String, f64>,
    leader_changes: Vec<(f64, String)>,
    config: Config,
    sandbox: Sandbox,
}

impl<'r> Simulation<'r> {
    /// Prepare a scenario.
    pub fn new(runtime: &'r Runtime, scenario: Scenario) -> Self {
        let names: Vec<String> = (0..scenario.units)
            .map(|i| format!("{}/{i}", scenario.app))
            .collect();
        let config = Config {
            peer_relation_name: "restart".into(),
            etcd_relation_name: None,
            cluster_id: None,
            base_dir: "/var/lib/rollingops".into(),
            callback_ids: vec!["restart".into(), "healthy".into(), "roll-done".into()],
            sync_lock_ids: vec![],
        };
        let scratch = std::env::temp_dir().join("rollingops-sim-sandbox");
        let mut sim = Simulation {
            runtime,
            rng: SmallRng::seed_from_u64(scenario.seed),
            app_bag: Bag::new(),
            unit_bags: names.iter().map(|n| (n.clone(), Bag::new())).collect(),
            alive: names.iter().cloned().collect(),
            leader: names[0].clone(),
            queues: names.iter().map(|n| (n.clone(), VecDeque::new())).collect(),
            busy: BTreeMap::new(),
            run_counts: RunCounts::new(),
            released: host::Released::new(),
            events: BinaryHeap::new(),
            event_seq: 0,
            now: 0.0,
            hooks: Vec::new(),
            departed: BTreeMap::new(),
            leader_changes: Vec::new(),
            config,
            sandbox: Sandbox::new(scratch.join("charm"), scratch.join("base")),
            scenario,
        };
        for (index, request) in sim.scenario.requests.clone().iter().enumerate() {
            if request.unit < names.len() {
                sim.enqueue(
                    &names[request.unit],
                    HookKind::Action(index),
                    request.at,
                    None,
                );
            }
        }
        // Units joined the peer relation before anything else: Juju ran relation-changed
        // on each, which is where a unit first advertises what it supports.
        for name in &names {
            let at = sim.rng.random_range(0.0..0.2);
            sim.enqueue(name, HookKind::RelationChanged, at, None);
        }
        for (index, step) in sim.scenario.operator.clone().iter().enumerate() {
            sim.wake(step.at, Wake::Operator(index));
        }
        let window = sim.scenario.chaos.window.max(1.0);
        for _ in 0..sim.scenario.chaos.leader_changes {
            let at = sim.rng.random_range(0.0..window);
            sim.wake(at, Wake::LeaderChange);
        }
        for _ in 0..sim.scenario.chaos.departures {
            let at = sim.rng.random_range(0.0..window);
            sim.wake(at, Wake::Departure);
        }
        for name in &names {
            let phase = sim
                .rng
                .random_range(0.0..sim.scenario.update_status_interval);
            sim.wake(phase, Wake::UpdateStatus(name.clone()));
        }
        sim
    }

    fn wake(&mut self, at: f64, what: Wake) {
        self.event_seq += 1;
        self.events.push(Reverse((Time(at), self.event_seq, what)));
    }

    /// Queue a hook; `relation-changed` and `rollingops_lock_granted` coalesce with a
    /// not-yet-started one, as Juju does (the later cause wins).
    fn enqueue(&mut self, unit: &str, kind: HookKind, ready_at: f64, cause: Option<usize>) {
        let Some(queue) = self.queues.get_mut(unit) else {
            return;
        };
        let coalesces = matches!(
            kind,
            HookKind::RelationChanged | HookKind::LockGranted | HookKind::UpdateStatus
        );
        if coalesces && let Some(existing) = queue.iter_mut().find(|p| p.kind == kind) {
            existing.cause = cause.or(existing.cause);
            return;
        }
        queue.push_back(Pending {
            kind,
            ready_at,
            cause,
        });
        self.wake(ready_at, Wake::Unit(unit.to_string()));
    }

    fn work_remains(&self) -> bool {
        let queued = self.unit_bags.iter().any(|(unit, bag)| {
            self.alive.contains(unit)
                && bag
                    .get("operations")
                    .is_some_and(|ops| !ops.is_empty() && ops != "[]")
        });
        let granted = self
            .app_bag
            .get("granted_unit")
            .is_some_and(|u| !u.is_empty());
        let pending = self
            .queues
            .values()
            .any(|q| q.iter().any(|p| p.kind != HookKind::UpdateStatus));
        queued || granted || pending || !self.busy.is_empty()
    }

    /// Run to quiescence or the horizon.
    pub fn run(mut self) -> Outcome {
        let mut quiescent = false;
        while let Some(Reverse((Time(at), _, what))) = self.events.pop() {
            if at > self.scenario.horizon {
                break;
            }
            self.now = at;
            match what {
                Wake::Unit(unit) => self.try_start(&unit),
                Wake::Finish(unit) => {
                    self.finish_hook(&unit);
                    self.try_start(&unit);
                }
                Wake::LeaderChange => self.change_leader(None),
                Wake::Operator(index) => {
                    let step = self.scenario.operator[index].clone();
                    let unit = step.unit.map_or_else(
                        || self.leader.clone(),
                        |u| format!("{}/{u}", self.scenario.app),
                    );
                    if matches!(step.action, OperatorAction::Elect) {
                        if self.alive.contains(&unit) && self.leader != unit {
                            self.change_leader(Some(unit));
                        }
                    } else {
                        self.enqueue(&unit, HookKind::Operator(index), at, None);
                        self.try_start(&unit);
                    }
                }
                Wake::Departure => self.depart_random(),
                Wake::UpdateStatus(unit) => {
                    if self.alive.contains(&unit) && self.work_remains() {
                        self.enqueue(&unit, HookKind::UpdateStatus, at, None);
                    }
                    if self.alive.contains(&unit) {
                        let next = at + self.scenario.update_status_interval;
                        self.wake(next, Wake::UpdateStatus(unit));
                    }
                }
            }
            let requests_left = self
                .events
                .iter()
                .any(|Reverse((_, _, w))| !matches!(w, Wake::UpdateStatus(_)));
            if !self.work_remains() && !requests_left {
                quiescent = true;
                break;
            }
        }
        Outcome {
            hooks: self.hooks,
            departed: self.departed,
            final_app: self.app_bag,
            final_units: self.unit_bags,
            finished_at: self.now,
            quiescent,
            leader_changes: self.leader_changes,
            scenario: self.scenario,
        }
    }

    fn try_start(&mut self, unit: &str) {
        if self.busy.contains_key(unit) || !self.alive.contains(unit) {
            return;
        }
        let now = self.now;
        let Some(queue) = self.queues.get_mut(unit) else {
            return;
        };
        let Some(position) = queue.iter().position(|p| p.ready_at <= now) else {
            return;
        };
        let pending = queue.remove(position).expect("position is valid");
        self.start_hook(unit, pending);
    }

    fn start_hook(&mut self, unit: &str, pending: Pending) {
        let leader = self.leader == unit;
        let fail_relation_set = self
            .rng
            .random_bool(self.scenario.chaos.relation_set_failure_probability);
        let (a, b) = self.scenario.hook_cost;
        let cost = self.rng.random_range(a..=b);
        let state = HookState {
            unit: unit.to_string(),
            leader,
            peer_endpoint: self.config.peer_relation_name.clone(),
            app_bag: self.app_bag.clone(),
            unit_bags: self
                .unit_bags
                .iter()
                .filter(|(u, _)| self.alive.contains(*u))
                .map(|(u, b)| (u.clone(), b.clone()))
                .collect(),
            start_micros: EPOCH_MICROS + (self.now * 1_000_000.0).round() as i64,
            elapsed: cost / 2.0,
            run_counts: std::mem::take(&mut self.run_counts),
            released: std::mem::take(&mut self.released),
            fail_relation_set,
            ..HookState::default()
        };
        let snapshot = leader.then(|| (state.app_bag.clone(), state.unit_bags.clone()));
        let shared = SimHost::new(state);
        let result = self.run_component(shared.clone(), &pending.kind);
        let mut host = std::mem::take(&mut *shared.state());
        self.run_counts = std::mem::take(&mut host.run_counts);
        self.released = std::mem::take(&mut host.released);
        let mut end = self.now + host.elapsed + cost / 2.0;
        let mut fate = match result {
            Ok(()) => Fate::Committed,
            Err(e) => Fate::Failed(e),
        };
        if !host.runs.is_empty()
            && fate == Fate::Committed
            && self.rng.random_bool(self.scenario.chaos.crash_probability)
        {
            // Killed part-way through the last callback.
            let last = host.runs.last_mut().expect("non-empty");
            let cut = self.rng.random_range(0.0..=1.0) * last.duration;
            last.duration = cut;
            if let Some(position) = host.story.iter().rposition(|s| s.starts_with("runs ")) {
                host.story.truncate(position + 1);
                host.story
                    .push(format!("killed {cut:.1}s into the callback"));
            }
            end = self.now + last.start_offset + cut;
            fate = Fate::Killed;
        }
        let notes = host
            .logs
            .iter()
            .filter(|(level, _)| matches!(level, LogLevel::Warning | LogLevel::Error))
            .map(|(_, m)| m.clone())
            .collect();
        let record = HookRecord {
            id: usize::MAX,
            unit: unit.to_string(),
            leader,
            kind: pending.kind.clone(),
            start: self.now,
            end,
            cause: pending.cause,
            runs: host.runs.clone(),
            fate,
            app_writes: host.app_writes.clone(),
            unit_writes: host.unit_writes.clone(),
            dispatches: host.dispatches.clone(),
            notes,
            story: host.story.clone(),
            snapshot,
        };
        self.busy.insert(
            unit.to_string(),
            InFlight {
                record,
                host,
                pending,
            },
        );
        self.wake(end, Wake::Finish(unit.to_string()));
    }

    fn run_component(&mut self, host: SimHost, kind: &HookKind) -> Result<(), String> {
        let mut session = match Session::new(
            self.runtime,
            Box::new(host),
            self.sandbox.clone(),
            &self.config,
        ) {
            Ok(session) => session,
            Err(e) => panic!("the simulator could not start the component: {e}"),
        };
        let result = match kind {
            HookKind::Action(index) => {
                let spec = &self.scenario.requests[*index];
                let mut kwargs = serde_json::json!({
                    "delay": spec.delay, "op": *index, "raise": spec.raise, "hold": spec.hold, "retry": spec.retry,
                });
                match spec.health {
                    None => session.request_async_lock(
                        &spec.callback,
                        &kwargs.to_string(),
                        spec.max_retry,
                    ),
                    Some((ready_after, timeout)) => {
                        kwargs["ready_after"] = serde_json::json!(ready_after);
                        let options = crate::RequestOptions {
                            max_retry: spec.max_retry,
                            health_check: Some("healthy".into()),
                            health_timeout_seconds: Some(timeout),
                            generation_kwarg: None,
                        };
                        session.request_lock(&spec.callback, &kwargs.to_string(), &options)
                    }
                }
            }
            HookKind::Operator(index) => {
                let step = self.scenario.operator[*index].clone();
                // An action's refusal is reported to the operator; a failure of Juju itself
                // (a hook tool) is retried, as an operator would re-run the action.
                match run_operator(&mut session, &step.action) {
                    Err(
                        e @ crate::runtime::Error::Library(
                            crate::bindings::juju::rollingops::types::Error::Host(_),
                        ),
                    ) => Err(e),
                    Err(e) => {
                        session
                            .host()
                            .log(LogLevel::Warning, &format!("action failed: {e}"));
                        // An operator whose leader-only action met a leadership change
                        // runs it again on the new leader.
                        if step.unit.is_none() && e.to_string().contains("Only the leader") {
                            let at = self.now + 1.0;
                            self.wake(at, Wake::Operator(*index));
                        }
                        Ok(())
                    }
                    Ok(()) => Ok(()),
                }
            }
            HookKind::Wakeup => session.handle_event(&Event::LockGranted),
            HookKind::RelationChanged => session.handle_event(&Event::PeerRelationChanged),
            HookKind::RelationDeparted(unit) => {
                session.handle_event(&Event::PeerRelationDeparted(unit.clone()))
            }
            HookKind::LeaderElected => session.handle_event(&Event::LeaderElected),
            HookKind::UpdateStatus => session.handle_event(&Event::UpdateStatus),
            HookKind::LockGranted => session.handle_event(&Event::LockGranted),
        };
        if let Err(crate::runtime::Error::Trap(e)) = &result {
            panic!("the component trapped: {e:?}");
        }
        result.map_err(|e| e.to_string())
    }

    fn finish_hook(&mut self, unit: &str) {
        let Some(InFlight {
            mut record,
            host,
            pending,
        }) = self.busy.remove(unit)
        else {
            return;
        };
        let id = self.hooks.len();
        record.id = id;
        match record.fate.clone() {
            Fate::Committed => {
                if !record.app_writes.is_empty() && self.leader != unit {
                    record.fate = Fate::Failed(
                        "leadership lost before commit: app bag writes refused".into(),
                    );
                    self.retry(unit, pending);
                } else {
                    self.commit(unit, &host, id);
                }
            }
            Fate::Killed | Fate::Failed(_) => self.retry(unit, pending),
            Fate::Departed => {}
        }
        self.hooks.push(record);
    }

    fn retry(&mut self, unit: &str, pending: Pending) {
        // Juju retries a failed hook after a back-off; the unit runs nothing else first.
        let retry_at = self.now + 5.0;
        if let Some(queue) = self.queues.get_mut(unit) {
            queue.push_front(Pending {
                ready_at: retry_at,
                ..pending
            });
        }
        self.wake(retry_at, Wake::Unit(unit.to_string()));
    }

    fn commit(&mut self, unit: &str, host: &HookState, id: usize) {
        let apply = host::apply_writes;
        apply(&mut self.app_bag, &host.app_writes);
        if let Some(bag) = self.unit_bags.get_mut(unit) {
            apply(bag, &host.unit_writes);
        }
        let changed = !host.app_writes.is_empty() || !host.unit_writes.is_empty();
        if changed {
            let others: Vec<String> = self.alive.iter().filter(|u| *u != unit).cloned().collect();
            for other in others {
                let (a, b) = self.scenario.delivery;
                let at = self.now + self.rng.random_range(a..=b);
                self.enqueue(&other, HookKind::RelationChanged, at, Some(id));
            }
        }
        for _ in &host.dispatches {
            let at = self.now + 0.05;
            self.enqueue(unit, HookKind::LockGranted, at, Some(id));
        }
        for (_, delay_ms) in &host.delayed {
            let at = self.now + f64::from(*delay_ms) / 1e3;
            self.enqueue(unit, HookKind::Wakeup, at, Some(id));
        }
    }

    fn change_leader(&mut self, forced: Option<String>) {
        let candidates: Vec<String> = self
            .alive
            .iter()
            .filter(|u| **u != self.leader)
            .cloned()
            .collect();
        let next = match forced {
            Some(unit) => unit,
            None if candidates.is_empty() => return,
            None => candidates[self.rng.random_range(0..candidates.len())].clone(),
        };
        self.leader = next.clone();
        self.leader_changes.push((self.now, next.clone()));
        let at = self.now + 0.1;
        self.enqueue(&next, HookKind::LeaderElected, at, None);
    }

    fn depart_random(&mut self) {
        if self.alive.len() <= 1 {
            return;
        }
        let units: Vec<String> = self.alive.iter().cloned().collect();
        let unit = units[self.rng.random_range(0..units.len())].clone();
        self.alive.remove(&unit);
        self.departed.insert(unit.clone(), self.now);
        self.queues.remove(&unit);
        self.unit_bags.remove(&unit);
        if let Some(InFlight { mut record, .. }) = self.busy.remove(&unit) {
            // The machine is gone: the callback stops now, nothing commits.
            let now = self.now;
            for run in &mut record.runs {
                let start = record.start + run.start_offset;
                run.duration = run.duration.min((now - start).max(0.0));
            }
            record.end = now;
            record.fate = Fate::Departed;
            record.id = self.hooks.len();
            self.hooks.push(record);
        }
        if self.leader == unit {
            let next = self.alive.iter().next().cloned().expect("one unit remains");
            self.change_leader(Some(next));
        }
        let others: Vec<String> = self.alive.iter().cloned().collect();
        for other in others {
            let at = self.now + 0.1;
            self.enqueue(&other, HookKind::RelationDeparted(unit.clone()), at, None);
        }
    }
}

fn run_operator(session: &mut Session, action: &OperatorAction) -> Result<(), crate::Error> {
    match action {
        OperatorAction::SetPolicy(policy) => session.set_policy(policy),
        OperatorAction::SetRank(rank) => session.set_rank(*rank),
        OperatorAction::StartRoll { delay, health } => {
            let kwargs = serde_json::json!({
                "delay": delay,
                "op": ROLL_OP_TOKEN,
                "ready_after": health.map_or(0.0, |h| h.0),
            });
            let request = crate::RollRequest {
                callback_id: "restart".into(),
                kwargs_json: kwargs.to_string(),
                health_check: health.map(|_| "healthy".into()),
                health_timeout_seconds: health.map(|h| h.1),
                on_complete: Some("roll-done".into()),
            };
            session.start_roll(&request).map(drop)
        }
        OperatorAction::Control(control) => session.control(control).map(drop),
        OperatorAction::Elect => Ok(()),
    }
}

/// The `op` token of application-wide roll operations (every unit runs it once).
pub const ROLL_OP_TOKEN: u64 = 1_000_000;

/// Run one scenario.
pub fn simulate(runtime: &Runtime, scenario: Scenario) -> Outcome {
    Simulation::new(runtime, scenario).run()
}
