//! One queued operation and its wire encoding (spec/peer.md §2.3, spec/etcd.md §5.3).

use serde_json::{Map, Value};

use crate::timestamp::Timestamp;

/// What a callback asks the lock to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationResult {
    /// Done: drop the operation and hand the lock on.
    Release,
    /// Retry later; let other units go first.
    RetryRelease,
    /// Retry now, keeping the lock.
    RetryHold,
}

impl OperationResult {
    /// Wire value (`release`, `retry-release`, `retry-hold`).
    pub fn as_str(self) -> &'static str {
        match self {
            OperationResult::Release => "release",
            OperationResult::RetryRelease => "retry-release",
            OperationResult::RetryHold => "retry-hold",
        }
    }

    /// Parse a wire value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "release" => Some(OperationResult::Release),
            "retry-release" => Some(OperationResult::RetryRelease),
            "retry-hold" => Some(OperationResult::RetryHold),
            _ => None,
        }
    }

    /// What a callback's return value means: the two retry values keep their meaning,
    /// anything else (`release`, `None`, an unexpected value) releases (spec/peer.md §1.5).
    pub fn from_returned(returned: Option<&str>) -> Self {
        match returned.and_then(Self::parse) {
            Some(OperationResult::RetryHold) => OperationResult::RetryHold,
            Some(OperationResult::RetryRelease) => OperationResult::RetryRelease,
            _ => OperationResult::Release,
        }
    }
}

/// One callback request of one unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    /// Key into the charm's callback registry.
    pub callback_id: String,
    /// When the requesting unit asked (its own clock).
    pub requested_at: Timestamp,
    /// `None` retries forever; `Some(n)` runs at most `n + 1` times.
    pub max_retry: Option<u64>,
    /// Retry results recorded so far.
    pub attempt: u64,
    /// Last outcome; only the etcd copy sets it.
    pub result: Option<OperationResult>,
    /// Keyword arguments for the callback: always a JSON object.
    pub kwargs: Map<String, Value>,
}

/// Why stored or requested data could not become an [`Operation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl Operation {
    /// A fresh request, not yet run.
    pub fn new(
        callback_id: &str,
        kwargs: Map<String, Value>,
        max_retry: Option<u64>,
        now: Timestamp,
    ) -> Self {
        Operation {
            callback_id: callback_id.to_string(),
            requested_at: now,
            max_retry,
            attempt: 0,
            result: None,
            kwargs,
        }
    }

    /// The etcd key segment and mirror identity: `<requested_at>-<callback_id>`.
    pub fn op_id(&self) -> String {
        format!("{}-{}", self.requested_at, self.callback_id)
    }

    /// Same request for de-duplication: same callback and equal kwargs, compared as
    /// canonical JSON values (key order ignored; `1`, `1.0` and `true` all differ).
    pub fn same_request(&self, other: &Operation) -> bool {
        self.callback_id == other.callback_id && self.kwargs == other.kwargs
    }

    /// Whether recording one more retry would exceed `max_retry`.
    pub fn retries_exhausted_after_increment(&self) -> bool {
        matches!(self.max_retry, Some(max) if self.attempt + 1 > max)
    }

    /// Compact JSON with the reference's key order and top-level kwargs sorted.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        self.write_json(&mut out);
        out
    }

    pub(crate) fn write_json(&self, out: &mut String) {
        out.push_str("{\"callback_id\":");
        out.push_str(&json_string(&self.callback_id));
        out.push_str(",\"requested_at\":\"");
        out.push_str(&self.requested_at.to_string());
        out.push_str("\",\"max_retry\":");
        match self.max_retry {
            Some(max) => out.push_str(&max.to_string()),
            None => out.push_str("null"),
        }
        out.push_str(",\"attempt\":");
        out.push_str(&self.attempt.to_string());
        out.push_str(",\"result\":");
        match self.result {
            Some(result) => {
                out.push('"');
                out.push_str(result.as_str());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"kwargs\":");
        out.push_str(&kwargs_json(&self.kwargs));
        out.push('}');
    }

    /// Decode one stored operation, accepting everything the reference accepts.
    pub fn from_value(value: &Value) -> Result<Self, DecodeError> {
        let object = value
            .as_object()
            .ok_or_else(|| DecodeError("operation is not a JSON object".into()))?;
        let callback_id = match object.get("callback_id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            _ => return Err(DecodeError("missing or blank callback_id".into())),
        };
        let requested_at = match object.get("requested_at") {
            Some(Value::String(text)) => Timestamp::parse(text),
            Some(Value::Number(number)) => number.as_f64().and_then(Timestamp::from_seconds),
            _ => None,
        }
        .ok_or_else(|| DecodeError("missing or unparsable requested_at".into()))?;
        let max_retry = match object.get("max_retry") {
            None | Some(Value::Null) => None,
            Some(value) => Some(non_negative(value, "max_retry")?),
        };
        let attempt = match object.get("attempt") {
            None | Some(Value::Null) => 0,
            Some(value) => non_negative(value, "attempt")?,
        };
        let result = match object.get("result") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(
                OperationResult::parse(text)
                    .ok_or_else(|| DecodeError(format!("unknown result {text:?}")))?,
            ),
            Some(_) => return Err(DecodeError("result is not a string".into())),
        };
        let kwargs = match object.get("kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err(DecodeError("kwargs is not a JSON object".into())),
        };
        Ok(Operation {
            callback_id,
            requested_at,
            max_retry,
            attempt,
            result,
            kwargs,
        })
    }

    /// Decode one operation from JSON text.
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| DecodeError(format!("malformed JSON: {e}")))?;
        Self::from_value(&value)
    }
}

