//! etcdctl invocations started ahead of need: the process start-up and the TLS connection
//! (`etcdctl txn` connects before it reads its body) happen while nothing waits on them, so
//! the call itself costs about one round trip. Used where a hand-off waits on the call: the
//! worker's lock transaction after a watch, the hook's finalize after the callback. Also
//! holds the `lease keep-alive` a hook runs while its callback does, and the worker's
//! `watch` kept running between events, so that all of them end with their owner.

use super::Effects;
use crate::error::Error;
use crate::etcd::etcdctl;
use crate::etcd::worker::{Call, Output};

/// An invocation: etcdctl's arguments and environment.
type Invocation = (Vec<String>, Vec<(String, String)>);

/// Started processes waiting for their stdin, by invocation, and the watch kept running.
#[derive(Debug, Default)]
pub struct Prepared {
    waiting: Vec<(Invocation, u32)>,
    /// Processes that run until [`Prepared::stop_all`].
    running: Vec<u32>,
    stream: Option<WatchStream>,
}

/// A `watch` kept running: its key, the revision it started from, its handle.
#[derive(Debug)]
struct WatchStream {
    key: String,
    from_revision: u64,
    handle: u32,
}

impl Prepared {
    /// Start `args` now unless one is already waiting. A host that cannot is fine: the call
    /// then runs whole.
    pub fn prepare(&mut self, fx: &mut impl Effects, args: &[String], env: &[(String, String)]) {
        if self.position(args, env).is_some() {
            return;
        }
        if let Ok(handle) = fx.start_etcdctl(args, env) {
            self.waiting.push(((args.to_vec(), env.to_vec()), handle));
        }
    }

    /// Run `args`, through a process started ahead when one is waiting.
    pub fn run(
        &mut self,
        fx: &mut impl Effects,
        args: &[String],
        env: &[(String, String)],
        stdin: Option<&str>,
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        if let Some(index) = self.position(args, env) {
            let (_, handle) = self.waiting.remove(index);
            // A host error (the process died before it read its input) means the body was
            // never sent: run it afresh.
            if let Ok(output) = fx.finish_etcdctl(handle, stdin, timeout_ms) {
                return Ok(output);
            }
        }
        fx.run_etcdctl(args, env, stdin, timeout_ms)
    }

