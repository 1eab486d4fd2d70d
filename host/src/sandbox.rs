//! What the host library enforces on the component's behalf, whatever the embedder:
//!
//! * `process`: only `<charm_dir>/usr/bin/etcdctl` runs, and only if it really is an
//!   `etcdctl` (a symlink to another program is refused); the child gets no inherited
//!   environment, only what the component passes, and is killed at its timeout.
//! * `files`: paths are relative to `base_dir`; absolute paths, `..`, and symlinks that
//!   lead outside are refused.

use std::io::{BufRead, BufReader, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bindings::juju::rollingops::types::{Error, ExecOutput};

/// The two directories the component may reach.
#[derive(Clone, Debug)]
pub struct Sandbox {
    charm_dir: PathBuf,
    base_dir: PathBuf,
}

impl Sandbox {
    /// A sandbox over a charm directory and a runtime directory.
    pub fn new(charm_dir: impl Into<PathBuf>, base_dir: impl Into<PathBuf>) -> Self {
        Sandbox {
            charm_dir: charm_dir.into(),
            base_dir: base_dir.into(),
        }
    }

    /// The runtime directory.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The only program the component may run.
    pub fn etcdctl_path(&self) -> PathBuf {
        self.charm_dir.join("usr/bin/etcdctl")
    }

    /// Run `etcdctl` with `args`, exactly the environment `env`, optional stdin, and a
    /// timeout after which the child is killed.
    pub fn run_etcdctl(
        &self,
        args: &[String],
        env: &[(String, String)],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<ExecOutput, Error> {
        let mut child = self.spawn_etcdctl(args, env, stdin.is_some())?;
        child.feed(stdin)?;
        child.wait(timeout, Until::Exit)
    }

    /// Run `etcdctl` like [`Sandbox::run_etcdctl`] (no stdin) but return as soon as it has
    /// printed its first complete line, exited, or reached `timeout`; a child still running
    /// then is killed. This is how `etcdctl watch` (which never exits) is waited on.
    pub fn watch_etcdctl(
        &self,
        args: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecOutput, Error> {
        self.spawn_etcdctl(args, env, false)?
            .wait(timeout, Until::FirstLine)
    }

    /// Start `etcdctl` and leave it running with its stdin open (WIT `start-etcdctl`): its
    /// output is drained meanwhile, and it dies with this process (`PR_SET_PDEATHSIG`) or
    /// when the returned [`StartedEtcdctl`] is dropped.
    ///
    /// Returns before the process exists: a thread of its own forks and execs it (a
    /// millisecond or more on a busy machine, three times in a lock-granted hook before its
    /// callback) and stays, as its parent, for as long as the handle. A failure to start
    /// surfaces at the handle's first use.
    pub fn start_etcdctl(
        &self,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<StartedEtcdctl, Error> {
        let command = self.command(args, env, true, true)?;
        let (started, spawned) = mpsc::channel();
        let (owner, released) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _ = started.send(Running::spawn(command));
            // The child's parent for PR_SET_PDEATHSIG: stay until the handle goes.
            let _ = released.recv();
        });
        Ok(StartedEtcdctl {
            process: Process::Starting(spawned),
            _owner: owner,
        })
    }

    /// Start `etcdctl` now, in this thread, to be waited on here.
    fn spawn_etcdctl(
        &self,
        args: &[String],
        env: &[(String, String)],
        stdin: bool,
    ) -> Result<Running, Error> {
        Running::spawn(self.command(args, env, stdin, false)?).map_err(Error::Etcdctl)
    }

    /// The etcdctl command, once the program is checked.
    fn command(
        &self,
        args: &[String],
        env: &[(String, String)],
        stdin: bool,
        die_with_parent: bool,
    ) -> Result<Command, Error> {
        let program = self.etcdctl_path();
        let resolved = std::fs::canonicalize(&program).map_err(|e| {
            Error::Etcdctl(format!(
                "etcdctl executable not found: {}: {e}",
                program.display()
            ))
        })?;
        if resolved.file_name().and_then(|n| n.to_str()) != Some("etcdctl") {
            return Err(Error::Etcdctl(format!(
                "refusing to run {}: it resolves to {}, which is not etcdctl",
                program.display(),
                resolved.display()
            )));
        }
        let mut command = Command::new(&program);
        command
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.charm_dir)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(command)
    }

    /// Map a component path onto `base_dir`, refusing anything that could leave it.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, Error> {
        let relative = Path::new(path);
        if path.is_empty() {
            return Err(Error::FileSystem("empty path".into()));
        }
        for part in relative.components() {
            match part {
                Component::Normal(_) | Component::CurDir => {}
                _ => {
                    return Err(Error::FileSystem(format!(
                        "refusing {path:?}: paths must be relative to base_dir, without '..'"
                    )));
                }
            }
        }
        let full = self.base_dir.join(relative);
        // Every existing ancestor (and the file itself) must resolve inside base_dir, so a
        // symlink planted anywhere on the way cannot lead out.
        let base = std::fs::canonicalize(&self.base_dir).unwrap_or_else(|_| self.base_dir.clone());
        let mut probe = full.clone();
        loop {
            if let Ok(real) = std::fs::canonicalize(&probe) {
                if !real.starts_with(&base) {
                    return Err(Error::FileSystem(format!(
                        "refusing {path:?}: it resolves to {}, outside base_dir",
                        real.display()
                    )));
                }
                break;
            }
            if !probe.pop() || probe == self.base_dir {
                break;
            }
        }
        Ok(full)
    }

    /// Read a file; `None` if it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let full = self.resolve(path)?;
        match std::fs::read(&full) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::FileSystem(format!(
                "reading {}: {e}",
                full.display()
            ))),
        }
    }

    /// Create or replace a file atomically (temp file + rename), with a Unix mode.
    pub fn write(&self, path: &str, data: &[u8], mode: u32) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let full = self.resolve(path)?;
        let fail =
            |e: std::io::Error| Error::FileSystem(format!("writing {}: {e}", full.display()));
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        // Re-check now that parents exist: a symlinked parent must not lead out.
        self.resolve(path)?;
        let temp = full.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&temp, data).map_err(fail)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
        std::fs::rename(&temp, &full).map_err(fail)
    }

    /// Remove a file; a missing file is fine.
    pub fn remove(&self, path: &str) -> Result<(), Error> {
        let full = self.resolve(path)?;
        match std::fs::remove_file(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::FileSystem(format!(
                "removing {}: {e}",
                full.display()
            ))),
        }
    }
}

