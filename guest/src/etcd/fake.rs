//! A small in-memory etcd that answers the etcdctl invocations the worker makes, in
//! etcdctl's output formats (simple and `-w json`), with revisions, a watchable history of
//! changes, and leases that expire on a virtual clock. Test-only.

use std::collections::BTreeMap;

use super::worker::{Call, Output};

/// A key's value and lease.
type Entry = (String, Option<u64>);

#[derive(Default)]
pub(crate) struct FakeEtcd {
    pub(crate) kv: BTreeMap<String, (String, Option<u64>)>,
    leases: BTreeMap<u64, u64>,
    next_lease: u64,
    pub(crate) now_ms: u64,
    pub(crate) unavailable: bool,
    /// The store revision (bumped once per write, as etcd does per transaction).
    pub(crate) revision: u64,
    /// Every change: (revision, key, value and lease after it; none for a deletion).
    history: Vec<(u64, String, Option<Entry>)>,
    /// Each live key's create revision.
    created: BTreeMap<String, u64>,
    /// Each live key's last change.
    modified: BTreeMap<String, u64>,
}

fn ok(stdout: String) -> Output {
    Output {
        code: 0,
        stdout,
        stderr: String::new(),
        timed_out: false,
    }
}

fn err(stderr: &str) -> Output {
    Output {
        code: 1,
        stdout: String::new(),
        stderr: stderr.into(),
        timed_out: false,
    }
}

/// Split a txn line into tokens, unquoting Go-quoted strings.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut text = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some('r') => text.push('\r'),
                        Some('x') => {
                            let hex: String = chars.by_ref().take(2).collect();
                            text.push(u8::from_str_radix(&hex, 16).unwrap() as char);
                        }
                        Some(other) => text.push(other),
                        None => {}
                    },
                    c => text.push(c),
                }
            }
            out.push(text);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    out
}

