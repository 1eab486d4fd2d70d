//! Invariants over a finished simulation: mutual exclusion at every instant, every op
//! completed (or dropped only by its own `max_retry`, or gone with its unit), no op run
//! again after it completed, the scheduler's priority order, and quiescence.

use std::collections::BTreeMap;

use serde_json::Value;

use super::host::Bag;
use super::{Fate, HookKind, HookRecord, Outcome};

/// A callback run placed on the virtual timeline.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Unit.
    pub unit: String,
    /// Op token.
    pub op: Option<u64>,
    /// Start (virtual seconds).
    pub start: f64,
    /// End (virtual seconds).
    pub end: f64,
    /// Hook index.
    pub hook: usize,
    /// Outcome reported by the callback.
    pub outcome: String,
    /// Whether the hook committed.
    pub committed: bool,
}

/// Every callback run, in start order.
pub fn intervals(outcome: &Outcome) -> Vec<Interval> {
    let mut all: Vec<Interval> = outcome
        .hooks
        .iter()
        .flat_map(|hook| {
            // A notification (the roll-complete callback) holds no lock: not a critical
            // section.
            hook.runs
                .iter()
                .filter(|run| run.outcome != "notified")
                .map(move |run| Interval {
                    unit: hook.unit.clone(),
                    op: run.op,
                    start: hook.start + run.start_offset,
                    end: hook.start + run.start_offset + run.duration,
                    hook: hook.id,
                    outcome: run.outcome.clone(),
                    committed: hook.fate == Fate::Committed,
                })
        })
        .collect();
    all.sort_by(|a, b| a.start.total_cmp(&b.start));
    all
}

/// The largest number of callbacks running at one instant.
pub fn max_concurrent(intervals: &[Interval]) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for i in intervals {
        edges.push((i.start, 1));
        edges.push((i.end, -1));
    }
    // Ends before starts at the same instant: touching intervals do not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

/// All violations found; empty means the run was correct.
pub fn check(outcome: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    let runs = intervals(outcome);

    // Mutual exclusion.
    let limit = outcome.scenario.max_holders.max(1);
    if limit > 1 {
        let most = max_concurrent(&runs);
        if most > limit {
            problems.push(format!(
                "mutual exclusion: {most} callbacks overlapped with max_concurrent {limit}"
            ));
        }
    } else {
        let mut latest: Option<&Interval> = None;
        for run in &runs {
            if let Some(prev) = latest
                && run.start < prev.end - 1e-9
                && run.unit != prev.unit
            {
                problems.push(format!(
                    "mutual exclusion: {} ran op {:?} from {:.3}s while {} ran op {:?} until {:.3}s",
                    run.unit, run.op, run.start, prev.unit, prev.op, prev.end
                ));
            }
            if latest.is_none_or(|prev| run.end > prev.end) {
                latest = Some(run);
            }
        }
    }

    if !outcome.quiescent {
        problems.push(format!(
            "liveness: work still pending at the horizon ({:.0}s)",
            outcome.finished_at
        ));
    }

    // Every accepted request completes, exactly once after at-least-once retries.
    for (index, spec) in outcome.scenario.requests.iter().enumerate() {
        let unit = format!("{}/{}", outcome.scenario.app, spec.unit);
        if outcome.departed.contains_key(&unit) {
            continue;
        }
        let accepted = outcome
            .hooks
            .iter()
            .any(|h| h.kind == HookKind::Action(index) && h.fate == Fate::Committed);
        if !accepted {
            problems.push(format!("op {index} on {unit}: the request never committed"));
            continue;
        }
        let committed: Vec<&Interval> = runs
            .iter()
            .filter(|r| r.op == Some(index as u64) && r.committed)
            .collect();
        let retries = committed.iter().filter(|r| r.outcome != "release").count();
        let released = committed.iter().position(|r| r.outcome == "release");
        let exhausted = spec.max_retry.map(|m| m as usize + 1);
        let done_at = match (released, exhausted) {
            (Some(position), _) => Some(position),
            (None, Some(limit)) if retries >= limit => Some(limit - 1),
            _ => None,
        };
        match done_at {
            None => problems.push(format!(
                "op {index} on {unit}: never completed ({} committed runs, max_retry {:?})",
                committed.len(),
                spec.max_retry
            )),
            Some(position) if committed.len() > position + 1 => problems.push(format!(
                "op {index} on {unit}: ran {} more time(s) after it completed",
                committed.len() - position - 1
            )),
            Some(_) => {}
        }
        if let Some(limit) = exhausted
            && retries > limit
        {
            problems.push(format!(
                "op {index} on {unit}: {retries} retries beyond max_retry {limit}"
            ));
        }
        if let Some(bag) = outcome.final_units.get(&unit)
            && bag
                .get("operations")
                .is_some_and(|ops| ops.contains(&format!("\"op\":{index},")))
        {
            problems.push(format!("op {index} on {unit}: still queued at the end"));
        }
    }

    // Priority: every grant goes to the best class, oldest head first among requests.
    // Rank ordering and several holders change the order on purpose.
    let reference_order = outcome.scenario.operator.is_empty();
    for hook in outcome
        .hooks
        .iter()
        .filter(|h| h.fate == Fate::Committed && reference_order)
    {
        if let Some(problem) = check_grant(hook) {
            problems.push(problem);
        }
    }
    problems
}

fn check_grant(hook: &HookRecord) -> Option<String> {
    let granted = hook
        .app_writes
        .iter()
        .rev()
        .find(|(k, _)| k == "granted_unit")?
        .1
        .clone();
    if granted.is_empty() {
        return None;
    }
    let (_, units) = hook.snapshot.as_ref()?;
    let mut units: BTreeMap<String, Bag> = units.clone();
    let own = units.entry(hook.unit.clone()).or_default();
    for (key, value) in &hook.unit_writes {
        if value.is_empty() {
            own.remove(key);
        } else {
            own.insert(key.clone(), value.clone());
        }
    }
    let classes: Vec<(String, u8, f64)> = units
        .iter()
        .filter_map(|(name, bag)| {
            if bag.get("processing_backend").is_some_and(|b| b == "etcd") {
                return None;
            }
            let ops: Value =
                serde_json::from_str(bag.get("operations").map(String::as_str).unwrap_or("[]"))
                    .ok()?;
            let head = ops.as_array()?.first()?;
            let requested: f64 = head.get("requested_at")?.as_str()?.parse().ok()?;
            let class = match bag.get("state").map(String::as_str).unwrap_or("idle") {
                "retry-hold" => 0,
                "retry-release" => 2,
                _ => 1,
            };
            Some((name.clone(), class, requested))
        })
        .collect();
    let best = classes.iter().map(|c| c.1).min()?;
    let (_, class, requested) = classes.iter().find(|c| c.0 == granted)?.clone();
    if class != best {
        return Some(format!(
            "priority: hook {} granted {granted} (class {class}) while class {best} waited",
            hook.id
        ));
    }
    if class == 1 {
        let oldest = classes
            .iter()
            .filter(|c| c.1 == 1)
            .map(|c| c.2)
            .fold(f64::INFINITY, f64::min);
        if requested > oldest {
            return Some(format!(
                "priority: hook {} granted {granted} but an older request waited",
                hook.id
            ));
        }
    }
    None
}
