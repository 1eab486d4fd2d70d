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

/// A `-w json txn` reply: whether the compares held, the store revision the transaction
/// saw (or wrote), and for each request in the branch taken the keys it read (empty for
/// puts and deletes, and for a `get` that found nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnReply {
    /// The compares held (the success branch ran).
    pub succeeded: bool,
    /// `header.revision`.
    pub revision: u64,
    /// Per request, the keys it returned.
    pub ranges: Vec<Vec<Kv>>,
}

/// One key as a `get` returned it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// The lease it is attached to, in etcdctl's hexadecimal form (empty: none).
    pub lease: String,
    /// The revision that created it (0 when not reported).
    pub create_revision: u64,
    /// The revision of its last change (0 when not reported).
    pub mod_revision: u64,
}

/// Parse `etcdctl -w json txn` output (keys and values are base64 there).
pub fn parse_txn_json(stdout: &str) -> Result<TxnReply, ParseError> {
    let bad = |why: &str| {
        ParseError(format!(
            "Unexpected txn response ({why}): {}",
            stdout.trim()
        ))
    };
    let reply: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|_| bad("not JSON"))?;
    let revision = reply["header"]["revision"]
        .as_u64()
        .ok_or_else(|| bad("no revision"))?;
    // Go's encoder omits false booleans and empty lists.
    let succeeded = reply["succeeded"].as_bool().unwrap_or(false);
    let mut ranges = Vec::new();
    for response in reply["responses"].as_array().into_iter().flatten() {
        let kvs = response["Response"]["ResponseRange"]["kvs"].as_array();
        let pairs: Result<Vec<Kv>, ParseError> = kvs
            .into_iter()
            .flatten()
            .map(|kv| parse_kv(kv, stdout))
            .collect();
        ranges.push(pairs?);
    }
    Ok(TxnReply {
        succeeded,
        revision,
        ranges,
    })
}

/// One key of a JSON reply (key and value are base64 there, the lease a decimal number).
fn parse_kv(kv: &serde_json::Value, whole: &str) -> Result<Kv, ParseError> {
    let text = |field: &str| -> Result<String, ParseError> {
        let raw = kv[field].as_str().unwrap_or("");
        let bad =
            |why: &str| ParseError(format!("Unexpected etcdctl JSON ({why}): {}", whole.trim()));
        let bytes = base64_decode(raw).ok_or_else(|| bad("bad base64"))?;
        String::from_utf8(bytes).map_err(|_| bad("not UTF-8"))
    };
    Ok(Kv {
        key: text("key")?,
        value: text("value")?,
        lease: kv["lease"]
            .as_i64()
            .filter(|id| *id != 0)
            .map(|id| format!("{:x}", id as u64))
            .unwrap_or_default(),
        create_revision: kv["create_revision"].as_u64().unwrap_or(0),
        mod_revision: kv["mod_revision"].as_u64().unwrap_or(0),
    })
}

/// Parse `etcdctl get … -w json` output: the store revision and every key returned.
pub fn parse_get_json(stdout: &str) -> Result<(u64, Vec<Kv>), ParseError> {
    let reply: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|_| ParseError(format!("Unexpected get response: {}", stdout.trim())))?;
    let revision = reply["header"]["revision"].as_u64().unwrap_or(0);
    let kvs: Result<Vec<Kv>, ParseError> = reply["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| parse_kv(kv, stdout))
        .collect();
    Ok((revision, kvs?))
}

/// One event reported by `etcdctl -w json watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// A deletion (else a put).
    pub deleted: bool,
    /// The key after the event (value and lease empty for a deletion).
    pub kv: Kv,
}

/// The events on the first line of `etcdctl -w json watch` output (one watch response per
/// line); empty when the watch ended without one.
pub fn parse_watch_events(stdout: &str) -> Vec<WatchEvent> {
    let Some(line) = stdout.lines().next() else {
        return vec![];
    };
    let Ok(reply) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
        return vec![];
    };
    reply["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| {
            Some(WatchEvent {
                // Go's encoder leaves out the zero value, PUT.
                deleted: event["type"].as_i64() == Some(1),
                kv: parse_kv(&event["kv"], line).ok()?,
            })
        })
        .collect()
}

