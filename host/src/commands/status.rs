//! `rollingops status`: who holds the lock and what every unit has queued, for a person
//! at a terminal (`--json` for scripts). Runs inside a unit's hook context, like any hook
//! tool user: `juju exec --unit app/0 -- rollingops status --peer-relation restart`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use crate::charm::DEFAULT_BASE_DIR;
use crate::runtime::Session;

const AFTER_HELP: &str = "Examples:
  juju exec --unit app/0 -- rollingops status --peer-relation restart
  rollingops status --peer-relation restart --json | jq .lock
  rollingops status --peer-relation restart --base-dir /var/lib/rollingops

Inside a unit's hook context (juju exec, juju-exec, a charm hook) it reads the peer
relation with the hook tools. The lock line names the holder and for how long it has held
the lock; every queued operation shows its callback, kwargs, attempts so far and age.";

/// Version of the `--json` document; bumped only on incompatible changes.
pub const JSON_VERSION: u64 = 1;

/// Show the lock and the queues.
#[derive(Debug, Parser)]
#[command(after_help = AFTER_HELP)]
pub struct StatusCommand {
    /// The peer relation's endpoint name, as in the charm's metadata.
    #[arg(long, value_name = "ENDPOINT")]
    pub peer_relation: String,
    /// The library's runtime directory (component cache).
    #[arg(long, default_value = DEFAULT_BASE_DIR)]
    pub base_dir: PathBuf,
    /// Print a stable JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl StatusCommand {
    /// Read the relation and print.
    pub fn execute(self) -> anyhow::Result<bool> {
        let (mut session, _) = super::hook_context_session(&self.peer_relation, &self.base_dir)?;
        let described = describe_all(&mut session)?;
        let document = document(&described, &self.peer_relation);
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        } else {
            write!(out, "{}", render(&document))?;
        }
        out.flush()?;
        Ok(true)
    }
}

/// The component's `describe()` with every unit's bag read: a non-leader reads only its
/// own bag in a hook, so ask for each remaining unit (`is_waiting` reads it).
pub fn describe_all(session: &mut Session) -> anyhow::Result<Value> {
    let parse = |text: String| -> anyhow::Result<Value> {
        serde_json::from_str(&text).context("the component's describe() is not JSON")
    };
    let mut described = parse(session.describe()?)?;
    let unread: Vec<String> = described["remote_units_not_read"]
        .as_array()
        .map(|units| {
            units
                .iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !unread.is_empty() {
        for unit in &unread {
            // A unit whose queue cannot be decoded still shows up, with its error.
            let _ = session.is_waiting(Some(unit), None);
        }
        described = parse(session.describe()?)?;
    }
    Ok(described)
}

fn field<'a>(value: &'a Value, key: &str) -> &'a Value {
    value.get(key).unwrap_or(&Value::Null)
}