/// When a child's output is complete.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// stdout closed (the process exited).
    Exit,
    /// The first complete line on stdout (or stdout closed without one).
    FirstLine,
}

/// A started etcdctl whose output is being collected (see [`Sandbox::start_etcdctl`]).
/// Dropping it kills the process.
pub struct StartedEtcdctl {
    process: Process,
    /// Keeps the thread that started the process (its parent) alive; dropped last.
    _owner: mpsc::Sender<()>,
}

enum Process {
    /// Its thread is starting it.
    Starting(Receiver<Result<Running, String>>),
    Running(Running),
    /// It could not be started (why), or it was handed to [`StartedEtcdctl::finish`].
    Gone(String),
}

impl StartedEtcdctl {
    /// The process, once its thread has started it.
    fn running(&mut self) -> Result<&mut Running, Error> {
        if let Process::Starting(spawned) = &self.process {
            self.process = match spawned.recv() {
                Ok(Ok(running)) => Process::Running(running),
                Ok(Err(why)) => Process::Gone(why),
                Err(_) => Process::Gone("the thread starting etcdctl died".into()),
            };
        }
        match &mut self.process {
            Process::Running(running) => Ok(running),
            Process::Gone(why) => Err(Error::Etcdctl(why.clone())),
            Process::Starting(_) => unreachable!("resolved above"),
        }
    }

