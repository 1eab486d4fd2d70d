//! The peer relation's databags, byte-compatible with `charmlibs.rollingops` 1.x
//! (spec/peer.md §2), plus the two keys this library adds so that decisions never compare
//! two machines' clocks (§8 W3):
//!
//! * app bag `rollingops-grant` = `{"seq":N,"unit":"app/1","at":"<granted_at>"}` — a grant
//!   generation, valid only while `unit`/`at` match `granted_unit`/`granted_at` (an old
//!   leader that rewrites the grant leaves it stale, and readers then ignore its `seq`);
//!   after a release it stays as `{"seq":N}` so generations never repeat.
//! * unit bag `rollingops-executed-grant` = the identity of the last grant this unit ran
//!   under. The holder has finished exactly when it equals the current grant identity.
//!
//! Old units ignore both keys; old holders (without the echo key) are released by the
//! reference's rules, applied to the holder only.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::op::DecodeError;
use crate::queue::OperationQueue;
use crate::timestamp::Timestamp;

/// A databag: key → value. An empty value written means "delete".
pub type Bag = BTreeMap<String, String>;

/// App bag: the unit holding the lock.
pub const GRANTED_UNIT: &str = "granted_unit";
/// App bag: when the lock was granted (leader clock).
pub const GRANTED_AT: &str = "granted_at";
/// App bag: grant generation (this library).
pub const GRANT: &str = "rollingops-grant";
/// App bag: PID of the reference's peer worker. Read by nobody here, never signalled.
pub const PEER_WORKER_PID: &str = "peer-rollingops-worker-pid";
/// Unit bag: the queue.
pub const OPERATIONS: &str = "operations";
/// Unit bag: the intent.
pub const STATE: &str = "state";
/// Unit bag: when the last result was recorded (unit clock).
pub const EXECUTED_AT: &str = "executed_at";
/// Unit bag: identity of the grant the last result was recorded under (this library).
pub const EXECUTED_GRANT: &str = "rollingops-executed-grant";
/// Unit bag: which backend owns the queue.
pub const PROCESSING_BACKEND: &str = "processing_backend";
/// Unit bag: etcd leftovers to clean.
pub const ETCD_CLEANUP_NEEDED: &str = "etcd_cleanup_needed";

/// A unit's intent (`state` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Wants the lock for its head operation.
    Request,
    /// Head failed; wants the lock again after others.
    RetryRelease,
    /// Head asked to keep the lock.
    RetryHold,
    /// Nothing to do.
    Idle,
}

impl Intent {
    /// Wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Request => "request",
            Intent::RetryRelease => "retry-release",
            Intent::RetryHold => "retry-hold",
            Intent::Idle => "idle",
        }
    }

    /// Parse a stored value; v0 leftovers (`acquire`, `release`) map to their meaning
    /// instead of failing every leader hook (§8 W11).
    pub fn parse(text: Option<&str>) -> Result<Self, DecodeError> {
        match text.unwrap_or("") {
            "" | "idle" | "release" => Ok(Intent::Idle),
            "request" | "acquire" => Ok(Intent::Request),
            "retry-release" => Ok(Intent::RetryRelease),
            "retry-hold" => Ok(Intent::RetryHold),
            other => Err(DecodeError(format!("{other:?} is not a valid intent"))),
        }
    }
}

/// Which backend owns a unit's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The peer relation (leader schedules).
    Peer,
    /// etcd (units compete for a leased key).
    Etcd,
}

impl Backend {
    /// Wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Peer => "peer",
            Backend::Etcd => "etcd",
        }
    }

    /// Parse a stored value; absent or empty is `peer`.
    pub fn parse(text: Option<&str>) -> Result<Self, DecodeError> {
        match text.unwrap_or("") {
            "" | "peer" => Ok(Backend::Peer),
            "etcd" => Ok(Backend::Etcd),
            other => Err(DecodeError(format!(
                "{other:?} is not a valid processing backend"
            ))),
        }
    }
}

/// One unit's bag, each field decoded on its own so that one bad value spoils only what
/// depends on it.
#[derive(Clone, Debug)]
pub struct UnitRecord {
    /// Unit name, `app/N`.
    pub name: String,
    /// The queue, or why it cannot be read.
    pub queue: Result<OperationQueue, DecodeError>,
    /// The stored intent, or why it cannot be read.
    pub intent: Result<Intent, DecodeError>,
    /// Last result time (unit clock); unparsable counts as absent.
    pub executed_at: Option<Timestamp>,
    /// Identity of the grant the last result was recorded under.
    pub executed_grant: Option<String>,
    /// Owning backend, or why it cannot be read.
    pub backend: Result<Backend, DecodeError>,
    /// Protocol features the unit supports (empty for reference units).
    pub features: crate::features::FeatureSet,
    /// Scheduling rank (lower goes first when the leader orders by rank).
    pub rank: i64,
    /// Progress through application-wide rolls.
    pub roll: crate::features::RollState,
    /// The unit's health gate, if any.
    pub health: Option<crate::features::HealthGate>,
}

