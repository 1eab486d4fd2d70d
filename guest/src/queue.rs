//! A unit's FIFO of operations, its de-duplication rule and how results are recorded
//! (spec/peer.md §3.2, §3.5).

use serde_json::Value;

use crate::op::{DecodeError, Operation, OperationResult};

/// The ordered operations of one unit, head first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperationQueue {
    ops: Vec<Operation>,
}

/// What happened to a request handed to [`OperationQueue::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Appended at the tail.
    Appended,
    /// Identical to the last operation that has not started yet: nothing changes.
    Duplicate,
}

/// What recording a result did to the head operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The head was removed (released, or dropped after its last allowed retry).
    Removed {
        /// True when a retry was asked for but `max_retry` was exhausted.
        exhausted: bool,
    },
    /// The head stays for another attempt.
    Retained(OperationResult),
}

impl OperationQueue {
    /// A queue holding `ops`, head first.
    pub fn from_ops(ops: Vec<Operation>) -> Self {
        OperationQueue { ops }
    }

    /// Decode the `operations` value. Absent or empty is an empty queue; anything but a
    /// JSON array of valid operations is an error.
    pub fn decode(text: Option<&str>) -> Result<Self, DecodeError> {
        let text = match text {
            None => return Ok(Self::default()),
            Some(text) if text.trim().is_empty() => return Ok(Self::default()),
            Some(text) => text,
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| DecodeError(format!("operations is not JSON: {e}")))?;
        let items = value
            .as_array()
            .ok_or_else(|| DecodeError("operations is not a JSON array".into()))?;
        let ops = items
            .iter()
            .map(Operation::from_value)
            .collect::<Result<_, _>>()?;
        Ok(OperationQueue { ops })
    }