    /// The next complete stdout line (WIT `read-etcdctl-line`): `Ok(None)` when `timeout`
    /// passes first, an error once the process has exited and every line was read.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<String>, Error> {
        self.running()?.next_line(timeout)
    }

    /// Give the process its stdin, then wait until it exits or `timeout` has passed (WIT
    /// `finish-etcdctl`).
    pub fn finish(mut self, stdin: Option<&str>, timeout: Duration) -> Result<ExecOutput, Error> {
        self.running()?;
        let Process::Running(running) =
            std::mem::replace(&mut self.process, Process::Gone("finished".into()))
        else {
            unreachable!("running above");
        };
        running.finish(stdin, timeout)
    }

    /// The process id, once it is started.
    pub fn id(&mut self) -> Result<u32, Error> {
        Ok(self.running()?.child.id())
    }
}

impl Drop for StartedEtcdctl {
    fn drop(&mut self) {
        // A process still starting is waited for, so that it is killed and reaped too.
        if let Ok(running) = self.running() {
            running.kill_if_alive();
        }
    }
}

/// A running etcdctl and the threads collecting its output.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Collected>>,
    stderr: Arc<Mutex<Collected>>,
    /// From the stdout reader: `true` at every complete line, `false` at EOF.
    signal: Receiver<bool>,
    readers: Vec<JoinHandle<()>>,
    /// How much of stdout [`StartedEtcdctl::next_line`] has handed out (absolute offset).
    cursor: usize,
    /// stdout has closed.
    eof: bool,
}

/// A stream's output so far: the kept tail, and how many bytes before it were dropped.
#[derive(Default)]
struct Collected {
    text: String,
    dropped: usize,
}

/// Output kept per stream: a keep-alive runs for as long as a charm holds a lock and
/// prints a line per renewal, so only the tail is kept.
const KEEP_BYTES: usize = 256 * 1024;

impl Collected {
    fn push(&mut self, line: &str) {
        self.text.push_str(line);
        if self.text.len() > KEEP_BYTES {
            let mut cut = self.text.len() - KEEP_BYTES / 2;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
            self.dropped += cut;
        }
    }
}

impl Running {
    /// Start `command` and its reader threads; why not, if it cannot start.
    fn spawn(mut command: Command) -> Result<Self, String> {
        let program = Path::new(command.get_program()).display().to_string();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        Ok(Running::drain(child))
    }