impl UnitRecord {
    /// Decode a unit bag.
    pub fn decode(name: &str, bag: &Bag) -> Self {
        let get = |key: &str| bag.get(key).map(String::as_str);
        UnitRecord {
            name: name.to_string(),
            queue: OperationQueue::decode(get(OPERATIONS)),
            intent: Intent::parse(get(STATE)),
            executed_at: get(EXECUTED_AT).and_then(Timestamp::parse),
            executed_grant: get(EXECUTED_GRANT)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            backend: Backend::parse(get(PROCESSING_BACKEND)),
            features: crate::features::decode_features(bag),
            rank: crate::features::decode_rank(bag),
            roll: crate::features::decode_roll_state(bag),
            health: crate::features::decode_health(bag),
        }
    }

    /// Whether the scheduler may consider this unit, and with which queue and intent.
    /// The intent is derived from the queue where they disagree (§8 W12): an empty queue
    /// is idle whatever `state` says, a non-empty queue marked idle is a request.
    pub fn schedulable(&self) -> Result<(&OperationQueue, Intent), DecodeError> {
        let queue = self.queue.as_ref().map_err(Clone::clone)?;
        let intent = self.intent.clone()?;
        let intent = match (queue.is_empty(), intent) {
            (true, _) => Intent::Idle,
            (false, Intent::Idle) => Intent::Request,
            (false, intent) => intent,
        };
        Ok((queue, intent))
    }

    /// Peer-managed unless its bag says etcd (an unreadable value counts as peer).
    pub fn peer_managed(&self) -> bool {
        !matches!(self.backend, Ok(Backend::Etcd))
    }
}

/// The current grant as read from the app bag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The holder.
    pub unit: String,
    /// `granted_at` exactly as stored.
    pub at_raw: String,
    /// `granted_at` parsed (absent if unparsable).
    pub at: Option<Timestamp>,
    /// Generation, when the grant was written by this library.
    pub seq: Option<u64>,
}

impl Grant {
    /// The identity a holder echoes after running under this grant. It changes with every
    /// grant, whoever wrote it: with our generation when present, else with `granted_at`.
    pub fn identity(&self) -> String {
        match self.seq {
            Some(seq) => format!("{seq}@{}", self.at_raw),
            None => format!("@{}", self.at_raw),
        }
    }
}

/// What the app bag says about the lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    /// The current grant as the reference sees it (`granted_unit`/`granted_at`), if any.
    pub grant: Option<Grant>,
    /// Further holders when the application allows more than one (this library only);
    /// valid only while the record they come from matches `grant`.
    pub extra: Vec<Grant>,
    /// Highest generation written so far (0 if none).
    pub last_seq: u64,
}

impl LockState {
    /// Decode the app bag.
    pub fn decode(app: &Bag) -> Self {
        let record: Option<Value> = app
            .get(GRANT)
            .and_then(|text| serde_json::from_str(text).ok());
        let field = |name: &str| record.as_ref().and_then(|r| r.get(name));
        let seq = field("seq").and_then(Value::as_u64).unwrap_or(0);
        let last_seq = field("last").and_then(Value::as_u64).unwrap_or(0).max(seq);
        let grant = app
            .get(GRANTED_UNIT)
            .filter(|unit| !unit.is_empty())
            .map(|unit| {
                let at_raw = app.get(GRANTED_AT).cloned().unwrap_or_default();
                let ours = field("unit").and_then(Value::as_str) == Some(unit.as_str())
                    && field("at").and_then(Value::as_str) == Some(at_raw.as_str());
                Grant {
                    unit: unit.clone(),
                    at: Timestamp::parse(&at_raw),
                    at_raw,
                    seq: ours.then_some(seq),
                }
            });
        // Extra holders count only under the grant they were written with: an old leader
        // that rewrote `granted_unit` knows nothing of them, so they are stale.
        let extra = match &grant {
            Some(primary) if primary.seq.is_some() => field("extra")
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(extra_grant).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        LockState {
            grant,
            extra,
            last_seq,
        }
    }

    /// Every holder, primary first.
    pub fn holders(&self) -> Vec<Grant> {
        self.grant
            .iter()
            .chain(self.extra.iter())
            .cloned()
            .collect()
    }

    /// App-bag writes that store `holders` (any order) with generation counter
    /// `last_seq`. The oldest grant becomes the one old units see; with a single holder
    /// the record is exactly the one-holder format.
    pub fn pairs(holders: &[Grant], last_seq: u64) -> Vec<(String, String)> {
        // The oldest grant is the one old units see; the others keep their order.
        let Some(first) = (0..holders.len()).min_by_key(|&i| holders[i].seq.unwrap_or(0)) else {
            return release_pairs(last_seq);
        };
        let primary = &holders[first];
        let extra: Vec<&Grant> = holders
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, g)| g)
            .collect();
        let seq = primary.seq.unwrap_or(0);
        let mut record = json!({"seq": seq, "unit": primary.unit, "at": primary.at_raw});
        if last_seq > seq {
            record["last"] = json!(last_seq);
        }
        if !extra.is_empty() {
            record["extra"] = extra
                .iter()
                .map(|g| json!({"unit": g.unit, "at": g.at_raw, "seq": g.seq.unwrap_or(0)}))
                .collect();
        }
        vec![
            (GRANTED_UNIT.into(), primary.unit.clone()),
            (GRANTED_AT.into(), primary.at_raw.clone()),
            (GRANT.into(), record.to_string()),
        ]
    }
}