/// Standard base64 (with padding), as Go's encoding/json writes byte slices.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let trimmed = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in trimmed.bytes() {
        acc = (acc << 6) | digit(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Two lease ids in etcdctl's hexadecimal form name the same lease.
pub fn same_lease(a: &str, b: &str) -> bool {
    let id = |hex: &str| u64::from_str_radix(hex, 16).ok();
    id(a).is_some() && id(a) == id(b)
}

/// A `-w json watch` that returned: did it report an event, or end without one?
pub fn watch_saw_event(stdout: &str) -> bool {
    !parse_watch_events(stdout).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_and_get_json_as_etcdctl_3_4_prints_them() {
        // Captured from etcdctl 3.4: a put, then a delete, of key `k`.
        let put = r#"{"Header":{"cluster_id":1,"member_id":2,"revision":2,"raft_term":2},"Events":[{"kv":{"key":"aw==","create_revision":2,"mod_revision":2,"version":1,"value":"djE=","lease":7587893136398172714}}],"CompactRevision":0,"Canceled":false,"Created":false}"#;
        let delete = r#"{"Header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":2},"Events":[{"type":1,"kv":{"key":"aw==","mod_revision":3}}],"CompactRevision":0,"Canceled":false,"Created":false}"#;
        let events = parse_watch_events(&format!("{put}\n{delete}\n"));
        assert_eq!(events.len(), 1, "the first line only");
        assert!(!events[0].deleted);
        assert_eq!(
            (events[0].kv.value.as_str(), events[0].kv.lease.as_str()),
            ("v1", "694d9c9aeca3422a")
        );
        assert_eq!(events[0].kv.mod_revision, 2);
        let events = parse_watch_events(delete);
        assert!(events[0].deleted && events[0].kv.key == "k" && events[0].kv.mod_revision == 3);
        assert!(watch_saw_event(put) && !watch_saw_event("") && !watch_saw_event("Error: x"));
        let get = r#"{"header":{"revision":7},"kvs":[{"key":"aw==","create_revision":5,"mod_revision":6,"version":2,"value":"djE="}],"count":1}"#;
        let (revision, kvs) = parse_get_json(get).unwrap();
        assert_eq!((revision, kvs.len(), kvs[0].create_revision), (7, 1, 5));
        let (_, none) = parse_get_json(r#"{"header":{"revision":7}}"#).unwrap();
        assert!(none.is_empty());
        assert!(parse_get_json("oops").is_err());
    }

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

    #[test]
    fn txn_json_replies_as_etcdctl_3_4_prints_them() {
        // Captured from etcdctl 3.4.23: a failed acquire whose failure branch read the lock.
        let failed = r#"{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":2,"raft_term":2},"responses":[{"Response":{"ResponseRange":{"header":{"revision":2},"kvs":[{"key":"L2wv","create_revision":2,"mod_revision":2,"version":1,"value":"bWU="}],"count":1}}}]}"#;
        let reply = parse_txn_json(failed).unwrap();
        assert!(!reply.succeeded);
        assert_eq!(reply.revision, 2);
        let kv = |key: &str, value: &str, lease: &str, revision: u64| Kv {
            key: key.into(),
            value: value.into(),
            lease: lease.into(),
            create_revision: revision,
            mod_revision: revision,
        };
        assert_eq!(reply.ranges, vec![vec![kv("/l/", "me", "", 2)]]);
        let leased = r#"{"header":{"revision":9},"responses":[{"Response":{"ResponseRange":{"header":{"revision":9},"kvs":[{"key":"L2wv","create_revision":9,"mod_revision":9,"version":1,"value":"bWU=","lease":7587893136398172714}],"count":1}}}]}"#;
        assert_eq!(
            parse_txn_json(leased).unwrap().ranges,
            vec![vec![kv("/l/", "me", "694d9c9aeca3422a", 9)]]
        );
        let put = r#"{"header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":2},"succeeded":true,"responses":[{"Response":{"ResponsePut":{"header":{"revision":3}}}}]}"#;
        let reply = parse_txn_json(put).unwrap();
        assert!(reply.succeeded);
        assert_eq!((reply.revision, reply.ranges), (3, vec![vec![]]));
        let reads = r#"{"header":{"revision":5},"succeeded":true,"responses":[{"Response":{"ResponseRange":{"header":{"revision":5},"kvs":[{"key":"L3AvYQ==","create_revision":4,"mod_revision":4,"version":1,"value":"eyJ4IjoxfQ=="}],"more":true,"count":2}}},{"Response":{"ResponseRange":{"header":{"revision":5}}}}]}"#;
        let reply = parse_txn_json(reads).unwrap();
        assert_eq!(
            reply.ranges,
            vec![vec![kv("/p/a", r#"{"x":1}"#, "", 4)], vec![]]
        );
        assert!(parse_txn_json("SUCCESS\n").is_err());
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
    }
}
