//! The etcd copy of an operation after a run (spec/etcd.md §6.4 step 5): unlike the peer
//! copy it counts every run in `attempt` and records the outcome in `result`.

use crate::op::{Operation, OperationResult};

/// The op as finalized after a run that returned `result`: `attempt` + 1; a retry within
/// budget keeps its kind, a retry past `max_retry` becomes `release` (the op is dropped).
pub fn finalize(op: &Operation, result: OperationResult) -> Operation {
    let mut done = op.clone();
    let exhausted = op.retries_exhausted_after_increment();
    done.attempt += 1;
    done.result = Some(if exhausted {
        OperationResult::Release
    } else {
        result
    });
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;
    use OperationResult::*;

    fn op(max_retry: Option<u64>, attempt: u64) -> Operation {
        let mut op = Operation::new(
            "cb",
            Default::default(),
            max_retry,
            Timestamp::from_micros(0),
        );
        op.attempt = attempt;
        op
    }

    fn outcome(op: &Operation) -> (u64, Option<OperationResult>) {
        (op.attempt, op.result)
    }

    #[test]
    fn s7_1_rows_14_to_20() {
        assert_eq!(
            outcome(&finalize(&op(None, 0), Release)),
            (1, Some(Release))
        );
        assert_eq!(
            outcome(&finalize(&op(Some(3), 0), RetryHold)),
            (1, Some(RetryHold))
        );
        assert_eq!(
            outcome(&finalize(&op(Some(0), 0), RetryHold)),
            (1, Some(Release))
        );
        assert_eq!(
            outcome(&finalize(&op(Some(3), 0), RetryRelease)),
            (1, Some(RetryRelease))
        );
        assert_eq!(
            outcome(&finalize(&op(Some(0), 0), RetryRelease)),
            (1, Some(Release))
        );
        assert_eq!(
            outcome(&finalize(&op(None, 5), RetryHold)),
            (6, Some(RetryHold))
        );
        assert_eq!(
            outcome(&finalize(&op(None, 5), RetryRelease)),
            (6, Some(RetryRelease))
        );
    }

    #[test]
    fn s12_retry_release_vector() {
        let op = Operation::from_json(
            r#"{"callback_id":"_restart","requested_at":"1777636800.123456","max_retry":2,"attempt":0,"result":null,"kwargs":{"a":"x y","n":null,"z":1}}"#,
        )
        .unwrap();
        let done = finalize(&op, RetryRelease);
        assert!(
            done.to_json()
                .contains(r#""max_retry":2,"attempt":1,"result":"retry-release""#)
        );
    }
}
