//! What the host library enforces on the component's behalf, whatever the embedder:
//!
//! * `process`: only `<charm_dir>/usr/bin/etcdctl` runs, and only if it really is an
//!   `etcdctl` (a symlink to another program is refused); the child gets no inherited
//!   environment, only what the component passes, and is killed at its timeout.
//! * `files`: paths are relative to `base_dir`; absolute paths, `..`, and symlinks that
//!   lead outside are refused.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        let mut child = Command::new(&program)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.charm_dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Etcdctl(format!("cannot start {}: {e}", program.display())))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| Error::Etcdctl(format!("writing etcdctl stdin: {e}")))?;
        }
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + timeout;
        let (code, timed_out) = loop {
            match child.try_wait() {
                Ok(Some(status)) => break (status.code().unwrap_or(-1), false),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break (-1, true);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(Error::Etcdctl(format!("waiting for etcdctl: {e}"))),
            }
        };
        Ok(ExecOutput {
            code,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
            timed_out,
        })
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
}
