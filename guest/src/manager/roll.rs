//! Application-wide rolls: the leader publishes one request (`rollingops-roll`), every
//! unit queues it once (`rollingops-roll-state.seen`), marks it done when its operation
//! has finished (`.done`), and the leader, once every unit on the relation is done, marks
//! the roll complete and runs the roll's completion callback.

use serde_json::json;

use super::{Command, LogLevel, Manager};
use crate::features::{self, Feature, OpOptions, RollState};
use crate::op::{Operation, kwargs_json};

/// Seconds the leader waits for every unit to join a new roll before granting anyway.
pub(super) const ROLL_JOIN_WINDOW_S: f64 = 60.0;

impl Manager {
    /// Queue the current roll's operation on this unit if it has not yet.
    pub(super) fn join_roll(&mut self) {
        let Some(roll) = self
            .peer
            .as_ref()
            .and_then(|p| features::decode_roll(&p.app))
        else {
            return;
        };
        let local = self.local_record();
        if local.roll.seen >= roll.generation || local.queue.is_err() {
            return;
        }
        if !self.engaged_features().contains(&Feature::Roll) {
            return;
        }
        let mut state = local.roll;
        state.seen = roll.generation;
        if !self.config.callback_ids.contains(&roll.callback_id) {
            self.log(
                LogLevel::Error,
                format!(
                    "Roll {} asks for callback {:?}, which this unit does not register; \
                     counting this unit as done.",
                    roll.generation, roll.callback_id
                ),
            );
            state.done = roll.generation;
        } else {
            self.log(
                LogLevel::Info,
                format!(
                    "Joining application-wide roll {} ({:?}).",
                    roll.generation, roll.callback_id
                ),
            );
            if self
                .enqueue(
                    &roll.callback_id,
                    roll.kwargs.clone(),
                    None,
                    OpOptions {
                        health_check: roll.health_check.clone(),
                        health_timeout: roll.health_timeout,
                        generation_kwarg: None,
                        roll: Some(roll.generation),
                    },
                )
                .is_err()
            {
                return; // not reached: the queue decoded above
            }
        }
        self.write_roll_state(state);
    }

    /// An operation left the queue: drop its options and count its roll as done.
    pub(super) fn forget_op(&mut self, op: &Operation) {
        let mut map = features::decode_op_options(&self.local_bag());
        let Some(options) = map.remove(&op.op_id()) else {
            return;
        };
        self.set_local(vec![(
            features::OP_OPTIONS.into(),
            features::encode_op_options(&map),
        )]);
        if let Some(generation) = options.roll {
            let mut state = self.local_record().roll;
            if state.done < generation {
                state.done = generation;
                self.log(
                    LogLevel::Info,
                    format!("This unit finished its part of roll {generation}."),
                );
                self.write_roll_state(state);
            }
        }
    }

    fn write_roll_state(&mut self, state: RollState) {
        self.set_local(vec![(
            features::ROLL_STATE.into(),
            features::encode(&state),
        )]);
    }

    /// The units a roll still waits for (every unit on the relation that is not done).
    pub(super) fn roll_pending(&self, generation: u64) -> Vec<String> {
        let Some(peer) = self.peer.as_ref() else {
            return Vec::new();
        };
        let mut pending = Vec::new();
        if self.local_record().roll.done < generation {
            pending.push(self.unit.clone());
        }
        for unit in &peer.remote_units {
            let done = peer.record(unit).is_some_and(|r| r.roll.done >= generation);
            if !done {
                pending.push(unit.clone());
            }
        }
        pending
    }

    /// Whether grants wait for units to join a roll that just started: every unit queues
    /// its part first, so the order (rank, age) is decided over all of them. Bounded by
    /// [`ROLL_JOIN_WINDOW_S`] in case a unit's agent is down.
    pub(super) fn roll_joining(&self) -> bool {
        let Some(peer) = self.peer.as_ref() else {
            return false;
        };
        let Some(roll) = features::decode_roll(&peer.app) else {
            return false;
        };
        if roll.completed.is_some() || !self.engaged_features().contains(&Feature::Roll) {
            return false;
        }
        let started = crate::timestamp::Timestamp::parse(&roll.started);
        if started.is_none_or(|at| self.now.seconds_since(at) >= ROLL_JOIN_WINDOW_S) {
            return false;
        }
        let joined = |seen: u64| seen >= roll.generation;
        !(joined(self.local_record().roll.seen)
            && peer
                .remote_units
                .iter()
                .all(|u| peer.record(u).is_some_and(|r| joined(r.roll.seen))))
    }

    /// Whether a roll has finished on every unit but is not marked complete yet.
    pub(super) fn roll_ready(&self) -> bool {
        self.peer
            .as_ref()
            .and_then(|p| features::decode_roll(&p.app))
            .is_some_and(|roll| {
                roll.completed.is_none() && self.roll_pending(roll.generation).is_empty()
            })
    }

    /// Leader: mark a finished roll complete and run its completion callback. Returns
    /// whether a callback started.
    pub(super) fn notify_roll_complete(&mut self) -> bool {
        let Some(mut roll) = self
            .peer
            .as_ref()
            .and_then(|p| features::decode_roll(&p.app))
        else {
            return false;
        };
        if !self.roll_ready() {
            return false;
        }
        roll.completed = Some(self.now.to_string());
        let units = self.peer.as_ref().map_or(0, |p| p.remote_units.len()) + 1;
        self.log(
            LogLevel::Info,
            format!(
                "Roll {} is complete: all {units} units finished.",
                roll.generation
            ),
        );
        self.set_app(vec![(features::ROLL.into(), features::encode(&roll))]);
        let Some(id) = roll.on_complete.clone() else {
            return false;
        };
        if !self.config.callback_ids.contains(&id) {
            self.log(
                LogLevel::Error,
                format!("Roll-complete callback {id:?} is not registered; not called."),
            );
            return false;
        }
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("generation".into(), json!(roll.generation));
        self.commands.push_back(Command::RunCallback {
            id,
            kwargs_json: kwargs_json(&kwargs),
        });
        self.awaiting_roll_notice = true;
        self.callback_ran = true;
        true
    }
}
