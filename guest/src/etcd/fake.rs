//! A small in-memory etcd that answers the etcdctl invocations the worker makes, in
//! etcdctl's output format, with leases that expire on a virtual clock. Test-only.

use std::collections::BTreeMap;

use super::worker::{Call, Output};

#[derive(Default)]
pub(crate) struct FakeEtcd {
    pub(crate) kv: BTreeMap<String, (String, Option<u64>)>,
    leases: BTreeMap<u64, u64>,
    next_lease: u64,
    pub(crate) now_ms: u64,
    pub(crate) unavailable: bool,
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
        self.kv.retain(|_, (_, lease)| *lease != Some(id));
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(|(v, _)| v.as_str())
    }

    pub(crate) fn put(&mut self, key: &str, value: &str) {
        self.kv.insert(key.into(), (value.into(), None));
    }

    pub(crate) fn first(&self, prefix: &str) -> Option<(String, String)> {
        self.kv
            .range(prefix.to_string()..)
            .next()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
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
            Call::Txn(body) => self.txn(body),
        }
    }

    fn txn(&mut self, body: &str) -> Output {
        let mut sections = body.split("\n\n");
        let compares = sections.next().unwrap_or("");
        let success = sections.next().unwrap_or("");
        let holds = compares
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|line| {
                let t = tokens(line.trim());
                // version("k") = "0"  →  ["version(", ...] is awkward; parse by hand:
                let (kind, rest) = line.trim().split_once('(').unwrap();
                let key = tokens(rest.split_once(')').unwrap().0)[0].clone();
                let after = rest.split_once(')').unwrap().1;
                let t2 = tokens(after);
                let _ = t;
                let (op, expected) = (t2[0].as_str(), t2[1].as_str());
                let actual = match kind {
                    "version" => {
                        if self.kv.contains_key(&key) {
                            "1".to_string()
                        } else {
                            "0".to_string()
                        }
                    }
                    "value" => self.get(&key).unwrap_or("").to_string(),
                    other => panic!("compare {other}"),
                };
                match op {
                    "=" => actual == expected,
                    "!=" => actual != expected,
                    other => panic!("op {other}"),
                }
            });
        if !holds {
            return ok("FAILURE\n".into());
        }
        for line in success.lines().filter(|l| !l.trim().is_empty()) {
            let t = tokens(line.trim());
            match t[0].as_str() {
                "put" => {
                    let lease = t
                        .get(3)
                        .and_then(|f| f.strip_prefix("--lease="))
                        .map(|h| u64::from_str_radix(h, 16).unwrap());
                    if lease.is_some_and(|id| !self.leases.contains_key(&id)) {
                        return err("Error: etcdserver: requested lease not found");
                    }
                    self.kv.insert(t[1].clone(), (t[2].clone(), lease));
                }
                "del" => {
                    self.kv.remove(&t[1]);
                }
                other => panic!("txn op {other}"),
            }
        }
        ok("SUCCESS\n\nOK\n".into())
    }
}