/// Integers ≥ 0, also as numeric strings (`"5"`) or integral floats, as pydantic accepts.
fn non_negative(value: &Value, field: &str) -> Result<u64, DecodeError> {
    let parsed = match value {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(text) => text.trim().parse::<u64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| DecodeError(format!("{field} is not a non-negative integer")))
}

/// A JSON string literal, UTF-8 kept raw.
pub(crate) fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings always serialise")
}

/// kwargs as compact JSON with top-level keys sorted; nested objects keep their order.
pub fn kwargs_json(kwargs: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = kwargs.keys().collect();
    keys.sort_unstable();
    let mut out = String::from("{");
    for (index, key) in keys.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&json_string(key));
        out.push(':');
        out.push_str(&serde_json::to_string(&kwargs[key]).expect("values always serialise"));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kwargs(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    #[test]
    fn s7_1_row1_create_keeps_fields() {
        let op = Operation::new("restart", kwargs(json!({"b":2,"a":1})), Some(3), at(1));
        assert_eq!(op.callback_id, "restart");
        assert_eq!(op.kwargs, kwargs(json!({"a":1,"b":2})));
        assert_eq!(op.max_retry, Some(3));
        assert_eq!(op.requested_at, at(1));
    }

    #[test]
    fn s7_1_rows2_to_4_serialise_byte_exact() {
        let op = Operation::new(
            "cb",
            kwargs(json!({"b":2,"a":1})),
            None,
            at(1_771_848_000_123_456),
        );
        assert_eq!(
            op.to_json(),
            r#"{"callback_id":"cb","requested_at":"1771848000.123456","max_retry":null,"attempt":0,"result":null,"kwargs":{"a":1,"b":2}}"#
        );
        let op = Operation::new(
            "cb",
            kwargs(json!({"b":2,"a":1})),
            Some(0),
            at(1_771_819_200_123_456),
        );
        assert!(
            op.to_json()
                .contains(r#""requested_at":"1771819200.123456","max_retry":0"#)
        );
    }

    #[test]
    fn etcd_s12_vector_serialises_byte_exact() {
        let op = Operation::new(
            "_restart",
            kwargs(json!({"z":1,"a":"x y","n":null})),
            Some(2),
            at(1_777_636_800_123_456),
        );
        assert_eq!(
            op.to_json(),
            r#"{"callback_id":"_restart","requested_at":"1777636800.123456","max_retry":2,"attempt":0,"result":null,"kwargs":{"a":"x y","n":null,"z":1}}"#
        );
        assert_eq!(op.op_id(), "1777636800.123456-_restart");
    }

    #[test]
    fn nested_order_kept_and_unicode_raw() {
        let op = Operation::new(
            "cb",
            kwargs(json!({"b":{"z":1,"a":2},"a":"é"})),
            None,
            at(0),
        );
        assert!(
            op.to_json()
                .ends_with(r#""kwargs":{"a":"é","b":{"z":1,"a":2}}}"#),
            "{}",
            op.to_json()
        );
    }

    #[test]
    fn s7_1_rows5_and_15_to_20_retry_budget() {
        let mut op = Operation::new("cb", Map::new(), Some(0), at(0));
        assert!(op.retries_exhausted_after_increment());
        op.max_retry = Some(3);
        assert!(!op.retries_exhausted_after_increment());
        op.attempt = 3;
        assert!(op.retries_exhausted_after_increment());
        op.max_retry = None;
        op.attempt = 5;
        assert!(!op.retries_exhausted_after_increment());
    }

    #[test]
    fn s7_1_rows6_7_equality_ignores_order_and_retry_fields() {
        let a = Operation::new("restart", kwargs(json!({"a":1,"b":2})), Some(0), at(1));
        let b = Operation::new("restart", kwargs(json!({"b":2,"a":1})), Some(999), at(2));
        let c = Operation::new("restart", kwargs(json!({"a":2})), Some(0), at(1));
        assert!(a.same_request(&b));
        assert!(!a.same_request(&c));
        let e1 = Operation::new("restart", Map::new(), Some(1), at(1));
        let e2 = Operation::new("restart", Map::new(), None, at(5));
        assert!(e1.same_request(&e2));
    }

    #[test]
    fn w10_equality_is_canonical_json_not_python_value_semantics() {
        let one = Operation::new("cb", kwargs(json!({"x":1})), None, at(1));
        let float = Operation::new("cb", kwargs(json!({"x":1.0})), None, at(1));
        let truth = Operation::new("cb", kwargs(json!({"x":true})), None, at(1));
        assert!(!one.same_request(&float));
        assert!(!one.same_request(&truth));
    }

    #[test]
    fn s7_1_rows8_to_11_decoding_rules() {
        let op = Operation::new(
            "cb",
            kwargs(json!({"k":[1,2]})),
            Some(5),
            at(1_777_636_800_100_000),
        );
        assert_eq!(Operation::from_json(&op.to_json()).unwrap(), op);
        let op = Operation::from_json(
            r#"{"callback_id":"cb","requested_at":"1773311445.123456","max_retry":"5","attempt":"2","extra":1}"#,
        )
        .unwrap();
        assert_eq!((op.max_retry, op.attempt), (Some(5), 2));
        assert_eq!(op.requested_at.micros(), 1_773_311_445_123_456);
        assert!(op.kwargs.is_empty());
        let op =
            Operation::from_json(r#"{"callback_id":"cb","requested_at":1773311445.5}"#).unwrap();
        assert_eq!((op.max_retry, op.attempt, op.result), (None, 0, None));
        let op = Operation::from_json(
            r#"{"callback_id":"cb","requested_at":"1","kwargs":{},"max_retry":"0"}"#,
        )
        .unwrap();
        assert_eq!(op.max_retry, Some(0));
    }

    #[test]
    fn s7_1_row12_rejects_bad_operations() {
        for bad in [
            r#"{"callback_id":"cb","requested_at":"1""#,
            r#"{"callback_id":"cb","requested_at":"bad-ts"}"#,
            r#"{"callback_id":"cb","requested_at":"1","kwargs":"{}"}"#,
            r#"{"requested_at":"1"}"#,
            r#"{"callback_id":"cb","requested_at":"1","kwargs":"[]"}"#,
            r#"{"callback_id":"cb","requested_at":""}"#,
            r#"{"callback_id":"cb","requested_at":"1","result":"something"}"#,
            r#"{"callback_id":"  ","requested_at":"1"}"#,
            r#"{"callback_id":"cb","requested_at":"1","max_retry":-1}"#,
            r#"{"callback_id":"cb","requested_at":"1","attempt":-2}"#,
        ] {
            assert!(Operation::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outcome_mapping_matches_string_enum_semantics() {
        use OperationResult::*;
        assert_eq!(
            OperationResult::from_returned(Some("retry-hold")),
            RetryHold
        );
        assert_eq!(
            OperationResult::from_returned(Some("retry-release")),
            RetryRelease
        );
        assert_eq!(OperationResult::from_returned(Some("release")), Release);
        assert_eq!(OperationResult::from_returned(Some("bogus")), Release);
        assert_eq!(OperationResult::from_returned(None), Release);
    }
}
