//! What a charm (or an operator through its actions) can ask beyond queuing: request
//! options, the leader's policy, this unit's rank, pause/resume, cancel, force-release and
//! application-wide rolls — plus the feature bookkeeping they rest on.

use serde_json::{Map, Value, json};

use super::{Command, LogLevel, Manager};
use crate::error::Error;
use crate::features::{self, Feature, FeatureSet, OpOptions, Ordering, Policy, Roll};
use crate::queue::OperationQueue;
use crate::wire::{self, Bag, Intent, LockState};

/// Options of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `None` retries forever; must be ≥ 0.
    pub max_retry: Option<i64>,
    /// A registered callback that must return true before the lock moves on.
    pub health_check: Option<String>,
    /// Seconds to wait for the check (default 300).
    pub health_timeout: Option<u32>,
    /// Keyword argument that receives the grant generation.
    pub generation_kwarg: Option<String>,
}

/// The leader's policy, as the charm sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyUpdate {
    /// Units that may hold the lock at once (≥ 1).
    pub max_concurrent: u32,
    /// Reclaim grants not finished within this many seconds.
    pub grant_timeout: Option<u32>,
    /// Order waiting units by rank instead of request age.
    pub rank_ordering: bool,
    /// Pause when a health gate times out.
    pub halt_on_health_failure: bool,
}

/// An operator control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop granting (holders finish); leader only.
    Pause(String),
    /// Grant again; leader only.
    Resume,
    /// Drop this unit's queued, not-yet-started operations (only those with this callback
    /// id, when given).
    Cancel(Option<String>),
    /// End the grant of this unit (every grant when none); leader only.
    ForceRelease(Option<String>),
}

/// An application-wide roll request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollRequest {
    /// Callback every unit runs once.
    pub callback_id: String,
    /// Its keyword arguments (a JSON object).
    pub kwargs_json: String,
    /// Health check gating each hand-off.
    pub health_check: Option<String>,
    /// Seconds to wait for the check.
    pub health_timeout: Option<u32>,
    /// Callback the leader runs when every unit has finished.
    pub on_complete: Option<String>,
}

impl Manager {
    pub(super) fn busy(&self) -> bool {
        self.awaiting.is_some()
            || self.awaiting_etcd.is_some()
            || self.awaiting_health.is_some()
            || self.awaiting_roll_notice
    }

    pub(super) fn local_bag(&self) -> Bag {
        self.peer
            .as_ref()
            .map(|p| p.local.clone())
            .unwrap_or_default()
    }

    /// Features every unit on the relation supports: computed by the leader, read from the
    /// app bag by everyone else.
    pub(super) fn engaged_features(&self) -> FeatureSet {
        let Some(peer) = self.peer.as_ref() else {
            return FeatureSet::new();
        };
        if !self.leader {
            return features::decode_features(&peer.app);
        }
        *self.engaged.get_or_init(|| {
            let mut engaged: FeatureSet = Feature::ALL.into_iter().collect();
            for unit in &peer.remote_units {
                match peer.record(unit) {
                    Some(record) => engaged.retain(|f| record.features.contains(f)),
                    None => engaged.clear(),
                }
            }
            engaged
        })
    }

    /// Units on the relation that do not support `feature` (leader's view).
    fn lacking(&self, feature: Feature) -> Vec<String> {
        let Some(peer) = self.peer.as_ref() else {
            return Vec::new();
        };
        peer.remote_units
            .iter()
            .filter(|u| {
                !peer
                    .record(u)
                    .is_some_and(|r| r.features.contains(&feature))
            })
            .cloned()
            .collect()
    }

    /// Write this unit's supported features, and (leader) the engaged set.
    pub(super) fn advertise_features(&mut self) {
        self.set_local(vec![(features::FEATURES.into(), features::advertised())]);
        if self.leader {
            let engaged = features::encode_features(&self.engaged_features());
            self.set_app(vec![(features::FEATURES.into(), engaged)]);
        }
    }

