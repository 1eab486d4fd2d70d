//! Reading etcdctl (spec/etcd.md §4.2, §4.3): which failures are worth retrying, and the
//! outputs of `get`, `txn` and `lease grant`.

use crate::op::{DecodeError, Operation};

/// How an etcdctl failure should be treated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Transient (timeout, connection trouble, leader change): try again.
    Retryable(String),
    /// Anything else (TLS, auth, permission, unknown flag, lease not found).
    Fatal(String),
}

const RETRYABLE: &[&str] = &[
    "connection refused",
    "context deadline exceeded",
    "deadline exceeded",
    "temporarily unavailable",
    "transport is closing",
    "connection reset",
    "broken pipe",
    "unavailable",
    "leader changed",
    "etcdserver: request timed out",
];

/// Classify a finished invocation; `None` when it succeeded.
pub fn classify(code: i32, stderr: &str, timed_out: bool) -> Option<Failure> {
    if timed_out {
        return Some(Failure::Retryable("etcdctl timed out".into()));
    }
    if code == 0 {
        return None;
    }
    let lowered = stderr.to_lowercase();
    let message = format!("etcdctl failed with exit code {code}: {}", stderr.trim());
    if RETRYABLE.iter().any(|marker| lowered.contains(marker)) {
        Some(Failure::Retryable(message))
    } else {
        Some(Failure::Fatal(message))
    }
}

/// Why etcdctl output could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

/// `txn` output: `SUCCESS` → true, `FAILURE` → false.
pub fn parse_txn(stdout: &str) -> Result<bool, ParseError> {
    match stdout.lines().next().map(str::trim) {
        Some("SUCCESS") => Ok(true),
        Some("FAILURE") => Ok(false),
        None | Some("") => Err(ParseError("Empty txn response".into())),
        Some(other) => Err(ParseError(format!("Unexpected txn response: {other}"))),
    }
}

/// `lease grant` output: the lease id (hexadecimal), kept verbatim.
pub fn parse_lease_grant(stdout: &str) -> Result<String, ParseError> {
    let tokens: Vec<&str> = stdout.split_whitespace().collect();
    match tokens.as_slice() {
        ["lease", id, "granted", ..] if u64::from_str_radix(id, 16).is_ok() => Ok(id.to_string()),
        _ => Err(ParseError(format!(
            "Unexpected lease grant output: {}",
            stdout.trim()
        ))),
    }
}

/// `get <prefix> --prefix --limit=1` output: the first key and its operation.
pub fn parse_first_op(stdout: &str) -> Result<Option<(String, Operation)>, ParseError> {
    let mut lines = stdout.lines();
    let (Some(key), Some(value)) = (lines.next(), lines.next()) else {
        return Ok(None);
    };
    let op = Operation::from_json(value)
        .map_err(|DecodeError(why)| ParseError(format!("{key}: {why}")))?;
    Ok(Some((key.to_string(), op)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s4_2_retry_classification() {
        assert_eq!(classify(0, "", false), None);
        assert!(matches!(
            classify(-1, "", true),
            Some(Failure::Retryable(_))
        ));
        assert!(matches!(
            classify(1, "Error: context deadline exceeded", false),
            Some(Failure::Retryable(_))
        ));
        assert!(matches!(
            classify(1, "rpc error: code = Unavailable", false),
            Some(Failure::Retryable(_))
        ));
        assert!(matches!(
            classify(1, "Error: etcdserver: requested lease not found", false),
            Some(Failure::Fatal(_))
        ));
        assert!(matches!(
            classify(1, "Error: unknown flag: --bogus", false),
            Some(Failure::Fatal(_))
        ));
    }

    #[test]
    fn s12_lease_grant_and_txn_outputs() {
        assert_eq!(
            parse_lease_grant("lease 694d9c9aeca3422a granted with TTL(60s)\n").unwrap(),
            "694d9c9aeca3422a"
        );
        assert!(parse_lease_grant("lease zz granted with TTL(60s)").is_err());
        assert_eq!(parse_txn("SUCCESS\n\nOK\n"), Ok(true));
        assert_eq!(parse_txn("FAILURE\n"), Ok(false));
        assert!(parse_txn("").is_err());
        assert!(parse_txn("WHAT").is_err());
    }

    #[test]
    fn s4_3_first_op_of_a_queue() {
        let op = r#"{"callback_id":"_restart","requested_at":"1777636800.123456","max_retry":2,"attempt":0,"result":null,"kwargs":{"a":"x y"}}"#;
        let out = format!("/rollingops/default/c/o/pending/1777636800.123456-_restart\n{op}\n");
        let (key, parsed) = parse_first_op(&out).unwrap().unwrap();
        assert!(key.ends_with("/pending/1777636800.123456-_restart"));
        assert_eq!(parsed.to_json(), op);
        assert_eq!(parse_first_op("").unwrap(), None);
        assert!(parse_first_op("/k\nnot json\n").is_err());
    }
}
