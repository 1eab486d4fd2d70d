//! What a person reads: the timeline of hooks and a summary table.

use std::fmt::Write;

use super::check::{intervals, max_concurrent};
use super::{Fate, HookKind, Outcome};

/// Numbers a user feels.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Units at the start.
    pub units: usize,
    /// Operations requested.
    pub requested: usize,
    /// Operations whose callback released.
    pub completed: usize,
    /// Hooks executed (all kinds).
    pub hooks: usize,
    /// Hooks per completed operation.
    pub hooks_per_op: f64,
    /// Hand-offs between consecutive callbacks of different units.
    pub handoffs: usize,
    /// Mean hooks on the causal path from one callback's hook to the next.
    pub hooks_per_handoff: f64,
    /// Mean virtual seconds from one callback ending to the next starting.
    pub seconds_per_handoff: f64,
    /// Largest number of callbacks running at once.
    pub max_concurrent: usize,
    /// Virtual seconds until quiet.
    pub makespan: f64,
}

/// Compute the summary.
pub fn summarize(outcome: &Outcome) -> Summary {
    // Operations only: a health check runs inside its unit's turn, not as a hand-off.
    let runs: Vec<_> = intervals(outcome)
        .into_iter()
        .filter(|r| r.committed && r.op.is_some())
        .collect();
    let completed = runs.iter().filter(|r| r.outcome == "release").count();
    let mut hops = Vec::new();
    let mut gaps = Vec::new();
    for pair in runs.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if prev.unit == next.unit && prev.hook == next.hook {
            continue;
        }
        gaps.push(next.start - prev.end);
        // Walk the causes back from the next callback's hook to the previous one's.
        let mut steps = 0;
        let mut cursor = Some(next.hook);
        while let Some(id) = cursor {
            if id == prev.hook {
                hops.push(steps as f64);
                break;
            }
            steps += 1;
            cursor = outcome.hooks.get(id).and_then(|h| h.cause);
            if steps > 64 {
                break;
            }
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    Summary {
        units: outcome.scenario.units,
        requested: outcome.scenario.requests.len()
            + rolls_started(outcome) * outcome.scenario.units,
        completed,
        hooks: outcome.hooks.len(),
        hooks_per_op: if completed == 0 {
            0.0
        } else {
            outcome.hooks.len() as f64 / completed as f64
        },
        handoffs: gaps.len(),
        hooks_per_handoff: mean(&hops),
        seconds_per_handoff: mean(&gaps),
        max_concurrent: max_concurrent(&intervals(outcome)),
        makespan: outcome.finished_at,
    }
}

/// Application-wide rolls the operator started (each asks every unit for one operation).
fn rolls_started(outcome: &Outcome) -> usize {
    outcome
        .hooks
        .iter()
        .filter(|h| {
            matches!(h.kind, super::HookKind::Operator(i)
                if matches!(outcome.scenario.operator[i].action, super::OperatorAction::StartRoll { .. }))
                && h.fate == super::Fate::Committed
                && h.app_writes.iter().any(|(k, _)| k == "rollingops-roll")
        })
        .count()
}

/// The timeline: one line per hook that did something.
pub fn timeline(outcome: &Outcome, verbose: bool) -> String {
    let mut out = String::new();
    let mut quiet = 0;
    let mut events: Vec<(f64, String)> = outcome
        .leader_changes
        .iter()
        .map(|(t, u)| (*t, format!("{t:>9.3}s  {u:<8} ★ becomes leader")))
        .collect();
    events.extend(
        outcome
            .departed
            .iter()
            .map(|(u, t)| (*t, format!("{t:>9.3}s  {u:<8} ✖ removed"))),
    );
    for hook in &outcome.hooks {
        let mut effects = Vec::new();
        if let HookKind::Action(_) = hook.kind
            && hook.unit_writes.iter().any(|(k, _)| k == "operations")
        {
            effects.push("queues restart".to_string());
        }
        effects.extend(hook.story.iter().cloned());
        match &hook.fate {
            Fate::Committed => {}
            Fate::Killed => {
                effects.push("✖ process killed mid-callback: writes lost, Juju retries".into())
            }
            Fate::Failed(why) => {
                effects.push(format!("✖ hook failed ({why}): writes lost, Juju retries"))
            }
            Fate::Departed => effects.push("✖ unit removed mid-hook".into()),
        }
        if verbose {
            effects.extend(hook.notes.iter().map(|n| format!("log: {n}")));
        }
        if effects.is_empty() && !verbose {
            quiet += 1;
            continue;
        }
        let star = if hook.leader { "*" } else { " " };
        let unit = format!("{}{star}", hook.unit);
        events.push((
            hook.start,
            format!(
                "{:>9.3}s  {unit:<8} {:<24} {}",
                hook.start,
                hook.kind.label(),
                effects.join("; ")
            ),
        ));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, line) in events {
        let _ = writeln!(out, "{line}");
    }
    if quiet > 0 {
        let _ = writeln!(
            out,
            "           ({quiet} hooks that changed nothing are not shown; * = leader)"
        );
    }
    out
}

/// The summary as a table.
pub fn table(summary: &Summary) -> String {
    let rows = [
        ("units", summary.units.to_string()),
        ("operations requested", summary.requested.to_string()),
        ("operations completed", summary.completed.to_string()),
        ("hooks run", summary.hooks.to_string()),
        (
            "hooks per operation",
            format!("{:.1}", summary.hooks_per_op),
        ),
        ("hand-offs", summary.handoffs.to_string()),
        (
            "hooks per hand-off (critical path)",
            format!("{:.2}", summary.hooks_per_handoff),
        ),
        (
            "simulated seconds per hand-off",
            format!("{:.2}", summary.seconds_per_handoff),
        ),
        (
            "max concurrent lock holders",
            summary.max_concurrent.to_string(),
        ),
        (
            "simulated seconds in all",
            format!("{:.1}", summary.makespan),
        ),
    ];
    let mut out = String::new();
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (name, value) in rows {
        let _ = writeln!(out, "  {name:<width$}  {value:>8}");
    }
    out
}