    pub(super) fn dispatch_after(&mut self, delay_ms: u32) {
        self.commands.push_back(Command::DispatchAfter {
            event: super::LOCK_GRANTED_HOOK.into(),
            delay_ms,
        });
    }

    pub(super) fn op_options(&self, op_id: &str) -> OpOptions {
        features::decode_op_options(&self.local_bag())
            .remove(op_id)
            .unwrap_or_default()
    }

    /// The options-map write after `queue` changed, adding `added`; entries of operations
    /// no longer queued are dropped.
    pub(super) fn op_options_pair(
        &self,
        queue: &OperationQueue,
        added: Option<(String, OpOptions)>,
    ) -> (String, String) {
        let mut map = features::decode_op_options(&self.local_bag());
        if let Some((id, options)) = added {
            map.insert(id, options);
        }
        map.retain(|id, _| queue.ops().iter().any(|op| &op.op_id() == id));
        (
            features::OP_OPTIONS.into(),
            features::encode_op_options(&map),
        )
    }

    pub(super) fn check_request_options(
        &self,
        options: &RequestOptions,
    ) -> Result<OpOptions, Error> {
        if let Some(check) = &options.health_check
            && !self.config.callback_ids.contains(check)
        {
            return Err(Error::InvalidLockRequest(format!(
                "Unknown health_check callback: {check}"
            )));
        }
        if options.health_timeout == Some(0) {
            return Err(Error::InvalidLockRequest(
                "health_timeout must be at least 1 second".into(),
            ));
        }
        if let Some(name) = &options.generation_kwarg
            && name.trim().is_empty()
        {
            return Err(Error::InvalidLockRequest(
                "generation_kwarg must not be blank".into(),
            ));
        }
        Ok(OpOptions {
            health_check: options.health_check.clone(),
            health_timeout: options.health_timeout,
            generation_kwarg: options.generation_kwarg.clone(),
            roll: None,
        })
    }

    fn require_leader(&self, what: &str) -> Result<(), Error> {
        if self.peer.is_none() {
            return Err(self.no_relation());
        }
        if !self.leader {
            return Err(Error::InvalidArgument(format!(
                "Only the leader can {what}; run this on the leader unit."
            )));
        }
        Ok(())
    }

