//! Protocol features beyond the reference, and the databag keys that carry them.
//!
//! Wire rule: these features only add keys. Every unit of this library advertises what it
//! supports in its bag (`rollingops-features`); the leader engages a feature only when
//! every unit on the relation advertises it and publishes the engaged set in the app bag
//! (so non-leaders, which read only their own bag, know it too). A reference unit
//! advertises nothing, so with one present the application behaves as the reference does.
//!
//! Keys (all JSON):
//! * unit `rollingops-features` — `["health-gate", …]`, what this unit supports;
//! * unit `rollingops-rank` — this unit's rank (lower goes first);
//! * unit `rollingops-op-options` — `{op_id: {health_check, health_timeout, generation_kwarg,
//!   roll}}`, options of queued operations kept beside the reference's `operations` list;
//! * unit `rollingops-health` — the health gate this unit is in, or the one that failed;
//! * unit `rollingops-roll-state` — `{"seen": G, "done": G}` for application-wide rolls;
//! * app `rollingops-features` — the engaged set;
//! * app `rollingops-policy` — `{max_concurrent, grant_timeout, ordering, halt_on_health_failure}`;
//! * app `rollingops-paused` — `{since, reason}` while grants are paused;
//! * app `rollingops-roll` — the current application-wide roll;
//! * app `rollingops-reclaimed` — `{unit: until_micros}`, units whose grant was reclaimed
//!   (timed out or forced) and may not be granted again before then.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::wire::Bag;

/// Unit and app bag: supported / engaged features.
pub const FEATURES: &str = "rollingops-features";
/// Unit bag: scheduling rank.
pub const RANK: &str = "rollingops-rank";
/// Unit bag: options of queued operations.
pub const OP_OPTIONS: &str = "rollingops-op-options";
/// Unit bag: the health gate.
pub const HEALTH: &str = "rollingops-health";
/// Unit bag: progress through application-wide rolls.
pub const ROLL_STATE: &str = "rollingops-roll-state";
/// App bag: the leader's scheduling policy.
pub const POLICY: &str = "rollingops-policy";
/// App bag: pause record.
pub const PAUSED: &str = "rollingops-paused";
/// App bag: the application-wide roll.
pub const ROLL: &str = "rollingops-roll";
/// App bag: units whose grant was reclaimed: until when (microseconds) they wait, and the
/// back-off in seconds (doubled at each reclaim, so a dead unit costs ever fewer hooks).
pub const RECLAIMED: &str = "rollingops-reclaimed";

/// Longest back-off of a reclaimed unit (seconds).
pub const MAX_RECLAIM_BACKOFF_S: u32 = 3_600;

/// A reclaimed unit's back-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Not granted again before this (microseconds).
    pub until: i64,
    /// The back-off that set `until` (seconds).
    pub seconds: u32,
}

/// Seconds a reclaimed unit waits before it can be granted again, when the policy has no
/// grant timeout (a force-release).
pub const DEFAULT_RECLAIM_BACKOFF_S: u32 = 60;

/// Decode the reclaimed units' back-offs.
pub fn decode_reclaimed(app: &Bag) -> BTreeMap<String, Backoff> {
    let Some(Value::Object(map)) = parse(app.get(RECLAIMED)) else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(unit, v)| {
            let until = v.get(0)?.as_i64()?;
            let seconds = u32::try_from(v.get(1)?.as_u64()?).ok()?;
            Some((unit.clone(), Backoff { until, seconds }))
        })
        .collect()
}

/// Encode the back-offs; empty deletes the key.
pub fn encode_reclaimed(map: &BTreeMap<String, Backoff>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let object: Map<String, Value> = map
        .iter()
        .map(|(u, b)| (u.clone(), json!([b.until, b.seconds])))
        .collect();
    Value::Object(object).to_string()
}

/// The back-off after one more reclaim of a unit (`base` seconds, then doubling).
pub fn next_backoff(previous: Option<&Backoff>, base: u32, now: i64) -> Backoff {
    let seconds = previous.map_or(base, |b| {
        b.seconds
            .saturating_mul(2)
            .clamp(base, MAX_RECLAIM_BACKOFF_S.max(base))
    });
    Backoff {
        until: now + i64::from(seconds) * 1_000_000,
        seconds,
    }
}

/// A protocol feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// Hold the lock until a readiness check passes.
    HealthGate,
    /// Charm-supplied rank ordering.
    Rank,
    /// More than one holder.
    MaxConcurrent,
    /// Reclaim grants from stuck holders.
    GrantTimeout,
    /// Application-wide rolls.
    Roll,
    /// Pausing grants.
    Pause,
}