    /// The wire form: a compact JSON array (`[]` when empty).
    pub fn encode(&self) -> String {
        let mut out = String::from("[");
        for (index, op) in self.ops.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            op.write_json(&mut out);
        }
        out.push(']');
        out
    }

    /// Number of queued operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operation that runs next.
    pub fn head(&self) -> Option<&Operation> {
        self.ops.first()
    }

    /// All operations, head first.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// Append `op` unless it repeats the last operation that has not started yet.
    ///
    /// `head_started` says whether the head is in flight (has run before). The reference
    /// compares with the tail even when the tail is that in-flight head, which loses the
    /// newer request when the head later exhausts its retries (spec/peer.md §8 W10); here
    /// a started head is never a de-duplication partner.
    pub fn enqueue(&mut self, op: Operation, head_started: bool) -> Enqueued {
        let partner = match self.ops.len() {
            0 => None,
            1 if head_started => None,
            _ => self.ops.last(),
        };
        if partner.is_some_and(|tail| tail.same_request(&op)) {
            return Enqueued::Duplicate;
        }
        self.ops.push(op);
        Enqueued::Appended
    }

    /// Apply the head's outcome (spec/peer.md §3.5). Retries count in `attempt`; a retry
    /// beyond `max_retry` drops the operation. `None` when the queue is empty.
    pub fn record(&mut self, result: OperationResult) -> Option<Recorded> {
        let head = self.ops.first_mut()?;
        if result == OperationResult::Release {
            self.ops.remove(0);
            return Some(Recorded::Removed { exhausted: false });
        }
        let exhausted = head.retries_exhausted_after_increment();
        head.attempt += 1;
        if exhausted {
            self.ops.remove(0);
            Some(Recorded::Removed { exhausted: true })
        } else {
            Some(Recorded::Retained(result))
        }
    }

    /// Drop the head unconditionally (unknown callback id).
    pub fn drop_head(&mut self) -> Option<Operation> {
        if self.ops.is_empty() {
            None
        } else {
            Some(self.ops.remove(0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;
    use serde_json::{Map, json};

    fn op(id: &str, kwargs: Value, micros: i64) -> Operation {
        Operation::new(
            id,
            kwargs.as_object().unwrap().clone(),
            None,
            Timestamp::from_micros(micros),
        )
    }

    #[test]
    fn s7_1_rows21_25_empty_queue() {
        let queue = OperationQueue::decode(None).unwrap();
        assert!(queue.is_empty() && queue.head().is_none());
        assert_eq!(queue.encode(), "[]");
        assert_eq!(
            OperationQueue::decode(Some("")).unwrap(),
            OperationQueue::default()
        );
    }

    #[test]
    fn s7_1_row22_fifo() {
        let mut queue = OperationQueue::default();
        queue.enqueue(op("a", json!({}), 1), false);
        queue.enqueue(op("b", json!({}), 2), false);
        assert_eq!(queue.head().unwrap().callback_id, "a");
        assert_eq!(queue.drop_head().unwrap().callback_id, "a");
        assert_eq!(queue.drop_head().unwrap().callback_id, "b");
        assert!(queue.drop_head().is_none());
    }

    #[test]
    fn s7_1_row23_dedup_only_against_tail() {
        let mut queue = OperationQueue::default();
        assert_eq!(
            queue.enqueue(op("A", json!({"x":2}), 1), false),
            Enqueued::Appended
        );
        assert_eq!(
            queue.enqueue(op("A", json!({"x":2}), 2), false),
            Enqueued::Duplicate
        );
        assert_eq!(queue.len(), 1);
        queue.enqueue(op("A", json!({"x":4}), 3), false);
        assert_eq!(queue.len(), 2);
        queue.enqueue(op("A", json!({"x":2}), 4), false);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn w10_started_head_is_not_a_dedup_partner() {
        let mut queue = OperationQueue::default();
        queue.enqueue(op("A", json!({}), 1), false);
        queue.record(OperationResult::RetryRelease);
        assert_eq!(
            queue.enqueue(op("A", json!({}), 2), true),
            Enqueued::Appended
        );
        assert_eq!(queue.len(), 2);
        assert_eq!(
            queue.enqueue(op("A", json!({}), 3), true),
            Enqueued::Duplicate
        );
    }

    #[test]
    fn s7_1_row24_queue_wire_round_trip() {
        let mut queue = OperationQueue::default();
        queue.enqueue(op("cb", json!({"b":2,"a":1}), 1_771_848_000_123_456), false);
        queue.enqueue(op("cb2", json!({}), 1_771_588_800_123_456), false);
        let text = queue.encode();
        assert_eq!(
            text,
            r#"[{"callback_id":"cb","requested_at":"1771848000.123456","max_retry":null,"attempt":0,"result":null,"kwargs":{"a":1,"b":2}},{"callback_id":"cb2","requested_at":"1771588800.123456","max_retry":null,"attempt":0,"result":null,"kwargs":{}}]"#
        );
        assert_eq!(OperationQueue::decode(Some(&text)).unwrap(), queue);
    }

    #[test]
    fn s7_1_row26_rejects_non_arrays() {
        for bad in [
            r#"{"not":"a list"}"#,
            "{invalid",
            "null",
            r#"[{"callback_id":"x"}]"#,
        ] {
            assert!(OperationQueue::decode(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_5_recording_results() {
        let mut queue = OperationQueue::default();
        let mut held = op("h", json!({}), 1);
        held.max_retry = Some(1);
        queue.enqueue(held, false);
        assert_eq!(
            queue.record(OperationResult::RetryHold),
            Some(Recorded::Retained(OperationResult::RetryHold))
        );
        assert_eq!(queue.head().unwrap().attempt, 1);
        assert_eq!(
            queue.record(OperationResult::RetryHold),
            Some(Recorded::Removed { exhausted: true })
        );
        assert!(queue.is_empty());
        assert_eq!(queue.record(OperationResult::Release), None);
        let mut once = op("o", json!({}), 1);
        once.max_retry = Some(0);
        queue.enqueue(once, false);
        assert_eq!(
            queue.record(OperationResult::RetryRelease),
            Some(Recorded::Removed { exhausted: true })
        );
        queue.enqueue(op("r", json!({}), 1), false);
        assert_eq!(
            queue.record(OperationResult::Release),
            Some(Recorded::Removed { exhausted: false })
        );
        let _ = Map::<String, Value>::new();
    }
}