    fn require_engaged(&self, feature: Feature, what: &str) -> Result<(), Error> {
        let lacking = self.lacking(feature);
        if lacking.is_empty() {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "Cannot {what}: units {} do not support it yet (they run an older rolling-ops \
             library); the application keeps the reference behaviour until every unit is upgraded.",
            lacking.join(", ")
        )))
    }

    /// Leader: set the scheduling policy.
    pub fn set_policy(&mut self, update: PolicyUpdate) -> Result<(), Error> {
        self.require_leader("set the rolling-ops policy")?;
        if update.max_concurrent == 0 {
            return Err(Error::InvalidArgument(
                "max_concurrent must be at least 1".into(),
            ));
        }
        if update.grant_timeout == Some(0) {
            return Err(Error::InvalidArgument(
                "grant_timeout must be at least 1 second".into(),
            ));
        }
        let policy = Policy {
            max_concurrent: update.max_concurrent,
            grant_timeout: update.grant_timeout,
            ordering: if update.rank_ordering {
                Ordering::Rank
            } else {
                Ordering::Fifo
            },
            halt_on_health_failure: update.halt_on_health_failure,
        };
        let needs = [
            (update.max_concurrent > 1, Feature::MaxConcurrent),
            (update.grant_timeout.is_some(), Feature::GrantTimeout),
            (update.rank_ordering, Feature::Rank),
        ];
        for (wanted, feature) in needs {
            let lacking = self.lacking(feature);
            if wanted && !lacking.is_empty() {
                self.log(
                    LogLevel::Warning,
                    format!(
                        "Policy {:?} is stored but not in force until every unit supports it \
                         (not yet: {}).",
                        feature.as_str(),
                        lacking.join(", ")
                    ),
                );
            }
        }
        let stored = self.peer.as_ref().map(|p| features::decode_policy(&p.app));
        if stored.as_ref() != Some(&policy) || !self.has_app_key(features::POLICY) {
            self.set_app(vec![(features::POLICY.into(), features::encode(&policy))]);
        }
        self.advance(false);
        Ok(())
    }

    fn has_app_key(&self, key: &str) -> bool {
        self.peer.as_ref().is_some_and(|p| p.app.contains_key(key))
    }

    /// Set this unit's rank (lower goes first when the leader orders by rank).
    pub fn set_rank(&mut self, rank: i64) -> Result<(), Error> {
        if self.peer.is_none() {
            return Err(self.no_relation());
        }
        self.set_local(vec![(features::RANK.into(), rank.to_string())]);
        self.advance(false);
        Ok(())
    }

    /// Apply an operator control; returns how many things it changed (operations
    /// cancelled, grants released, 1/0 for pause and resume).
    pub fn control(&mut self, control: Control) -> Result<u32, Error> {
        let changed = match control {
            Control::Pause(reason) => {
                self.require_leader("pause rolling operations")?;
                self.require_engaged(Feature::Pause, "pause")?;
                if self.has_app_key(features::PAUSED) {
                    0
                } else {
                    let reason = if reason.trim().is_empty() {
                        "paused by an operator".to_string()
                    } else {
                        reason
                    };
                    self.log(LogLevel::Warning, format!("Pausing grants: {reason}."));
                    self.set_app(vec![(
                        features::PAUSED.into(),
                        json!({"since": self.now.to_string(), "reason": reason}).to_string(),
                    )]);
                    1
                }
            }
            Control::Resume => {
                self.require_leader("resume rolling operations")?;
                if self.has_app_key(features::PAUSED) {
                    self.log(LogLevel::Info, "Resuming grants.".into());
                    self.set_app(vec![(features::PAUSED.into(), String::new())]);
                    1
                } else {
                    0
                }
            }
            Control::Cancel(callback_id) => self.cancel(callback_id.as_deref())?,
            Control::ForceRelease(unit) => self.force_release(unit.as_deref())?,
        };
        self.advance(false);
        Ok(changed)
    }

    fn cancel(&mut self, callback_id: Option<&str>) -> Result<u32, Error> {
        if self.peer.is_none() {
            return Err(self.no_relation());
        }
        let local = self.local_record();
        if !local.peer_managed() {
            return Err(Error::InvalidArgument(
                "Cannot cancel while this unit's queue is managed by etcd.".into(),
            ));
        }
        let queue = local.queue.clone().map_err(|e| {
            Error::Decoding(format!(
                "Cannot cancel: this unit's queue cannot be decoded ({}).",
                e.0
            ))
        })?;
        // The head stays when it has started: it runs (or is being health-checked) under a
        // grant, and dropping it would lose its result.
        let head_busy = queue.head().is_some_and(|h| h.attempt > 0)
            || local.health.as_ref().is_some_and(|g| !g.failed);
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (i, op) in queue.ops().iter().enumerate() {
            let matches = callback_id.is_none_or(|id| id == op.callback_id);
            if matches && !(i == 0 && head_busy) {
                removed.push(op.clone());
            } else {
                kept.push(op.clone());
            }
        }
        if removed.is_empty() {
            return Ok(0);
        }
        let queue = OperationQueue::from_ops(kept);
        let intent = if queue.is_empty() {
            Intent::Idle
        } else {
            local.intent.clone().unwrap_or(Intent::Request)
        };
        self.log(
            LogLevel::Warning,
            format!(
                "Cancelled {} queued operation(s): {}.",
                removed.len(),
                removed
                    .iter()
                    .map(|op| format!("{:?}", op.callback_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let options = self.op_options_pair(&queue, None);
        self.set_local(vec![
            (wire::OPERATIONS.into(), queue.encode()),
            (wire::STATE.into(), intent.as_str().into()),
        ]);
        // A cancelled roll operation counts this unit as done, so the roll can complete.
        for op in &removed {
            self.forget_op(op);
        }
        self.set_local(vec![options]);
        Ok(removed.len() as u32)
    }

    fn force_release(&mut self, unit: Option<&str>) -> Result<u32, Error> {
        self.require_leader("force-release the lock")?;
        let lock = LockState::decode(&self.peer.as_ref().expect("checked").app);
        let (released, kept): (Vec<_>, Vec<_>) = lock
            .holders()
            .into_iter()
            .partition(|g| unit.is_none_or(|u| u == g.unit));
        if let Some(unit) = unit
            && released.is_empty()
        {
            return Err(Error::InvalidArgument(format!(
                "{unit} does not hold the lock."
            )));
        }
        for grant in &released {
            self.log(
                LogLevel::Warning,
                format!(
                    "Releasing the lock held by {}: {}.",
                    grant.unit,
                    crate::scheduler::ReleaseReason::Forced.describe()
                ),
            );
        }
        if !released.is_empty() {
            let mut backoff = features::decode_reclaimed(&self.peer.as_ref().expect("checked").app);
            let now = self.now.micros();
            let mut longest = 0;
            for grant in &released {
                let next = features::next_backoff(
                    backoff.get(&grant.unit),
                    features::DEFAULT_RECLAIM_BACKOFF_S,
                    now,
                );
                longest = longest.max(next.seconds);
                backoff.insert(grant.unit.clone(), next);
            }
            self.set_app(vec![(
                features::RECLAIMED.into(),
                features::encode_reclaimed(&backoff),
            )]);
            self.dispatch_after(longest.saturating_mul(1000));
            self.set_app(LockState::pairs(&kept, lock.last_seq));
        }
        Ok(released.len() as u32)
    }

    /// Leader: start an application-wide roll; returns its generation.
    pub fn start_roll(&mut self, request: RollRequest) -> Result<u64, Error> {
        self.require_leader("start an application-wide roll")?;
        self.require_engaged(Feature::Roll, "start an application-wide roll")?;
        for id in std::iter::once(&request.callback_id)
            .chain(request.health_check.iter())
            .chain(request.on_complete.iter())
        {
            if !self.config.callback_ids.contains(id) {
                return Err(Error::InvalidLockRequest(format!(
                    "Unknown callback_id: {id}"
                )));
            }
        }
        let kwargs: Map<String, Value> = match serde_json::from_str(&request.kwargs_json) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(Error::InvalidLockRequest(
                    "Failed to start the roll: kwargs must be a JSON object".into(),
                ));
            }
        };
        let previous = self
            .peer
            .as_ref()
            .and_then(|p| features::decode_roll(&p.app));
        if let Some(roll) = &previous
            && roll.completed.is_none()
        {
            return Err(Error::InvalidArgument(format!(
                "Roll {} is still in progress (waiting for {}).",
                roll.generation,
                self.roll_pending(roll.generation).join(", ")
            )));
        }
        let generation = previous.map_or(1, |r| r.generation + 1);
        let roll = Roll {
            generation,
            callback_id: request.callback_id,
            kwargs,
            health_check: request.health_check,
            health_timeout: request.health_timeout,
            on_complete: request.on_complete,
            started: self.now.to_string(),
            completed: None,
        };
        self.log(
            LogLevel::Info,
            format!(
                "Starting application-wide roll {generation} ({:?}).",
                roll.callback_id
            ),
        );
        self.set_app(vec![(features::ROLL.into(), features::encode(&roll))]);
        // Grants wait for every unit to join; this wakes the leader if one never does.
        self.dispatch_after((super::roll::ROLL_JOIN_WINDOW_S * 1000.0) as u32);
        self.advance(false);
        Ok(generation)
    }
}