impl Feature {
    /// Everything this library supports.
    pub const ALL: [Feature; 6] = [
        Feature::HealthGate,
        Feature::Rank,
        Feature::MaxConcurrent,
        Feature::GrantTimeout,
        Feature::Roll,
        Feature::Pause,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::HealthGate => "health-gate",
            Feature::Rank => "rank",
            Feature::MaxConcurrent => "max-concurrent",
            Feature::GrantTimeout => "grant-timeout",
            Feature::Roll => "roll",
            Feature::Pause => "pause",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Feature::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

/// A set of features (a bit set: every unit's record carries one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureSet(u8);

impl FeatureSet {
    /// The empty set.
    pub fn new() -> Self {
        FeatureSet(0)
    }

    fn bit(feature: Feature) -> u8 {
        1 << (feature as u8)
    }

    /// Whether `feature` is in the set.
    pub fn contains(&self, feature: &Feature) -> bool {
        self.0 & Self::bit(*feature) != 0
    }

    /// Add `feature`.
    pub fn insert(&mut self, feature: Feature) {
        self.0 |= Self::bit(feature);
    }

    /// Keep the features `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Feature) -> bool) {
        for feature in Feature::ALL {
            if self.contains(&feature) && !keep(&feature) {
                self.0 &= !Self::bit(feature);
            }
        }
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        self.0 = 0;
    }

    /// The features, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = Feature> + '_ {
        Feature::ALL.into_iter().filter(|f| self.contains(f))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Feature> for FeatureSet {
    fn from_iter<I: IntoIterator<Item = Feature>>(iter: I) -> Self {
        let mut set = FeatureSet::new();
        for feature in iter {
            set.insert(feature);
        }
        set
    }
}

/// The value this library advertises in its unit bag.
pub fn advertised() -> String {
    encode_features(&Feature::ALL.into_iter().collect())
}

/// Encode a feature set (sorted, so equal sets write equal bytes).
pub fn encode_features(set: &FeatureSet) -> String {
    Value::from(set.iter().map(|f| f.as_str()).collect::<Vec<_>>()).to_string()
}

/// Decode a feature set; unknown names (a newer unit) are ignored, garbage is empty.
pub fn decode_features(bag: &Bag) -> FeatureSet {
    bag.get(FEATURES)
        .and_then(|text| serde_json::from_str::<Vec<String>>(text).ok())
        .map(|names| names.iter().filter_map(|n| Feature::parse(n)).collect())
        .unwrap_or_default()
}

/// A unit's rank (0 when absent or unreadable).
pub fn decode_rank(bag: &Bag) -> i64 {
    bag.get(RANK)
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// How the leader orders waiting units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ordering {
    /// Oldest request first (the reference's order).
    #[default]
    Fifo,
    /// Lowest `rollingops-rank` first, then oldest request.
    Rank,
}

/// The leader's scheduling policy (app bag `rollingops-policy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How many units may hold the lock at once.
    pub max_concurrent: u32,
    /// Seconds after which the leader reclaims a grant from a holder that has not finished.
    pub grant_timeout: Option<u32>,
    /// Waiting-unit order.
    pub ordering: Ordering,
    /// Pause the application when a health gate times out.
    pub halt_on_health_failure: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_concurrent: 1,
            grant_timeout: None,
            ordering: Ordering::Fifo,
            halt_on_health_failure: true,
        }
    }
}

/// Why grants are paused (app bag `rollingops-paused`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    /// When (leader clock, seconds as text).
    pub since: String,
    /// Who or what paused, for people.
    pub reason: String,
}

/// Options of one queued operation, kept outside the reference's operation JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpOptions {
    /// Callback that must report ready before the lock moves on.
    pub health_check: Option<String>,
    /// Seconds to wait for the check before giving up.
    pub health_timeout: Option<u32>,
    /// Name of the keyword argument that receives the grant generation.
    pub generation_kwarg: Option<String>,
    /// The application-wide roll this operation belongs to.
    pub roll: Option<u64>,
}

impl OpOptions {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == OpOptions::default()
    }
}

/// `rollingops-op-options`: op id → options.
pub type OpOptionsMap = BTreeMap<String, OpOptions>;

/// Decode the options map (unreadable counts as empty: the ops still run, ungated).
pub fn decode_op_options(bag: &Bag) -> OpOptionsMap {
    let Some(Value::Object(map)) = parse(bag.get(OP_OPTIONS)) else {
        return OpOptionsMap::new();
    };
    map.iter()
        .filter_map(|(id, v)| Some((id.clone(), OpOptions::from_value(v)?)))
        .collect()
}

