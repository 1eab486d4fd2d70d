//! Health-gated hand-off: after an operation succeeds, its holder keeps the lock until the
//! operation's readiness check (a registered callback) reports ready, re-checking in
//! dispatched hooks on a backoff schedule — never sleeping in a hook — and giving up at the
//! operation's timeout.
//!
//! The gate is the holder's business only: it simply does not echo its grant (nor change
//! its queue) until the check passes, so any leader, ours or the reference's, keeps the lock
//! with it. The gated operation stays at the head of the queue until then, so nothing is
//! lost when the unit, the hook or the leader goes away meanwhile.

use serde_json::json;

use super::{CallbackOutcome, Command, LogLevel, Manager};
use crate::features::{self, Feature, FeatureSet, HealthGate, Policy};
use crate::op::{Operation, OperationResult, kwargs_json};
use crate::timestamp::Timestamp;
use crate::wire::{Grant, UnitRecord};

/// Seconds a gate waits for its check when the request names none.
pub(super) const DEFAULT_HEALTH_TIMEOUT_S: u32 = 300;
/// Delay before the first check (milliseconds); doubles after each failed check.
pub(super) const FIRST_CHECK_MS: i64 = 2_000;
/// Longest delay between two checks (milliseconds).
pub(super) const MAX_CHECK_INTERVAL_MS: i64 = 30_000;