    /// Start the reader threads. They signal the moment their condition is met, so nothing
    /// polls.
    fn drain(mut child: Child) -> Self {
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (out_text, err_text) = (
            Arc::new(Mutex::new(Collected::default())),
            Arc::new(Mutex::new(Collected::default())),
        );
        let (ready, signal) = mpsc::channel();
        let out_reader = {
            let text = out_text.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    text.lock().expect("reader").push(&line);
                    if line.ends_with('\n') {
                        let _ = ready.send(true);
                    }
                    line.clear();
                }
                let _ = ready.send(false);
            })
        };
        let err_reader = {
            let text = err_text.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    text.lock().expect("reader").push(&line);
                    line.clear();
                }
            })
        };
        Running {
            child,
            stdin,
            stdout: out_text,
            stderr: err_text,
            signal,
            readers: vec![out_reader, err_reader],
            cursor: 0,
            eof: false,
        }
    }

    fn next_line(&mut self, timeout: Duration) -> Result<Option<String>, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            {
                let out = self.stdout.lock().expect("reader");
                self.cursor = self.cursor.max(out.dropped);
                let unread = &out.text[self.cursor - out.dropped..];
                if let Some(end) = unread.find('\n') {
                    let line = unread[..end].to_string();
                    self.cursor += end + 1;
                    return Ok(Some(line));
                }
            }
            if self.eof {
                let stderr = self
                    .stderr
                    .lock()
                    .map(|e| e.text.clone())
                    .unwrap_or_default();
                return Err(Error::Etcdctl(format!("etcdctl exited: {}", stderr.trim())));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.signal.recv_timeout(left) {
                Ok(true) => {}
                Ok(false) | Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
            }
        }
    }

    /// Write `stdin` (if any) and close it.
    fn feed(&mut self, stdin: Option<&str>) -> Result<(), Error> {
        let Some(mut pipe) = self.stdin.take() else {
            return Ok(());
        };
        let written = match stdin {
            Some(text) => pipe.write_all(text.as_bytes()),
            None => Ok(()),
        };
        drop(pipe);
        written.map_err(|e| Error::Etcdctl(format!("writing etcdctl stdin: {e}")))
    }

    fn finish(mut self, stdin: Option<&str>, timeout: Duration) -> Result<ExecOutput, Error> {
        if let Err(e) = self.feed(stdin) {
            // It may have died already (a lost connection): report what it said.
            let out = self.wait(timeout, Until::Exit)?;
            return Err(Error::Etcdctl(format!(
                "{e}; etcdctl said: {}",
                out.stderr.trim()
            )));
        }
        self.wait(timeout, Until::Exit)
    }

    /// Wait until `until` or `timeout` (then kill). After a kill the output read so far is
    /// taken as it is: a leftover grandchild holding the pipes open cannot delay the answer.
    fn wait(mut self, timeout: Duration, until: Until) -> Result<ExecOutput, Error> {
        let deadline = std::time::Instant::now() + timeout;
        let (code, timed_out) = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.signal.recv_timeout(left) {
                // stdout closed: the process is exiting; its output is complete.
                Ok(false) => {
                    let status = self
                        .child
                        .wait()
                        .map_err(|e| Error::Etcdctl(format!("waiting for etcdctl: {e}")))?;
                    for reader in self.readers.drain(..) {
                        let _ = reader.join();
                    }
                    break (status.code().unwrap_or(-1), false);
                }
                Ok(true) if until == Until::Exit => {}
                Ok(true) => match self.child.try_wait() {
                    Ok(Some(status)) => break (status.code().unwrap_or(-1), false),
                    _ => {
                        self.kill();
                        break (-1, false);
                    }
                },
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    self.kill();
                    break (-1, true);
                }
            }
        };
        let take =
            |text: &Arc<Mutex<Collected>>| text.lock().map(|t| t.text.clone()).unwrap_or_default();
        Ok(ExecOutput {
            code,
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
            timed_out,
        })
    }

    /// Kill the process and reap it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn kill_if_alive(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_if_alive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rollingops-sandbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn is_fs_error(result: Result<impl std::fmt::Debug, Error>) -> bool {
        matches!(result, Err(Error::FileSystem(_)))
    }

    #[test]
    fn files_stay_under_base_dir() {
        let root = temp_dir("files");
        let base = root.join("base");
        std::fs::create_dir_all(&base).unwrap();
        let sandbox = Sandbox::new(root.join("charm"), &base);
        sandbox.write("etcd/config.json", b"{}", 0o600).unwrap();
        assert_eq!(sandbox.read("etcd/config.json").unwrap().unwrap(), b"{}");
        assert_eq!(sandbox.read("missing").unwrap(), None);
        sandbox.remove("etcd/config.json").unwrap();
        sandbox.remove("etcd/config.json").unwrap();
        assert!(is_fs_error(sandbox.read("../outside")));
        assert!(is_fs_error(sandbox.read("etcd/../../outside")));
        assert!(is_fs_error(sandbox.read("/etc/passwd")));
        assert!(is_fs_error(sandbox.write("/tmp/x", b"x", 0o600)));
        assert!(is_fs_error(sandbox.read("")));
        // A symlink inside base_dir pointing out of it is refused for read and write.
        std::fs::write(root.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(root.join("secret"), base.join("link")).unwrap();
        assert!(is_fs_error(sandbox.read("link")));
        std::os::unix::fs::symlink(&root, base.join("dirlink")).unwrap();
        assert!(is_fs_error(sandbox.write("dirlink/planted", b"x", 0o600)));
        assert!(!root.join("planted").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn written_files_get_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_dir("mode");
        let sandbox = Sandbox::new(&root, &root);
        sandbox.write("tls/client.key", b"k", 0o600).unwrap();
        let mode = std::fs::metadata(root.join("tls/client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn exec_refuses_anything_but_etcdctl() {
        let root = temp_dir("exec");
        let sandbox = Sandbox::new(&root, root.join("base"));
        let missing = sandbox.run_etcdctl(&[], &[], None, Duration::from_secs(1));
        assert!(matches!(missing, Err(Error::Etcdctl(m)) if m.contains("not found")));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("/bin/sh", root.join("usr/bin/etcdctl")).unwrap();
        let refused = sandbox.run_etcdctl(
            &["-c".into(), "id".into()],
            &[],
            None,
            Duration::from_secs(1),
        );
        assert!(
            matches!(&refused, Err(Error::Etcdctl(m)) if m.contains("not etcdctl")),
            "{refused:?}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn exec_passes_only_given_env_and_stdin_and_enforces_timeout() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_dir("env");
        let bin = root.join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("etcdctl");
        std::fs::write(
            &script,
            "#!/bin/sh\nif [ \"$1\" = sleep ]; then sleep 5; fi\nenv | sort\ncat\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sandbox = Sandbox::new(&root, root.join("base"));
        let env = [("ETCDCTL_API".to_string(), "3".to_string())];
        let out = sandbox
            .run_etcdctl(&[], &env, Some("txn-body"), Duration::from_secs(5))
            .unwrap();
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("ETCDCTL_API=3"));
        assert!(
            !out.stdout.contains("HOME="),
            "environment leaked: {}",
            out.stdout
        );
        assert!(out.stdout.ends_with("txn-body"));
        let slow = sandbox
            .run_etcdctl(&["sleep".into()], &[], None, Duration::from_millis(200))
            .unwrap();
        assert!(slow.timed_out && slow.code == -1);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Running (not dead, not a zombie).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// A charm directory whose `etcdctl` is a script: `txn`: one line of input echoed;
    /// `keep`: runs until killed (like keep-alive); `stream`: lines now and later, then a
    /// long life (like watch); `short`: one line, a complaint, exit.
    fn scripted_etcdctl(name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_dir(name);
        let bin = root.join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("etcdctl");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in\n  txn) read -r line; echo \"got $line\";;\n  keep) exec sleep 30;;\n  stream) echo one; echo two; sleep 0.3; echo three; exec sleep 30;;\n  short) echo only; echo oops >&2;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        root
    }

    #[test]
    fn a_started_etcdctl_waits_for_its_input_and_dies_with_its_handle() {
        let root = scripted_etcdctl("started");
        let sandbox = Sandbox::new(&root, root.join("base"));
        let long = Duration::from_secs(5);

        let mut txn = sandbox.start_etcdctl(&["txn".into()], &[]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(alive(txn.id().unwrap()), "it did not wait for its input");
        let out = txn.finish(Some("body\n"), long).unwrap();
        assert_eq!((out.code, out.stdout.as_str()), (0, "got body\n"));

        let mut keep = sandbox.start_etcdctl(&["keep".into()], &[]).unwrap();
        let pid = keep.id().unwrap();
        assert!(alive(pid));
        drop(keep);
        assert!(!alive(pid), "dropping the handle left it running");
        // Dropped while still starting: waited for, killed.
        let starting = sandbox.start_etcdctl(&["keep".into()], &[]).unwrap();
        drop(starting);

        // Lines one by one, as they come; none before the timeout; an error after the end.
        let mut stream = sandbox.start_etcdctl(&["stream".into()], &[]).unwrap();
        assert_eq!(stream.next_line(long).unwrap().as_deref(), Some("one"));
        assert_eq!(stream.next_line(long).unwrap().as_deref(), Some("two"));
        let short_wait = Duration::from_millis(50);
        assert_eq!(
            stream.next_line(short_wait).unwrap(),
            None,
            "three is not out yet"
        );
        assert_eq!(stream.next_line(long).unwrap().as_deref(), Some("three"));
        drop(stream);
        let mut short = sandbox.start_etcdctl(&["short".into()], &[]).unwrap();
        assert_eq!(short.next_line(long).unwrap().as_deref(), Some("only"));
        let ended = short.next_line(long).unwrap_err();
        assert!(format!("{ended:?}").contains("oops"), "{ended:?}");

        let _ = std::fs::remove_dir_all(&root);
    }

    /// The process that started it ends without a word (the hook's process killed): the
    /// kernel kills it (`PR_SET_PDEATHSIG`), so a keep-alive cannot outlive its hook. The
    /// starting process is this test binary run again, as `ROLLINGOPS_SANDBOX_CHILD`.
    #[test]
    fn a_started_etcdctl_dies_with_the_process_that_started_it() {
        const NAME: &str =
            "sandbox::tests::a_started_etcdctl_dies_with_the_process_that_started_it";
        if let Ok(root) = std::env::var("ROLLINGOPS_SANDBOX_CHILD") {
            let sandbox = Sandbox::new(&root, PathBuf::from(&root).join("base"));
            let mut keep = sandbox.start_etcdctl(&["keep".into()], &[]).unwrap();
            println!("started pid {}", keep.id().unwrap());
            std::process::exit(0);
        }
        let root = scripted_etcdctl("orphan");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("ROLLINGOPS_SANDBOX_CHILD", &root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let orphan: u32 = stdout
            .lines()
            .find_map(|l| l.split("started pid ").nth(1))
            .unwrap_or_else(|| panic!("the child said: {stdout}"))
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(orphan) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(orphan), "it outlived the process that started it");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn watch_returns_at_the_first_line_and_kills_the_child() {
        use std::os::unix::fs::PermissionsExt;
        use std::time::Instant;
        let root = temp_dir("watch");
        let bin = root.join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("etcdctl");
        // `event`: one line at once, then a second line and a long life (like watch);
        // `quiet`: nothing for 5 s; `fail`: an error and exit 3; all report their env.
        std::fs::write(
            &script,
            "#!/bin/sh
case \"$1\" in
  event) echo \"DELETE $ETCDCTL_API\"; echo \"$HOME\" >&2; sleep 1; echo late; sleep 5;;
  quiet) sleep 5;;
  fail) echo oops >&2; exit 3;;
esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sandbox = Sandbox::new(&root, root.join("base"));
        let env = [("ETCDCTL_API".to_string(), "3".to_string())];
        let long = Duration::from_secs(4);

        let started = Instant::now();
        let out = sandbox
            .watch_etcdctl(&["event".into()], &env, long)
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "waited for more than the first line"
        );
        assert_eq!(out.stdout, "DELETE 3\n");
        assert!(!out.timed_out);
        assert_eq!(out.code, -1, "killed after the first line");
        assert_eq!(out.stderr.trim(), "", "environment leaked: {}", out.stderr);

        let started = Instant::now();
        let out = sandbox
            .watch_etcdctl(&["quiet".into()], &env, Duration::from_millis(300))
            .unwrap();
        let waited = started.elapsed();
        assert!(out.timed_out && out.code == -1 && out.stdout.is_empty());
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3));

        let out = sandbox.watch_etcdctl(&["fail".into()], &env, long).unwrap();
        assert_eq!((out.code, out.timed_out), (3, false));
        assert_eq!(out.stderr.trim(), "oops");

        std::fs::remove_file(&script).unwrap();
        std::os::unix::fs::symlink("/bin/sh", &script).unwrap();
        let refused = sandbox.watch_etcdctl(&["-c".into(), "id".into()], &[], long);
        assert!(matches!(&refused, Err(Error::Etcdctl(m)) if m.contains("not etcdctl")));
        let _ = std::fs::remove_dir_all(&root);
    }
}