/// Encode the options map; empty deletes the key.
pub fn encode_op_options(map: &OpOptionsMap) -> String {
    if map.is_empty() {
        return String::new();
    }
    let object: Map<String, Value> = map
        .iter()
        .map(|(id, options)| (id.clone(), options.to_value()))
        .collect();
    Value::Object(object).to_string()
}

/// A health gate (unit bag `rollingops-health`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthGate {
    /// Identity of the grant the gated operation ran under.
    pub grant: String,
    /// The gated operation.
    pub op: String,
    /// The check's callback id.
    pub check: String,
    /// When the operation finished (unit clock, microseconds).
    pub started: i64,
    /// When to give up (microseconds).
    pub deadline: i64,
    /// Checks run so far.
    pub attempts: u32,
    /// When the next check is due (microseconds).
    pub next_check: i64,
    /// Set when the gate timed out: the lock was handed on without the check passing.
    pub failed: bool,
}

/// Decode the health gate record.
pub fn decode_health(bag: &Bag) -> Option<HealthGate> {
    HealthGate::from_value(&parse(bag.get(HEALTH))?)
}

/// An application-wide roll (app bag `rollingops-roll`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roll {
    /// Roll generation (1, 2, …).
    pub generation: u64,
    /// Callback each unit runs once.
    pub callback_id: String,
    /// Its keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Health check gating each unit's hand-off.
    pub health_check: Option<String>,
    /// Seconds to wait for the check.
    pub health_timeout: Option<u32>,
    /// Callback the leader runs once every unit has finished.
    pub on_complete: Option<String>,
    /// When the roll started (leader clock, seconds as text).
    pub started: String,
    /// When it completed.
    pub completed: Option<String>,
}

/// Decode the roll record.
pub fn decode_roll(app: &Bag) -> Option<Roll> {
    Roll::from_value(&parse(app.get(ROLL))?)
}

/// A unit's progress through rolls (unit bag `rollingops-roll-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RollState {
    /// Highest roll generation this unit has queued.
    pub seen: u64,
    /// Highest roll generation this unit has finished.
    pub done: u64,
}

/// Decode a unit's roll progress.
pub fn decode_roll_state(bag: &Bag) -> RollState {
    parse(bag.get(ROLL_STATE))
        .and_then(|v| RollState::from_value(&v))
        .unwrap_or_default()
}

/// Decode the policy (unreadable or absent: the default).
pub fn decode_policy(app: &Bag) -> Policy {
    parse(app.get(POLICY))
        .and_then(|v| Policy::from_value(&v))
        .unwrap_or_default()
}

/// Decode the pause record.
pub fn decode_pause(app: &Bag) -> Option<Pause> {
    Pause::from_value(&parse(app.get(PAUSED))?)
}

/// Encode any record as compact JSON.
pub fn encode<T: Record>(value: &T) -> String {
    value.to_value().to_string()
}

fn parse(text: Option<&String>) -> Option<Value> {
    serde_json::from_str(text?).ok()
}

/// A databag record, converted to and from JSON by hand: serde's derives would add about
/// a third to the component's size.
pub trait Record: Sized {
    /// The JSON form.
    fn to_value(&self) -> Value;
    /// Read the JSON form; `None` when a required field is missing or mistyped.
    fn from_value(value: &Value) -> Option<Self>;
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key)?.as_str().map(str::to_string)
}

fn int(value: &Value, key: &str) -> Option<i64> {
    value.get(key)?.as_i64()
}

fn uint(value: &Value, key: &str) -> Option<u64> {
    value.get(key)?.as_u64()
}

fn small(value: &Value, key: &str) -> Option<u32> {
    uint(value, key).and_then(|n| u32::try_from(n).ok())
}

fn put<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        map.insert(key.into(), value.into());
    }
}

impl Record for Policy {
    fn to_value(&self) -> Value {
        let ordering = match self.ordering {
            Ordering::Fifo => "fifo",
            Ordering::Rank => "rank",
        };
        json!({
            "max_concurrent": self.max_concurrent,
            "grant_timeout": self.grant_timeout,
            "ordering": ordering,
            "halt_on_health_failure": self.halt_on_health_failure,
        })
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_object()?;
        let default = Policy::default();
        Some(Policy {
            max_concurrent: small(value, "max_concurrent").unwrap_or(default.max_concurrent),
            grant_timeout: small(value, "grant_timeout"),
            ordering: match value.get("ordering").and_then(Value::as_str) {
                Some("rank") => Ordering::Rank,
                _ => Ordering::Fifo,
            },
            halt_on_health_failure: value
                .get("halt_on_health_failure")
                .and_then(Value::as_bool)
                .unwrap_or(default.halt_on_health_failure),
        })
    }
}