impl Manager {
    /// After `head` succeeded under `grant`: open its gate if it has a check. Returns
    /// whether the gate opened (the turn is then recorded when the check passes).
    pub(super) fn open_health_gate(&mut self, grant: &Grant, head: &Operation) -> bool {
        let options = self.op_options(&head.op_id());
        let Some(check) = options.health_check else {
            return false;
        };
        if !self.engaged_features().contains(&Feature::HealthGate) {
            self.log(
                LogLevel::Warning,
                format!(
                    "{:?} asks for health check {check:?}, but not every unit on the relation \
                     supports health gates yet; handing the lock on at once.",
                    head.callback_id
                ),
            );
            return false;
        }
        let timeout = options.health_timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT_S);
        let now = self.now.micros();
        let gate = HealthGate {
            grant: grant.identity(),
            op: head.op_id(),
            check: check.clone(),
            started: now,
            deadline: now + i64::from(timeout) * 1_000_000,
            attempts: 0,
            next_check: now + FIRST_CHECK_MS * 1_000,
            failed: false,
        };
        self.log(
            LogLevel::Info,
            format!(
                "{:?} finished; keeping the lock until health check {check:?} passes \
                 (first check in {} s, giving up after {timeout} s).",
                head.callback_id,
                FIRST_CHECK_MS / 1_000
            ),
        );
        self.write_gate(&gate);
        self.dispatch_after(FIRST_CHECK_MS as u32);
        true
    }

    /// The open gate of this unit's head operation, if any (adopted by `grant` when the
    /// leader re-granted meanwhile: the operation itself already ran).
    pub(super) fn open_gate(&mut self, grant: &Grant) -> Option<HealthGate> {
        let local = self.local_record();
        let mut gate = local.health.clone().filter(|g| !g.failed)?;
        let head = local.queue.ok()?.head()?.op_id();
        if gate.op != head {
            return None;
        }
        if gate.grant != grant.identity() {
            gate.grant = grant.identity();
            self.write_gate(&gate);
        }
        Some(gate)
    }

    /// Run the gate's check if it is due (a dispatched hook arrives when it is).
    pub(super) fn run_health_check(&mut self, grant: &Grant, gate: HealthGate) {
        if self.now.micros() < gate.next_check {
            return;
        }
        if !self.config.callback_ids.contains(&gate.check) {
            self.health_result(CallbackOutcome::Missing, grant, gate);
            return;
        }
        let kwargs = self
            .local_record()
            .queue
            .ok()
            .and_then(|q| q.head().map(|h| kwargs_json(&h.kwargs)))
            .unwrap_or_else(|| "{}".into());
        self.log(
            LogLevel::Info,
            format!(
                "Running health check {:?} (check {}).",
                gate.check,
                gate.attempts + 1
            ),
        );
        self.commands.push_back(Command::RunCallback {
            id: gate.check.clone(),
            kwargs_json: kwargs,
        });
        self.awaiting_health = Some((grant.clone(), gate));
        self.callback_ran = true;
    }

    /// The check's answer: pass (the callback returned true), retry later, or give up.
    pub(super) fn health_result(
        &mut self,
        outcome: CallbackOutcome,
        grant: &Grant,
        mut gate: HealthGate,
    ) {
        let now = self.now.micros();
        let passed = matches!(&outcome, CallbackOutcome::Returned(Some(v)) if v == "true");
        let missing = outcome == CallbackOutcome::Missing;
        if let CallbackOutcome::Raised(why) = &outcome {
            self.log(
                LogLevel::Warning,
                format!("Health check {:?} raised: {why}", gate.check),
            );
        }
        gate.attempts += 1;
        // Whole tenths of a second, without pulling float formatting into the component.
        let tenths = (now - gate.started).max(0) / 100_000;
        let waited = format!("{}.{}", tenths / 10, tenths % 10);
        if passed {
            self.log(
                LogLevel::Info,
                format!(
                    "Health check {:?} passed after {} check(s), {waited} s; handing the lock on.",
                    gate.check, gate.attempts
                ),
            );
            self.set_local(vec![(features::HEALTH.into(), String::new())]);
            self.finish_gated(grant);
            return;
        }
        if missing || now >= gate.deadline {
            let why = if missing {
                "is not registered".to_string()
            } else {
                format!(
                    "did not pass within {} s ({} checks)",
                    (gate.deadline - gate.started) / 1_000_000,
                    gate.attempts
                )
            };
            self.log(
                LogLevel::Error,
                format!(
                    "Health check {:?} {why}; handing the lock on without it.",
                    gate.check
                ),
            );
            gate.failed = true;
            self.write_gate(&gate);
            self.finish_gated(grant);
            return;
        }
        let interval = (FIRST_CHECK_MS << gate.attempts.min(10)).min(MAX_CHECK_INTERVAL_MS);
        gate.next_check = (now + interval * 1_000).min(gate.deadline);
        self.write_gate(&gate);
        let delay_ms = ((gate.next_check - now) / 1_000).max(0) as u32;
        self.dispatch_after(delay_ms);
    }

    /// Record the gated operation as released under `grant`.
    fn finish_gated(&mut self, grant: &Grant) {
        let Ok(queue) = self.local_record().queue else {
            return;
        };
        let head = queue.head().cloned();
        self.record_turn(queue, head, OperationResult::Release, grant);
    }

    fn write_gate(&mut self, gate: &HealthGate) {
        self.set_local(vec![(features::HEALTH.into(), features::encode(gate))]);
    }

    /// On releasing `grant` from `holder`: a gate that timed out under it pauses the
    /// application when the policy says so (once: the grant is gone afterwards).
    pub(super) fn halt_on_failed_gate(
        &mut self,
        holder: &UnitRecord,
        grant: &Grant,
        policy: &Policy,
        engaged: &FeatureSet,
    ) {
        let Some(gate) = holder.health.as_ref().filter(|g| g.failed) else {
            return;
        };
        if gate.grant != grant.identity()
            || !policy.halt_on_health_failure
            || !engaged.contains(&Feature::Pause)
        {
            return;
        }
        let peer = self.peer.as_ref().expect("scheduling needs the relation");
        if features::decode_pause(&peer.app).is_some() {
            return;
        }
        let reason = format!(
            "health check {:?} of {} did not pass; resume once it is healthy",
            gate.check, holder.name
        );
        self.log(
            LogLevel::Error,
            format!("Pausing the rolling operation: {reason}."),
        );
        self.set_app(vec![(
            features::PAUSED.into(),
            json!({"since": self.now.to_string(), "reason": reason}).to_string(),
        )]);
    }
}

/// Seconds since a gate started, for status.
pub(super) fn gate_age(gate: &HealthGate, now: Timestamp) -> f64 {
    (now.micros() - gate.started) as f64 / 1e6
}