/// The stable `--json` document (version [`JSON_VERSION`]) built from `describe()`: every
/// key is always present, `null` when unknown.
pub fn document(described: &Value, peer_relation: &str) -> Value {
    let lock = field(described, "lock");
    let holder = field(lock, "holder").as_str();
    let units: Vec<Value> = field(described, "units")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|unit| {
            let name = field(unit, "name");
            let queue: Option<Vec<Value>> = field(unit, "queue").as_array().map(|ops| {
                ops.iter()
                    .map(|op| {
                        json!({
                            "callback_id": field(op, "callback_id"),
                            "kwargs": field(op, "kwargs"),
                            "attempt": field(op, "attempt"),
                            "max_retry": field(op, "max_retry"),
                            "requested_at": field(op, "requested_at"),
                            "age_seconds": field(op, "age_seconds"),
                        })
                    })
                    .collect()
            });
            let holds = field(described, "holders")
                .as_array()
                .is_some_and(|hs| hs.iter().any(|h| field(h, "unit") == name));
            json!({
                "name": name,
                "holder": holds || holder.is_some() && name.as_str() == holder,
                "rank": field(unit, "rank"),
                "features": field(unit, "features"),
                "roll": field(unit, "roll"),
                "health_gate": field(unit, "health_gate"),
                "intent": field(unit, "intent"),
                "backend": field(unit, "backend"),
                "executed_at": field(unit, "executed_at"),
                "queue": queue,
                "errors": field(unit, "errors").as_array().cloned().unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "version": JSON_VERSION,
        "unit": field(described, "unit"),
        "leader": field(described, "leader"),
        "peer_relation": peer_relation,
        "relation_exists": field(described, "relation").as_bool().unwrap_or(false),
        "now": field(described, "now"),
        "lock": if lock.is_null() { Value::Null } else { json!({
            "holder": field(lock, "holder"),
            "granted_at": field(lock, "granted_at"),
            "held_for_seconds": field(lock, "held_for_seconds"),
            "generation": field(lock, "generation"),
        }) },
        "holders": field(described, "holders").as_array().cloned().unwrap_or_default(),
        "paused": field(described, "paused"),
        "policy": field(described, "policy"),
        "roll": field(described, "roll"),
        "engaged_features": field(described, "engaged_features").as_array().cloned().unwrap_or_default(),
        "units": units,
        "unreadable_units": field(described, "remote_units_not_read").as_array().cloned().unwrap_or_default(),
    })
}

/// `1777636805.5` → `2026-05-01 12:00:05 UTC`.
pub fn utc(timestamp: &str) -> String {
    let Ok(seconds) = timestamp.parse::<f64>() else {
        return timestamp.to_string();
    };
    let total = seconds.floor() as i64;
    let (days, rest) = (total.div_euclid(86_400), total.rem_euclid(86_400));
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `4.2s`, `2m05s`, `1h02m`, `3d04h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    if seconds < 0.0 {
        return format!("-{}", duration(-seconds));
    }
    let whole = seconds as u64;
    match whole {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86_400 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{:02}h", whole / 86_400, whole % 86_400 / 3600),
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

/// The table a person reads.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let unit = field(doc, "unit").as_str().unwrap_or("?");
    let leader = if field(doc, "leader").as_bool() == Some(true) {
        " (leader)"
    } else {
        ""
    };
    let relation = field(doc, "peer_relation").as_str().unwrap_or("?");
    if !field(doc, "relation_exists").as_bool().unwrap_or(false) {
        let _ = writeln!(
            out,
            "{unit}{leader}: no peer relation \"{relation}\" yet; nothing can be queued."
        );
        return out;
    }
    let now = field(doc, "now").as_str().map(utc).unwrap_or_default();
    let _ = writeln!(
        out,
        "{unit}{leader} · peer relation \"{relation}\" · {now}\n"
    );

    let lock = field(doc, "lock");
    match field(lock, "holder").as_str() {
        Some(holder) => {
            let held = field(lock, "held_for_seconds")
                .as_f64()
                .map(|s| format!(" for {}", duration(s)))
                .unwrap_or_default();
            let generation = field(lock, "generation")
                .as_u64()
                .map(|g| format!(" (grant #{g})"))
                .unwrap_or_default();
            let _ = writeln!(out, "Lock   held by {holder}{held}{generation}");
        }
        None => {
            let _ = writeln!(out, "Lock   free");
        }
    }
    let holders = field(doc, "holders")
        .as_array()
        .cloned()
        .unwrap_or_default();
    if holders.len() > 1 {
        let names: Vec<String> = holders
            .iter()
            .map(|h| {
                let held = field(h, "held_for_seconds")
                    .as_f64()
                    .map(|s| format!(" {}", duration(s)))
                    .unwrap_or_default();
                format!("{}{held}", field(h, "unit").as_str().unwrap_or("?"))
            })
            .collect();
        let _ = writeln!(out, "Holders {}", names.join(", "));
    }
    let paused = field(doc, "paused");
    if !paused.is_null() {
        let since = field(paused, "since").as_str().map(utc).unwrap_or_default();
        let reason = field(paused, "reason").as_str().unwrap_or("");
        let _ = writeln!(out, "Paused since {since}: {reason}");
    }
    let roll = field(doc, "roll");
    if !roll.is_null() {
        let generation = field(roll, "generation").as_u64().unwrap_or(0);
        let pending: Vec<&str> = field(roll, "pending_units")
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let state = if field(roll, "completed").is_null() {
            format!("waiting for {}", pending.join(", "))
        } else {
            "complete".to_string()
        };
        let _ = writeln!(
            out,
            "Roll   #{generation} ({}): {state}",
            field(roll, "callback_id").as_str().unwrap_or("?")
        );
    }
    let units = field(doc, "units").as_array().cloned().unwrap_or_default();
    let queued: usize = units
        .iter()
        .map(|u| field(u, "queue").as_array().map_or(0, Vec::len))
        .sum();
    let waiting = units
        .iter()
        .filter(|u| field(u, "queue").as_array().is_some_and(|q| !q.is_empty()))
        .count();
    let _ = writeln!(
        out,
        "Queue  {queued} operation{} on {waiting} of {} unit{}\n",
        if queued == 1 { "" } else { "s" },
        units.len(),
        if units.len() == 1 { "" } else { "s" }
    );

    let mut rows: Vec<[String; 6]> = vec![[
        "UNIT".into(),
        "INTENT".into(),
        "CALLBACK".into(),
        "KWARGS".into(),
        "ATTEMPT".into(),
        "AGE".into(),
    ]];
    let mut notes = Vec::new();
    for unit in &units {
        let name = field(unit, "name").as_str().unwrap_or("?").to_string();
        let marker = if field(unit, "holder").as_bool() == Some(true) {
            " *"
        } else {
            ""
        };
        let intent = field(unit, "intent").as_str().unwrap_or("?").to_string();
        let label = format!("{name}{marker}");
        match field(unit, "queue").as_array() {
            None => rows.push([
                label,
                intent,
                "(unreadable queue)".into(),
                "".into(),
                "".into(),
                "".into(),
            ]),
            Some(ops) if ops.is_empty() => {
                rows.push([label, intent, "-".into(), "".into(), "".into(), "".into()])
            }
            Some(ops) => {
                for (index, op) in ops.iter().enumerate() {
                    let attempt = field(op, "attempt").as_u64().unwrap_or(0);
                    let attempts = match field(op, "max_retry").as_u64() {
                        Some(max) => format!("{attempt}/{max}"),
                        None => format!("{attempt}"),
                    };
                    let kwargs = field(op, "kwargs");
                    let kwargs = if kwargs.as_object().is_some_and(|m| m.is_empty()) {
                        "{}".to_string()
                    } else {
                        shorten(&kwargs.to_string(), 40)
                    };
                    let age = field(op, "age_seconds")
                        .as_f64()
                        .map(duration)
                        .unwrap_or_default();
                    let (unit_cell, intent_cell) = if index == 0 {
                        (label.clone(), intent.clone())
                    } else {
                        (String::new(), String::new())
                    };
                    rows.push([
                        unit_cell,
                        intent_cell,
                        field(op, "callback_id").as_str().unwrap_or("?").to_string(),
                        kwargs,
                        attempts,
                        age,
                    ]);
                }
            }
        }
        for error in field(unit, "errors")
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            notes.push(format!("{name}: {}", error.as_str().unwrap_or_default()));
        }
        let gate = field(unit, "health_gate");
        if !gate.is_null() {
            let check = field(gate, "check").as_str().unwrap_or("?");
            let checks = field(gate, "attempts").as_u64().unwrap_or(0);
            let waited = field(gate, "waiting_seconds")
                .as_f64()
                .map(duration)
                .unwrap_or_default();
            if field(gate, "failed").as_bool() == Some(true) {
                notes.push(format!(
                    "{name}: health check {check:?} gave up after {checks} checks; handed on unhealthy"
                ));
            } else {
                notes.push(format!(
                    "{name}: holding the lock until health check {check:?} passes ({checks} checks, {waited})"
                ));
            }
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 5 {
                let _ = write!(line, "{cell:>width$}", width = widths[c]);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let mut legend = vec!["* holds the lock", "ATTEMPT: retries so far / max_retry"];
    if units.is_empty() {
        legend.clear();
    }
    if !legend.is_empty() {
        let _ = writeln!(out, "\n{}", legend.join(" · "));
    }
    for unit in field(doc, "unreadable_units")
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        notes.push(format!(
            "{}: its databag could not be read",
            unit.as_str().unwrap_or("?")
        ));
    }
    for note in notes {
        let _ = writeln!(out, "! {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations_read_at_a_glance() {
        assert_eq!(utc("1777636805.5"), "2026-05-01 12:00:05 UTC");
        assert_eq!(utc("0.0"), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc("951782400.0"), "2000-02-29 00:00:00 UTC");
        assert_eq!(duration(4.23), "4.2s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(2.0 * 86_400.0 + 7200.0), "2d02h");
    }

    #[test]
    fn the_document_is_stable_and_the_table_marks_the_holder() {
        let described = json!({
            "unit": "app/0", "leader": true, "relation": true, "now": "1777636810.0",
            "lock": {"holder": "app/1", "granted_at": "1777636806.0", "held_for_seconds": 4.0, "generation": 3},
            "units": [
                {"name": "app/0", "intent": "idle", "backend": "peer", "executed_at": null, "queue": [], "errors": []},
                {"name": "app/1", "intent": "retry-release", "backend": "peer", "executed_at": "1777636808.0",
                 "queue": [
                    {"callback_id": "restart", "kwargs": {"delay": 2}, "attempt": 1, "max_retry": 3,
                     "requested_at": "1777636800.0", "age_seconds": 10.0},
                    {"callback_id": "restart", "kwargs": {}, "attempt": 0, "max_retry": null,
                     "requested_at": "1777636805.0", "age_seconds": 5.0}],
                 "errors": []},
                {"name": "app/2", "intent": null, "backend": "peer", "executed_at": null, "queue": null,
                 "errors": ["operations: not a JSON array"]},
            ],
            "remote_units_not_read": [],
            "future_field": 1,
        });
        let doc = document(&described, "restart");
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["units"][1]["holder"], true);
        assert_eq!(doc["units"][0]["holder"], false);
        assert!(doc.get("future_field").is_none());
        let table = render(&doc);
        assert!(
            table.contains("app/0 (leader) · peer relation \"restart\" · 2026-05-01 12:00:10 UTC"),
            "{table}"
        );
        assert!(
            table.contains("Lock   held by app/1 for 4.0s (grant #3)"),
            "{table}"
        );
        assert!(
            table.contains("Queue  2 operations on 1 of 3 units"),
            "{table}"
        );
        assert!(table.contains("app/1 *  retry-release  restart"), "{table}");
        assert!(table.contains("1/3"), "{table}");
        assert!(
            table.contains("! app/2: operations: not a JSON array"),
            "{table}"
        );
    }

    #[test]
    fn pause_holders_rolls_and_health_gates_are_shown() {
        let described = json!({
            "unit": "app/0", "leader": true, "relation": true, "now": "1777636810.0",
            "lock": {"holder": "app/1", "granted_at": "1777636806.0", "held_for_seconds": 4.0, "generation": 3},
            "holders": [
                {"unit": "app/1", "generation": 3, "held_for_seconds": 4.0},
                {"unit": "app/2", "generation": 4, "held_for_seconds": 1.5},
            ],
            "paused": {"since": "1777636805.0", "reason": "db maintenance"},
            "roll": {"generation": 2, "callback_id": "restart", "started": "1777636800.0",
                     "completed": null, "pending_units": ["app/2", "app/3"]},
            "units": [
                {"name": "app/1", "intent": "request", "backend": "peer", "executed_at": null,
                 "queue": [], "errors": [],
                 "health_gate": {"check": "healthy", "attempts": 2, "waiting_seconds": 6.0, "failed": false}},
                {"name": "app/2", "intent": "request", "backend": "peer", "executed_at": null,
                 "queue": [], "errors": []},
            ],
            "remote_units_not_read": [],
        });
        let doc = document(&described, "restart");
        assert_eq!(doc["units"][1]["holder"], true, "every holder is marked");
        let table = render(&doc);
        for line in [
            "Holders app/1 4.0s, app/2 1.5s",
            "Paused since 2026-05-01 12:00:05 UTC: db maintenance",
            "Roll   #2 (restart): waiting for app/2, app/3",
            "! app/1: holding the lock until health check \"healthy\" passes (2 checks, 6.0s)",
        ] {
            assert!(table.contains(line), "missing {line:?} in\n{table}");
        }
    }
}