fn extra_grant(value: &Value) -> Option<Grant> {
    let unit = value.get("unit")?.as_str()?.to_string();
    let at_raw = value.get("at")?.as_str()?.to_string();
    Some(Grant {
        unit,
        at: Timestamp::parse(&at_raw),
        at_raw,
        seq: Some(value.get("seq")?.as_u64()?),
    })
}

/// A new grant for `unit` with generation `seq`.
pub fn new_grant(unit: &str, now: Timestamp, seq: u64) -> Grant {
    let at_raw = now.to_string();
    Grant {
        unit: unit.to_string(),
        at: Timestamp::parse(&at_raw),
        at_raw,
        seq: Some(seq),
    }
}

/// App-bag writes for a new single grant with generation `seq`.
pub fn grant_pairs(unit: &str, now: Timestamp, seq: u64) -> Vec<(String, String)> {
    LockState::pairs(&[new_grant(unit, now, seq)], seq)
}

/// App-bag writes for releasing the lock (generation kept).
pub fn release_pairs(last_seq: u64) -> Vec<(String, String)> {
    vec![
        (GRANTED_UNIT.into(), String::new()),
        (GRANTED_AT.into(), String::new()),
        (GRANT.into(), json!({"seq": last_seq}).to_string()),
    ]
}

/// Order units as people number them: by application, then unit number.
pub fn unit_order_key(name: &str) -> (&str, u64, &str) {
    match name.rsplit_once('/') {
        Some((app, number)) => (app, number.parse().unwrap_or(u64::MAX), name),
        None => (name, u64::MAX, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bag(pairs: &[(&str, &str)]) -> Bag {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn intents_including_v0_leftovers() {
        assert_eq!(Intent::parse(None).unwrap(), Intent::Idle);
        assert_eq!(Intent::parse(Some("acquire")).unwrap(), Intent::Request);
        assert_eq!(Intent::parse(Some("release")).unwrap(), Intent::Idle);
        assert!(Intent::parse(Some("bogus")).is_err());
        assert_eq!(Backend::parse(Some("")).unwrap(), Backend::Peer);
        assert!(Backend::parse(Some("zk")).is_err());
    }

    #[test]
    fn w12_intent_derived_from_queue() {
        let op = r#"[{"callback_id":"r","requested_at":"1"}]"#;
        let idle_with_work = UnitRecord::decode("a/1", &bag(&[(OPERATIONS, op), (STATE, "idle")]));
        assert_eq!(idle_with_work.schedulable().unwrap().1, Intent::Request);
        let request_without_work =
            UnitRecord::decode("a/1", &bag(&[(OPERATIONS, "[]"), (STATE, "request")]));
        assert_eq!(request_without_work.schedulable().unwrap().1, Intent::Idle);
        let broken = UnitRecord::decode("a/1", &bag(&[(OPERATIONS, "{oops"), (STATE, "request")]));
        assert!(broken.schedulable().is_err());
    }

    #[test]
    fn grant_generation_valid_only_for_the_grant_it_was_written_with() {
        let ours = LockState::decode(&bag(&[
            (GRANTED_UNIT, "a/1"),
            (GRANTED_AT, "1777636800.35"),
            (GRANT, r#"{"seq":7,"unit":"a/1","at":"1777636800.35"}"#),
        ]));
        assert_eq!(ours.grant.as_ref().unwrap().identity(), "7@1777636800.35");
        // An old leader re-granted: granted_at changed, our record is stale.
        let old = LockState::decode(&bag(&[
            (GRANTED_UNIT, "a/1"),
            (GRANTED_AT, "1777636900.0"),
            (GRANT, r#"{"seq":7,"unit":"a/1","at":"1777636800.35"}"#),
        ]));
        assert_eq!(old.grant.as_ref().unwrap().identity(), "@1777636900.0");
        assert_eq!(old.last_seq, 7);
        let free = LockState::decode(&bag(&[(GRANT, r#"{"seq":9}"#)]));
        assert_eq!(
            free,
            LockState {
                grant: None,
                extra: vec![],
                last_seq: 9
            }
        );
    }

    #[test]
    fn unit_order_is_numeric() {
        let mut names = vec!["a/10", "a/2", "a/1"];
        names.sort_by_key(|n| unit_order_key(n));
        assert_eq!(names, ["a/1", "a/2", "a/10"]);
    }
}
