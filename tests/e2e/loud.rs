//! The Core fails loudly, not silently (issue 12 §7): an endpoint that stops
//! ends `anima serve` with a reason and a non-zero status, and a stalled
//! audit log blocks no call.

use std::io::Read;

use anima_protocol::UrnKind;
use anima_sample_modules::pb::DigestRequest;
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_tests::{PATIENCE, reason};

use super::gateway::{metrics, user};
use super::serve::{CoreProcess, config};
use super::wait::{self, in_time};

/// Shuts down (SHUT_RD) the socket listening on `port` in process `pid`,
/// through a duplicate of its descriptor (`pidfd_getfd`; the test is the
/// Core's parent): the listener is gone as if the system had taken it, and
/// every later `accept` fails with EINVAL.
fn take_the_listener_away(pid: u32, port: u16) {
    let script = r#"
import ctypes, os, socket, sys
pid, port = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(pid)
for fd in range(3, 1024):
    dup = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
    if dup < 0:
        continue
    try:
        s = socket.socket(fileno=dup)
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.getsockname()[1] == port \
                    and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                s.shutdown(socket.SHUT_RD)
                print("shut", fd)
                sys.exit(0)
        finally:
            s.detach()
    except OSError:
        pass
    finally:
        os.close(dup)
sys.exit("no listening socket on port %d in process %d" % (port, pid))
"#;
    let (pid, port) = (pid.to_string(), port.to_string());
    let mut python = std::process::Command::new("python3");
    wait::succeeds(python.args(["-c", script, &pid, &port]), "python3");
}

#[tokio::test]
async fn serve_exits_non_zero_and_says_why_when_its_endpoint_stops() {
    let mut core = CoreProcess::start(Some(&config("30s", "always"))).await;
    let tally = core.wait_leased("tally").await;
    let tally_pid = tally["pid"].as_u64().unwrap();
    let pid = core.child.child.id().unwrap();
    let port: u16 = core.admin.rsplit(':').next().unwrap().parse().unwrap();
    take_the_listener_away(pid, port);
    let exit = tokio::time::timeout(PATIENCE * 2, core.child.child.wait())
        .await
        .expect("the Core exits when its endpoint is gone")
        .unwrap();
    assert_eq!(exit.code(), Some(1), "{exit}");
    let log = std::fs::read_to_string(core.dir.path().join("stderr.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("endpoint stopped")),
        "the log says why:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("error: ") && l.contains("endpoint") && l.contains(&core.admin)),
        "the one-line error names the endpoint:\n{log}"
    );
    // It stopped its modules on the way out, as on SIGTERM.
    assert!(
        !std::path::Path::new(&format!("/proc/{tally_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{tally_pid}/stat"))
                .unwrap_or_default()
                .contains(") Z "),
        "the module outlived its Core"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_a_stalled_audit_log_blocks_no_call() {
    // The audit log is a pipe that nobody reads: once its buffer is full,
    // every write to it blocks.
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (drain_tx, drain_rx) = std::sync::mpsc::channel::<()>();
    let core = CoreProcess::start_with(Some(&config("30s", "always")), |certs| {
        // certs/dev is inside the Core's directory, where audit.jsonl is.
        let path = certs
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("audit.jsonl");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo");
        anima_certs::issue_into_dir(certs, UrnKind::User, "intruder", 30, false).unwrap();
        // The reader: opens the pipe (the Core's open waits for it), then
        // reads nothing until told to.
        std::thread::spawn(move || {
            let mut pipe = std::fs::File::open(&path).unwrap();
            opened_tx.send(()).unwrap();
            let _ = drain_rx.recv();
            let mut sink = Vec::new();
            let _ = pipe.read_to_end(&mut sink);
        });
    })
    .await;
    opened_rx
        .recv_timeout(PATIENCE)
        .expect("the Core opened its audit log");
    core.wait_samples_leased().await;
    // A flood of calls the policy denies: each one is an audit record, far
    // more than the pipe and the writer's queue hold together.
    let calls_per_task = anima_core::audit::AUDIT_QUEUE_CAPACITY / 8 + 500;
    let intruder = user(&core, "user-intruder").await;
    let flood = async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let mut client = HasherClient::new(intruder.channel());
                tokio::spawn(async move {
                    for i in 0..calls_per_task {
                        let text = format!("{t}-{i}");
                        let status = client.digest(DigestRequest { text }).await.unwrap_err();
                        assert_eq!(
                            reason(&status),
                            Some(anima_protocol::lease::Reason::PolicyDenied)
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    };
    in_time(
        flood,
        "every denied call answered while the audit log is stalled",
    )
    .await;
    // The Core still answers everyone else.
    core.cli_ok(&["modules"]).await;
    let dev = user(&core, "user-dev").await;
    let mut hasher = HasherClient::new(dev.channel());
    let digest = hasher.digest(DigestRequest { text: "x".into() });
    let reply = in_time(digest, "a permitted call in time").await.unwrap();
    assert_eq!(reply.get_ref().sha256_hex.len(), 64);
    // What could not be written was dropped and counted, not waited for.
    let text = metrics(&dev).await;
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("anima_audit_records_dropped_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no anima_audit_records_dropped_total:\n{text}"));
    assert!(dropped > 0, "nothing dropped: the pipe held every record?");
    let _ = drain_tx.send(());
}