impl Record for Pause {
    fn to_value(&self) -> Value {
        json!({"since": self.since, "reason": self.reason})
    }
    fn from_value(value: &Value) -> Option<Self> {
        Some(Pause {
            since: text(value, "since")?,
            reason: text(value, "reason").unwrap_or_default(),
        })
    }
}

impl Record for OpOptions {
    fn to_value(&self) -> Value {
        let mut map = Map::new();
        put(&mut map, "health_check", self.health_check.clone());
        put(&mut map, "health_timeout", self.health_timeout);
        put(&mut map, "generation_kwarg", self.generation_kwarg.clone());
        put(&mut map, "roll", self.roll);
        Value::Object(map)
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_object()?;
        Some(OpOptions {
            health_check: text(value, "health_check"),
            health_timeout: small(value, "health_timeout"),
            generation_kwarg: text(value, "generation_kwarg"),
            roll: uint(value, "roll"),
        })
    }
}

impl Record for HealthGate {
    fn to_value(&self) -> Value {
        let mut value = json!({
            "grant": self.grant,
            "op": self.op,
            "check": self.check,
            "started": self.started,
            "deadline": self.deadline,
            "attempts": self.attempts,
            "next_check": self.next_check,
        });
        if self.failed {
            value["failed"] = json!(true);
        }
        value
    }
    fn from_value(value: &Value) -> Option<Self> {
        Some(HealthGate {
            grant: text(value, "grant")?,
            op: text(value, "op")?,
            check: text(value, "check")?,
            started: int(value, "started")?,
            deadline: int(value, "deadline")?,
            attempts: small(value, "attempts").unwrap_or(0),
            next_check: int(value, "next_check").unwrap_or(0),
            failed: value
                .get("failed")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

impl Record for Roll {
    fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("generation".into(), self.generation.into());
        map.insert("callback_id".into(), self.callback_id.clone().into());
        map.insert("kwargs".into(), Value::Object(self.kwargs.clone()));
        put(&mut map, "health_check", self.health_check.clone());
        put(&mut map, "health_timeout", self.health_timeout);
        put(&mut map, "on_complete", self.on_complete.clone());
        map.insert("started".into(), self.started.clone().into());
        put(&mut map, "completed", self.completed.clone());
        Value::Object(map)
    }
    fn from_value(value: &Value) -> Option<Self> {
        Some(Roll {
            generation: uint(value, "generation")?,
            callback_id: text(value, "callback_id")?,
            kwargs: value.get("kwargs")?.as_object()?.clone(),
            health_check: text(value, "health_check"),
            health_timeout: small(value, "health_timeout"),
            on_complete: text(value, "on_complete"),
            started: text(value, "started").unwrap_or_default(),
            completed: text(value, "completed"),
        })
    }
}

impl Record for RollState {
    fn to_value(&self) -> Value {
        json!({"seen": self.seen, "done": self.done})
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_object()?;
        Some(RollState {
            seen: uint(value, "seen").unwrap_or(0),
            done: uint(value, "done").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_round_trip_and_ignore_unknown_names() {
        let mut bag = Bag::new();
        bag.insert(FEATURES.into(), advertised());
        assert_eq!(decode_features(&bag).len(), Feature::ALL.len());
        bag.insert(FEATURES.into(), r#"["rank","teleport"]"#.into());
        assert_eq!(
            decode_features(&bag),
            [Feature::Rank].into_iter().collect::<FeatureSet>()
        );
        bag.insert(FEATURES.into(), "{garbage".into());
        assert!(decode_features(&bag).is_empty());
    }

    #[test]
    fn policy_defaults_fill_missing_fields() {
        let mut app = Bag::new();
        assert_eq!(decode_policy(&app), Policy::default());
        app.insert(POLICY.into(), r#"{"max_concurrent":3}"#.into());
        let policy = decode_policy(&app);
        assert_eq!(policy.max_concurrent, 3);
        assert!(policy.halt_on_health_failure);
        assert_eq!(policy.ordering, Ordering::Fifo);
        app.insert(POLICY.into(), r#"{"ordering":"rank"}"#.into());
        assert_eq!(decode_policy(&app).ordering, Ordering::Rank);
    }
}
