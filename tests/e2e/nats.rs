//! A NATS server with JetStream for the mediator's `nats` backend (M14):
//! Debian's `nats-server`, started by the test in a directory of its own,
//! TLS with client certificates from a Core's dev CA, stopped on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anima_tests::PATIENCE;

/// A running `nats-server`.
pub(crate) struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// A free port on loopback (bound, then let go).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// Starts `nats-server` on `port`: its certificate the Core's own
    /// (`core-dev.pem`, which names 127.0.0.1) and client certificates
    /// required, all from the CA in `certs`; JetStream on.
    pub(crate) fn start(certs: &Path, port: u16) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| certs.join(name).display().to_string();
        let conf = format!(
            r#"
listen: "127.0.0.1:{port}"
max_payload: 4194304
jetstream {{ store_dir: "{store}" }}
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 5
}}
"#,
            store = dir.path().join("js").display(),
            cert = path("core-dev.pem"),
            key = path("core-dev.key"),
            ca = path("ca.pem"),
        );
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server: {e} (apt-get install nats-server; .ci/run installs it)")
            });
        let mut server = NatsServer { child, port, dir };
        server.wait_listening();
        server
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nats-server exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not listening: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// `[mediator]` lines for a Core that keeps its messages here.
    pub(crate) fn mediator_lines(port: u16) -> String {
        format!("backend = \"nats\"\nnats_url = \"tls://127.0.0.1:{port}\"\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `config` (an `anima.toml`) with the mediator on the NATS server at
/// `port`: its `[mediator]` table given the backend, or one added.
pub(crate) fn on_nats(config: &str, port: u16) -> String {
    let lines = NatsServer::mediator_lines(port);
    if config.contains("\n[mediator]\n") {
        config.replacen("\n[mediator]\n", &format!("\n[mediator]\n{lines}"), 1)
    } else {
        format!("{config}\n[mediator]\n{lines}")
    }
}