impl FakeEtcd {
    pub(crate) fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, until)| **until <= self.now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: u64) {
        self.leases.remove(&id);
        let doomed: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, (_, lease))| *lease == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        if !doomed.is_empty() {
            self.revision += 1;
        }
        for key in doomed {
            self.write(&key, None);
        }
    }

    /// A live key's last change.
    pub(crate) fn mod_revision(&self, key: &str) -> Option<u64> {
        self.modified.get(key).copied()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(|(v, _)| v.as_str())
    }

    pub(crate) fn put(&mut self, key: &str, value: &str) {
        self.revision += 1;
        self.write(key, Some((value.into(), None)));
    }

    pub(crate) fn delete(&mut self, key: &str) {
        if self.kv.contains_key(key) {
            self.revision += 1;
            self.write(key, None);
        }
    }

    /// Apply one change at the current revision.
    fn write(&mut self, key: &str, value: Option<(String, Option<u64>)>) {
        self.history
            .push((self.revision, key.to_string(), value.clone()));
        match value {
            Some(value) => {
                self.created.entry(key.into()).or_insert(self.revision);
                self.modified.insert(key.into(), self.revision);
                self.kv.insert(key.into(), value);
            }
            None => {
                self.created.remove(key);
                self.modified.remove(key);
                self.kv.remove(key);
            }
        }
    }

    fn kv_json(
        &self,
        key: &str,
        value: &str,
        lease: Option<u64>,
        mod_revision: u64,
    ) -> serde_json::Value {
        let mut kv = serde_json::json!({
            "key": base64(key),
            "value": base64(value),
            "create_revision": self.created.get(key).copied().unwrap_or(0),
            "mod_revision": mod_revision,
        });
        if let Some(lease) = lease {
            kv["lease"] = lease.into();
        }
        kv
    }

    /// What `etcdctl get <prefix> --prefix -w json` prints.
    pub(crate) fn range_json(&self, prefix: &str) -> Output {
        if self.unavailable {
            return err("Error: context deadline exceeded");
        }
        let kvs: Vec<serde_json::Value> = self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, lease))| self.kv_json(k, v, *lease, self.modified[k]))
            .collect();
        let mut reply = serde_json::json!({"header": {"revision": self.revision}});
        if !kvs.is_empty() {
            reply["count"] = kvs.len().into();
            reply["kvs"] = kvs.into();
        }
        ok(format!("{reply}\n"))
    }

    pub(crate) fn first(&self, prefix: &str) -> Option<(String, String)> {
        self.kv
            .range(prefix.to_string()..)
            .next()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
    }

    /// What `etcdctl -w json watch <key> --rev=<from>` prints first, if an event is in the
    /// history.
    pub(crate) fn watch_event(&self, key: &str, from_revision: u64) -> Option<Output> {
        self.history
            .iter()
            .find(|(rev, k, _)| *rev >= from_revision && k == key)
            .map(|(rev, k, after)| {
                let event = match after {
                    None => {
                        serde_json::json!({"type": 1, "kv": {"key": base64(k), "mod_revision": rev}})
                    }
                    Some((value, lease)) => {
                        serde_json::json!({"kv": self.kv_json(k, value, *lease, *rev)})
                    }
                };
                let reply = serde_json::json!({"Header": {"revision": rev}, "Events": [event]});
                ok(format!("{reply}\n"))
            })
    }

    pub(crate) fn run(&mut self, call: &Call) -> Output {
        if self.unavailable {
            return err("Error: context deadline exceeded");
        }
        match call {
            Call::First(prefix) => ok(self
                .first(prefix)
                .map(|(k, v)| format!("{k}\n{v}\n"))
                .unwrap_or_default()),
            Call::Value(key) => ok(self.get(key).map(|v| format!("{v}\n")).unwrap_or_default()),
            Call::Range(prefix) => self.range_json(prefix),
            Call::LeaseGrant(ttl) => {
                self.next_lease += 1;
                let id = 0x694d_9c9a_eca3_4200 + self.next_lease;
                self.leases.insert(id, self.now_ms + u64::from(*ttl) * 1000);
                ok(format!("lease {id:x} granted with TTL({ttl}s)\n"))
            }
            Call::KeepAlive(id) => {
                let id = u64::from_str_radix(id, 16).unwrap();
                match self.leases.get_mut(&id) {
                    Some(until) => {
                        *until = self.now_ms + 60_000;
                        ok(format!("lease {id:x} keepalived with TTL(60)\n"))
                    }
                    None => err("Error: etcdserver: requested lease not found"),
                }
            }
            Call::LeaseRevoke(id) => {
                let id = u64::from_str_radix(id, 16).unwrap();
                if self.leases.contains_key(&id) {
                    self.revoke(id);
                    ok(format!("lease {id:x} revoked\n"))
                } else {
                    err("Error: etcdserver: requested lease not found")
                }
            }
            Call::Txn(body) => match self.txn(body) {
                Ok((true, _)) => ok("SUCCESS\n\nOK\n".into()),
                Ok((false, _)) => ok("FAILURE\n".into()),
                Err(output) => output,
            },
            Call::TxnJson(body) => match self.txn(body) {
                Ok((succeeded, responses)) => ok(self.txn_json(succeeded, &responses)),
                Err(output) => output,
            },
            // A watch with nothing to report blocks; the caller models the wait.
            Call::Watch { key, from_revision } => {
                self.watch_event(key, *from_revision).unwrap_or(Output {
                    code: -1,
                    stdout: String::new(),
                    stderr: String::new(),
                    timed_out: true,
                })
            }
        }
    }

    fn txn_json(&self, succeeded: bool, responses: &[Option<Vec<(String, String)>>]) -> String {
        let responses: Vec<serde_json::Value> = responses
            .iter()
            .map(|response| match response {
                Some(kvs) => {
                    let kvs: Vec<serde_json::Value> = kvs
                        .iter()
                        .map(|(k, v)| {
                            let lease = self.kv.get(k).and_then(|(_, lease)| *lease);
                            let modified = self.modified.get(k).copied().unwrap_or(0);
                            self.kv_json(k, v, lease, modified)
                        })
                        .collect();
                    serde_json::json!({"Response": {"ResponseRange": {"kvs": kvs}}})
                }
                None => serde_json::json!({"Response": {"ResponsePut": {}}}),
            })
            .collect();
        let mut reply = serde_json::json!({"header": {"revision": self.revision}});
        // Like Go's encoder: false and empty are left out.
        if succeeded {
            reply["succeeded"] = true.into();
        }
        if !responses.is_empty() {
            reply["responses"] = responses.into();
        }
        reply.to_string()
    }

    /// Run a transaction: whether the compares held, and per request of the branch taken
    /// its key/value pairs (`None` for writes).
    #[allow(clippy::type_complexity)]
    fn txn(&mut self, body: &str) -> Result<(bool, Vec<Option<Vec<(String, String)>>>), Output> {
        // Sections end at blank lines: compares, success ops, failure ops.
        let mut sections: [Vec<&str>; 3] = Default::default();
        let mut index = 0;
        for line in body.lines() {
            if line.trim().is_empty() {
                index += 1;
                if index > 2 {
                    break;
                }
            } else {
                sections[index].push(line.trim());
            }
        }
        let holds = sections[0].iter().all(|line| {
            let (kind, rest) = line.split_once('(').unwrap();
            let (quoted_key, after) = rest.split_once(')').unwrap();
            let key = tokens(quoted_key)[0].clone();
            let t = tokens(after);
            let (op, expected) = (t[0].as_str(), t[1].as_str());
            let actual = match kind {
                "version" => if self.kv.contains_key(&key) { "1" } else { "0" }.to_string(),
                "value" => self.get(&key).unwrap_or("").to_string(),
                other => panic!("compare {other}"),
            };
            match op {
                "=" => actual == expected,
                "!=" => actual != expected,
                other => panic!("op {other}"),
            }
        });
        let ops = if holds { &sections[1] } else { &sections[2] };
        let mut writes = Vec::new();
        let mut responses = Vec::new();
        for line in ops {
            let t = tokens(line);
            match t[0].as_str() {
                "put" => {
                    let lease = t
                        .get(3)
                        .and_then(|f| f.strip_prefix("--lease="))
                        .map(|h| u64::from_str_radix(h, 16).unwrap());
                    if lease.is_some_and(|id| !self.leases.contains_key(&id)) {
                        return Err(err("Error: etcdserver: requested lease not found"));
                    }
                    writes.push((t[1].clone(), Some((t[2].clone(), lease))));
                    responses.push(None);
                }
                "del" => {
                    writes.push((t[1].clone(), None));
                    responses.push(None);
                }
                "get" => {
                    let found: Vec<(String, String)> = if t.iter().any(|f| f == "--limit=1") {
                        self.first(&t[1]).into_iter().collect()
                    } else if t.iter().any(|f| f == "--prefix") {
                        self.kv
                            .range(t[1].clone()..)
                            .take_while(|(k, _)| k.starts_with(&t[1]))
                            .map(|(k, (v, _))| (k.clone(), v.clone()))
                            .collect()
                    } else {
                        self.get(&t[1])
                            .map(|v| (t[1].clone(), v.to_string()))
                            .into_iter()
                            .collect()
                    };
                    responses.push(Some(found));
                }
                other => panic!("txn op {other}"),
            }
        }
        if !writes.is_empty() {
            self.revision += 1;
        }
        for (key, value) in writes {
            if value.is_some() || self.kv.contains_key(&key) {
                self.write(&key, value);
            }
        }
        Ok((holds, responses))
    }
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
