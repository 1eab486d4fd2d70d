//! etcdctl transaction bodies (spec/etcd.md §4.4). Every key and value is quoted with Go's
//! `%q` rules, which etcdctl's txn reader unquotes; the reference left op JSON unquoted, so
//! any value containing a space was truncated (§11 item 3).

/// A value quoted as Go's `strconv.Quote` would, for etcdctl's txn argument reader.
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn body(compares: &[String], success: &[String]) -> String {
    body_with_failure(compares, success, &[])
}

fn body_with_failure(compares: &[String], success: &[String], failure: &[String]) -> String {
    // compares, blank line, success ops, blank line, failure ops, blank line.
    let mut out = String::new();
    for section in [compares, success, failure] {
        for line in section {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn owns(lock: &str, owner: &str) -> String {
    format!("value({}) = {}", go_quote(lock), go_quote(owner))
}

fn exists(key: &str) -> String {
    format!("version({}) != \"0\"", go_quote(key))
}

fn del(key: &str) -> String {
    format!("del {}", go_quote(key))
}

fn put(key: &str, value: &str) -> String {
    format!("put {} {}", go_quote(key), go_quote(value))
}

fn put_leased(key: &str, value: &str, lease_hex: &str) -> String {
    format!(
        "put {} {} --lease={lease_hex}",
        go_quote(key),
        go_quote(value)
    )
}

/// T1: take the lock if nobody holds it, bound to `lease_hex`.
pub fn acquire(lock: &str, owner: &str, lease_hex: &str) -> String {
    body(
        &[format!("version({}) = \"0\"", go_quote(lock))],
        &[format!(
            "put {} {} --lease={lease_hex}",
            go_quote(lock),
            go_quote(owner)
        )],
    )
}

/// T2: release the lock if `owner` holds it.
pub fn release(lock: &str, owner: &str) -> String {
    body(
        &[format!("value({}) = {}", go_quote(lock), go_quote(owner))],
        &[format!("del {}", go_quote(lock))],
    )
}

/// T3/T4: move `from_key` to `to_key` with `value`, only while `owner` holds the lock and
/// the source exists.
pub fn move_op(lock: &str, owner: &str, from_key: &str, to_key: &str, value: &str) -> String {
    body(
        &[
            format!("value({}) = {}", go_quote(lock), go_quote(owner)),
            format!("version({}) != \"0\"", go_quote(from_key)),
        ],
        &[
            format!("put {} {}", go_quote(to_key), go_quote(value)),
            format!("del {}", go_quote(from_key)),
        ],
    )
}

/// T5: drop `key` while `owner` holds the lock and the key exists.
pub fn drop_op(lock: &str, owner: &str, key: &str) -> String {
    body(
        &[
            format!("value({}) = {}", go_quote(lock), go_quote(owner)),
            format!("version({}) != \"0\"", go_quote(key)),
        ],
        &[format!("del {}", go_quote(key))],
    )
}

// Composite transactions. Each one applies, atomically, exactly the writes of a sequence of
// the reference's transactions above (same keys, same values, same lease), so units running
// the reference see the same states; only the number of round trips differs.

/// T1, reading the lock key when it is held (so the caller can tell whose it is).
pub fn acquire_or_read(lock: &str, owner: &str, lease_hex: &str) -> String {
    body_with_failure(
        &[format!("version({}) = \"0\"", go_quote(lock))],
        &[format!(
            "put {} {} --lease={lease_hex}",
            go_quote(lock),
            go_quote(owner)
        )],
        &[format!("get {}", go_quote(lock))],
    )
}

/// T1 followed by T3 pending→inprogress: take the free lock and claim `from_key` in one
/// round trip. On failure the lock key is read (`get`), so the caller can tell "held by
/// someone" (watch it) from "free but the op is gone" (look at the queue again), and the
/// caller is registered as a waiter (`waiting`: its registration key and value, bound to
/// its lease), so that the holder can hand the lock over; success removes the registration.
pub fn acquire_and_claim(
    lock: &str,
    owner: &str,
    lease_hex: &str,
    from_key: &str,
    to_key: &str,
    value: &str,
    waiting: (&str, &str),
) -> String {
    body_with_failure(
        &[
            format!("version({}) = \"0\"", go_quote(lock)),
            exists(from_key),
        ],
        &[
            put_leased(lock, owner, lease_hex),
            put(to_key, value),
            del(from_key),
            del(waiting.0),
        ],
        &[
            format!("get {}", go_quote(lock)),
            put_leased(waiting.0, waiting.1, lease_hex),
        ],
    )
}

/// T1 for the sync lock, registering as a waiter when the lock is held (see
/// [`acquire_and_claim`]).
pub fn acquire_or_register(
    lock: &str,
    owner: &str,
    lease_hex: &str,
    waiting: (&str, &str),
) -> String {
    body_with_failure(
        &[format!("version({}) = \"0\"", go_quote(lock))],
        &[put_leased(lock, owner, lease_hex), del(waiting.0)],
        &[
            format!("get {}", go_quote(lock)),
            put_leased(waiting.0, waiting.1, lease_hex),
        ],
    )
}

/// What the releasing hook does with its own op while it hands the lock over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnOp<'a> {
    /// Drop it (`release`).
    Drop,
    /// Put it back at the head of `pending` (`retry-release`): key and value.
    Requeue(&'a str, &'a str),
}

/// The lock-granted hook's finalize that hands the lock straight to a registered waiter,
/// all in one transaction: this owner's op dropped or requeued (as [`drop_and_release`] /
/// [`requeue_and_release`]), the waiter's registration removed, its pending op moved to
/// `inprogress` (T3, as its own claim would), and the lock key put to the waiter's owner
/// under the waiter's lease (T1 as the waiter would). Guarded by this owner holding the lock
/// and by the registration and the waiter's pending op being exactly as read (a waiter
/// that left, or whose lease lapsed, fails the compare); on failure nothing changes and the
/// caller releases plainly.
pub fn hand_over(lock: &str, owner: &str, key: &str, own: OwnOp<'_>, to: &Successor) -> String {
    let mut compares = vec![
        owns(lock, owner),
        exists(key),
        format!(
            "value({}) = {}",
            go_quote(&to.entry),
            go_quote(&to.registration)
        ),
    ];
    let mut ops = match own {
        OwnOp::Drop => vec![del(key)],
        OwnOp::Requeue(back, value) => vec![put(back, value), del(key)],
    };
    ops.push(del(&to.entry));
    if let Some((from, into, value)) = &to.op {
        compares.push(format!("value({}) = {}", go_quote(from), go_quote(value)));
        ops.push(put(into, value));
        ops.push(del(from));
    }
    ops.push(put_leased(lock, &to.owner, &to.lease));
    body(&compares, &ops)
}

/// A registered waiter, as [`hand_over`] needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Successor {
    /// Its registration key and the registration's exact value.
    pub entry: String,
    /// The registration's value, compared verbatim.
    pub registration: String,
    /// The owner the lock key will name.
    pub owner: String,
    /// Its lease (hexadecimal).
    pub lease: String,
    /// Its pending op to claim for it: (pending key, in-progress key, op JSON); none for a
    /// sync-lock waiter.
    pub op: Option<(String, String, String)>,
}

/// The lock-granted hook's finalize when the op is done (`release`): T4 + T5 + T2, i.e. the
/// in-progress op is dropped and the lock released together, so the next unit can start
/// without waiting for this unit's worker.
pub fn drop_and_release(lock: &str, owner: &str, key: &str) -> String {
    body(&[owns(lock, owner), exists(key)], &[del(key), del(lock)])
}

/// The lock-granted hook's finalize for `retry-release`: T4 + T3 completed→pending + T2,
/// i.e. the op goes back to the head of `pending` with its new attempt count and the lock
/// is released together.
pub fn requeue_and_release(
    lock: &str,
    owner: &str,
    from_key: &str,
    to_key: &str,
    value: &str,
) -> String {
    body(
        &[owns(lock, owner), exists(from_key)],
        &[put(to_key, value), del(from_key), del(lock)],
    )
}

/// One read of everything the lock-granted hook needs: the lock's holder and the heads of
/// this owner's `inprogress`, `pending` and `completed` queues, and the waiters'
/// registrations (run with `-w json`).
pub fn read_turn(
    lock: &str,
    inprogress: &str,
    pending: &str,
    completed: &str,
    waiting: &str,
) -> String {
    body(
        &[],
        &[
            format!("get {}", go_quote(lock)),
            format!("get {} --prefix --limit=1", go_quote(inprogress)),
            format!("get {} --prefix --limit=1", go_quote(pending)),
            format!("get {} --prefix --limit=1", go_quote(completed)),
            format!("get {} --prefix", go_quote(waiting)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s12_acquire_is_the_reference_body_modulo_indentation() {
        let reference = "        version(\"/rollingops/default/c1/granted-unit/\") = \"0\"\n\n        put \"/rollingops/default/c1/granted-unit/\" \"uuid-app-0\" --lease=694d9c9aeca3422a\n\n\n        ";
        let ours = acquire(
            "/rollingops/default/c1/granted-unit/",
            "uuid-app-0",
            "694d9c9aeca3422a",
        );
        let trim = |s: &str| {
            s.lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
                .trim_end()
                .to_string()
        };
        assert_eq!(trim(&ours), trim(reference));
    }

    #[test]
    fn s11_3_values_with_spaces_and_quotes_are_quoted() {
        let value = r#"{"callback_id":"_restart","kwargs":{"a":"x y","q":"say \"hi\"\\"}}"#;
        let text = move_op("/l/", "o", "/p/k", "/i/k", value);
        let put = text.lines().find(|l| l.starts_with("put ")).unwrap();
        assert_eq!(put, format!("put \"/i/k\" {}", go_quote(value)));
        assert!(put.contains(r#"\"x y\""#));
        assert_eq!(go_quote("a\nb\u{1}é"), "\"a\\nb\\x01é\"");
    }

    #[test]
    fn bodies_have_compares_then_success_then_no_failure_ops() {
        let text = drop_op("/l/", "o", "/c/k");
        let sections: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(
            sections[0],
            "value(\"/l/\") = \"o\"\nversion(\"/c/k\") != \"0\""
        );
        assert_eq!(sections[1], "del \"/c/k\"");
        assert_eq!(
            release("/l/", "o"),
            "value(\"/l/\") = \"o\"\n\ndel \"/l/\"\n\n\n"
        );
    }
}