    /// Start `args` to run until [`Prepared::stop_all`] (a `lease keep-alive`).
    pub fn keep_running(
        &mut self,
        fx: &mut impl Effects,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<(), Error> {
        self.running.push(fx.start_etcdctl(args, env)?);
        Ok(())
    }

    /// Wait for the first event at or after `call`'s revision on its key, at most
    /// `timeout_ms`: the output of a `watch` that returned then (one response line). One
    /// watch process is kept running across calls on the same key, so a waiter that sees
    /// the lock pass to someone else watches on without starting another process (a new
    /// one for another key or an earlier revision). Hosts that cannot stream run each watch
    /// whole.
    pub fn watch(
        &mut self,
        fx: &mut impl Effects,
        call: &Call,
        env: &[(String, String)],
        timeout_ms: u32,
    ) -> Result<Output, Error> {
        let (args, _) = call.argv();
        let Call::Watch { key, from_revision } = call else {
            return fx.watch_etcdctl(&args, env, timeout_ms);
        };
        let reusable = self
            .stream
            .as_ref()
            .is_some_and(|s| s.key == *key && s.from_revision <= *from_revision);
        if !reusable {
            self.stop_stream(fx);
            match fx.start_etcdctl(&args, env) {
                Ok(handle) => {
                    self.stream = Some(WatchStream {
                        key: key.clone(),
                        from_revision: *from_revision,
                        handle,
                    })
                }
                Err(_) => return fx.watch_etcdctl(&args, env, timeout_ms),
            }
        }
        let handle = self.stream.as_ref().map(|s| s.handle).unwrap_or_default();
        let output = |code: i32, stdout: String, stderr: String, timed_out: bool| Output {
            code,
            stdout,
            stderr,
            timed_out,
        };
        let start = fx.now();
        loop {
            let spent = ((fx.now().micros() - start.micros()).max(0) / 1000) as u32;
            let left = timeout_ms.saturating_sub(spent);
            if left == 0 {
                return Ok(output(-1, String::new(), String::new(), true));
            }
            match fx.read_etcdctl_line(handle, left) {
                // Events this watcher has seen already (the stream started earlier) are
                // skipped, as are responses without events.
                Ok(Some(line)) => {
                    let events = etcdctl::parse_watch_events(&line);
                    if events.iter().any(|e| e.kv.mod_revision >= *from_revision) {
                        return Ok(output(0, format!("{line}\n"), String::new(), false));
                    }
                }
                Ok(None) => return Ok(output(-1, String::new(), String::new(), true)),
                Err(e) => {
                    self.stop_stream(fx);
                    return Ok(output(1, String::new(), e.to_string(), false));
                }
            }
        }
    }

    fn stop_stream(&mut self, fx: &mut impl Effects) {
        if let Some(stream) = self.stream.take() {
            fx.stop_etcdctl(stream.handle);
        }
    }

    /// Kill whatever is still waiting or running.
    pub fn stop_all(&mut self, fx: &mut impl Effects) {
        let waiting = self.waiting.drain(..).map(|(_, handle)| handle);
        for handle in waiting.chain(self.running.drain(..)) {
            fx.stop_etcdctl(handle);
        }
        self.stop_stream(fx);
    }

    fn position(&self, args: &[String], env: &[(String, String)]) -> Option<usize> {
        self.waiting
            .iter()
            .position(|((a, e), _)| a.as_slice() == args && e.as_slice() == env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::BagOwner;
    use crate::manager::{CallbackOutcome, LogLevel, SyncBackendError};
    use crate::timestamp::Timestamp;
    use crate::wire::Bag;
    use std::collections::{BTreeMap, VecDeque};

    /// A host whose started processes print scripted lines (`None`: a timeout), then end.
    #[derive(Default)]
    struct Streams {
        started: Vec<Vec<String>>,
        lines: BTreeMap<u32, VecDeque<Option<String>>>,
        stopped: Vec<u32>,
        script: VecDeque<Vec<Option<String>>>,
        now_micros: i64,
    }

    impl Effects for Streams {
        fn unit_name(&mut self) -> String {
            "app/0".into()
        }
        fn is_leader(&mut self) -> Result<bool, Error> {
            Ok(false)
        }
        fn relation_ids(&mut self, _: &str) -> Result<Vec<u32>, Error> {
            Ok(vec![])
        }
        fn relation_units(&mut self, _: u32) -> Result<Vec<String>, Error> {
            Ok(vec![])
        }
        fn relation_get(&mut self, _: u32, _: BagOwner<'_>) -> Result<Bag, Error> {
            Ok(Bag::new())
        }
        fn relation_set(&mut self, _: u32, _: bool, _: &[(String, String)]) -> Result<(), Error> {
            Ok(())
        }
        fn log(&mut self, _: LogLevel, _: &str) {}
        fn dispatch(&mut self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn now(&mut self) -> Timestamp {
            self.now_micros += 1_000;
            Timestamp::from_micros(self.now_micros)
        }
        fn run_callback(&mut self, _: &str, _: &str) -> CallbackOutcome {
            CallbackOutcome::Missing
        }
        fn sync_backend_acquire(
            &mut self,
            _: &str,
            _: Option<u32>,
        ) -> Result<(), SyncBackendError> {
            Ok(())
        }
        fn sync_backend_release(&mut self, _: &str) -> Result<(), SyncBackendError> {
            Ok(())
        }
        fn start_etcdctl(&mut self, args: &[String], _: &[(String, String)]) -> Result<u32, Error> {
            self.started.push(args.to_vec());
            let handle = self.started.len() as u32;
            let script = self.script.pop_front().unwrap_or_default();
            self.lines.insert(handle, script.into());
            Ok(handle)
        }
        fn read_etcdctl_line(&mut self, handle: u32, _: u32) -> Result<Option<String>, Error> {
            match self.lines.get_mut(&handle).and_then(VecDeque::pop_front) {
                Some(line) => Ok(line),
                None => Err(Error::Etcdctl("etcdctl exited: gone".into())),
            }
        }
        fn stop_etcdctl(&mut self, handle: u32) {
            self.stopped.push(handle);
        }
    }

    fn event(revision: u64, deleted: bool) -> Option<String> {
        let kind = if deleted { r#""type":1,"# } else { "" };
        Some(format!(
            r#"{{"Header":{{"revision":{revision}}},"Events":[{{{kind}"kv":{{"key":"aw==","mod_revision":{revision}}}}}]}}"#
        ))
    }

    fn watch(key: &str, from_revision: u64) -> Call {
        Call::Watch {
            key: key.into(),
            from_revision,
        }
    }

    #[test]
    fn one_watch_process_serves_successive_waits_on_a_key() {
        let mut fx = Streams::default();
        fx.script
            .push_back(vec![event(5, false), None, event(7, false), event(9, true)]);
        fx.script.push_back(vec![]);
        let mut prepared = Prepared::default();
        let env = [];
        // The first event.
        let out = prepared
            .watch(&mut fx, &watch("/l", 5), &env, 1_000)
            .unwrap();
        assert_eq!(
            etcdctl::parse_watch_events(&out.stdout)[0].kv.mod_revision,
            5
        );
        // Nothing more within the timeout: a timed-out watch, the process kept.
        let out = prepared
            .watch(&mut fx, &watch("/l", 6), &env, 1_000)
            .unwrap();
        assert!(out.timed_out && out.stdout.is_empty());
        // From a later revision (the waiter tried the lock meanwhile): revision 7 is old news.
        let out = prepared
            .watch(&mut fx, &watch("/l", 8), &env, 1_000)
            .unwrap();
        let events = etcdctl::parse_watch_events(&out.stdout);
        assert!(events[0].deleted && events[0].kv.mod_revision == 9);
        assert_eq!(fx.started.len(), 1, "one process for all of them");
        // Another key: a new process, the old one stopped. That one ends without an event:
        // reported as a failed watch (not a timeout), and let go.
        let out = prepared
            .watch(&mut fx, &watch("/other", 10), &env, 1_000)
            .unwrap();
        assert_eq!(fx.started.len(), 2);
        assert!(!out.timed_out && out.code != 0 && out.stderr.contains("gone"));
        assert_eq!(fx.stopped, [1, 2]);
        prepared.stop_all(&mut fx);
        assert_eq!(fx.stopped, [1, 2], "nothing left to stop");
    }

    #[test]
    fn an_earlier_revision_needs_a_new_watch() {
        let mut fx = Streams::default();
        fx.script.push_back(vec![None]);
        fx.script.push_back(vec![event(3, true)]);
        let mut prepared = Prepared::default();
        let _ = prepared
            .watch(&mut fx, &watch("/l", 5), &env(), 1_000)
            .unwrap();
        let out = prepared
            .watch(&mut fx, &watch("/l", 3), &env(), 1_000)
            .unwrap();
        assert_eq!(
            etcdctl::parse_watch_events(&out.stdout)[0].kv.mod_revision,
            3
        );
        assert_eq!(
            fx.started.len(),
            2,
            "history before the stream's start needs a new one"
        );
        assert!(fx.started[1].contains(&"--rev=3".to_string()));
    }

    fn env() -> Vec<(String, String)> {
        vec![]
    }
}
