//! etcdctl invocations started ahead of need: the process start-up and the TLS connection
//! (`etcdctl txn` connects before it reads its body) happen while nothing waits on them, so
//! the call itself costs about one round trip. Used where a hand-off waits on the call: the
//! worker's lock transaction after a watch, the hook's finalize after the callback (and the
//! registrations read during it). Also holds the `lease keep-alive` a hook runs while its
//! callback does, so that all of them end with the hook's commands.

use super::Effects;
use crate::error::Error;
use crate::etcd::worker::Output;

/// An invocation: etcdctl's arguments and environment.
type Invocation = (Vec<String>, Vec<(String, String)>);

/// Started processes waiting for their stdin, by invocation.
#[derive(Debug, Default)]
pub struct Prepared {
    waiting: Vec<(Invocation, u32)>,
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
        let handle = fx.start_etcdctl(args, env)?;
        self.waiting.push(((args.to_vec(), env.to_vec()), handle));
        Ok(())
    }

    /// Kill whatever is still waiting or running.
    pub fn stop_all(&mut self, fx: &mut impl Effects) {
        for (_, handle) in self.waiting.drain(..) {
            fx.stop_etcdctl(handle);
        }
    }

    fn position(&self, args: &[String], env: &[(String, String)]) -> Option<usize> {
        self.waiting
            .iter()
            .position(|((a, e), _)| a.as_slice() == args && e.as_slice() == env)
    }
}
