//! A throwaway etcd cluster on loopback with TLS and client-certificate auth, for tests and
//! benchmarks, and a plain etcdctl runner.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollingops_guest::etcd::worker::Output;

/// Certificates for a test cluster: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, made with openssl in `dir`.
pub fn make_certs(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rollingops-test-ca",
    ]);
    for (name, extra) in [("server", Some("san.cnf")), ("client", None)] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=rollingops-test-{name}"),
        ]);
        let mut args = vec!["x509", "-req", "-in"];
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        args.extend([
            csr.as_str(),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            pem.as_str(),
            "-days",
            "2",
        ]);
        if let Some(file) = extra {
            args.extend(["-extfile", file]);
        }
        openssl(&args);
    }
}

/// An etcd cluster of `members` on loopback ports in a temporary directory, clients over
/// TLS with client-certificate authentication; stopped on drop.
pub struct Etcd {
    members: Vec<Option<Child>>,
    specs: Vec<Member>,
    /// Where certificates, data and logs live.
    pub dir: PathBuf,
    /// Client URLs.
    pub endpoints: Vec<String>,
}

impl Etcd {
    pub fn start(base_port: u16, members: usize) -> Etcd {
        let dir = std::env::temp_dir().join(format!(
            "rollingops-etcd-{base_port}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_certs(&dir);
        let peer = |i: usize| format!("http://127.0.0.1:{}", base_port + 100 + i as u16);
        let endpoints: Vec<String> = (0..members)
            .map(|i| format!("https://127.0.0.1:{}", base_port + i as u16))
            .collect();
        let cluster: Vec<String> = (0..members).map(|i| format!("m{i}={}", peer(i))).collect();
        let cluster = cluster.join(",");
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client: endpoints[i].clone(),
                peer: peer(i),
                cluster: cluster.clone(),
            })
            .collect();
        let children = members.iter().map(|m| Some(m.spawn(&dir))).collect();
        let etcd = Etcd {
            members: children,
            specs: members,
            dir,
            endpoints,
        };
        etcd.wait_healthy();
        etcd
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .etcdctl(&["endpoint", "health", "--cluster"], None)
            .code
            != 0
        {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Start a killed member again on its data directory and wait until the cluster is
    /// healthy.
    pub fn restart(&mut self, member: usize) {
        assert!(self.members[member].is_none(), "member {member} runs");
        self.members[member] = Some(self.specs[member].spawn(&self.dir));
        self.wait_healthy();
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let path = |f: &str| self.dir.join(f).display().to_string();
        vec![
            ("ETCDCTL_API".into(), "3".into()),
            ("ETCDCTL_ENDPOINTS".into(), self.endpoints.join(",")),
            ("ETCDCTL_CACERT".into(), path("ca.pem")),
            ("ETCDCTL_CERT".into(), path("client.pem")),
            ("ETCDCTL_KEY".into(), path("client.key")),
            ("ETCDCTL_DIAL_TIMEOUT".into(), "1s".into()),
            ("ETCDCTL_COMMAND_TIMEOUT".into(), "2s".into()),
        ]
    }

    pub fn etcdctl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        etcdctl(&self.env(), args, stdin)
    }

    /// The host library's sandbox over a charm directory whose `usr/bin/etcdctl` is the
    /// system's: etcdctl calls and watches exactly as the Rust hosts make them.
    pub fn sandbox(&self) -> rollingops::sandbox::Sandbox {
        let charm = self.dir.join("charm");
        let bin = charm.join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let link = bin.join("etcdctl");
        if !link.exists() {
            let which = Command::new("which").arg("etcdctl").output().unwrap();
            let system = String::from_utf8(which.stdout).unwrap();
            std::os::unix::fs::symlink(system.trim(), &link).unwrap();
        }
        rollingops::sandbox::Sandbox::new(&charm, self.dir.join("base"))
    }

    /// Stop a member (SIGKILL).
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How one member is started.
struct Member {
    name: String,
    client: String,
    peer: String,
    cluster: String,
}

impl Member {
    fn spawn(&self, dir: &Path) -> Child {
        let index = self.name.trim_start_matches('m');
        Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(dir.join(format!("data{index}")))
            .args([
                "--listen-client-urls",
                &self.client,
                "--advertise-client-urls",
                &self.client,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer,
                "--initial-advertise-peer-urls",
                &self.peer,
            ])
            .args([
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--client-cert-auth", "--trusted-ca-file"])
            .arg(dir.join("ca.pem"))
            .arg("--cert-file")
            .arg(dir.join("server.pem"))
            .arg("--key-file")
            .arg(dir.join("server.key"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("etcd{index}.log")))
                    .unwrap(),
            )
            .spawn()
            .expect("etcd is installed (Debian package etcd-server; ./test.sh installs it)")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn etcdctl(env: &[(String, String)], args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (Debian package etcd-client)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        timed_out: false,
    }
}
