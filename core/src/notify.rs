//! systemd's notify protocol (`sd_notify(3)`) for `anima serve`, when the
//! service manager sets `NOTIFY_SOCKET` (a `Type=notify` unit).
//!
//! - `READY=1` once the endpoint is up and every module's first lease is
//!   settled: the module is leased (or has been: `standby`), or it
//!   definitively is not — `failed`, `stopped`, or `starting` while waiting
//!   for a module it `requires` that is itself settled without a lease. A
//!   module that is still `starting` or `restarting` after [`SETTLE_LIMIT`]
//!   does not hold READY back any longer; READY is then sent with a `STATUS=`
//!   that names every module not leased (and the same is logged as a
//!   warning), never silently.
//! - `STATUS=` whenever the summary changes: `3 modules leased`, or
//!   `2 of 3 modules leased; not leased: urn:… (failed)`.
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC` (when it is set for this
//!   process), sent from the Core's main loop, so the pings stop when that
//!   loop stops being scheduled.
//! - `STOPPING=1` when the Core starts shutting down.
//!
//! The `sd-notify` crate gives the messages (`NotifyState`) and reads the
//! watchdog (`WATCHDOG_USEC`, for this process only when `WATCHDOG_PID` is
//! set); each message is one datagram, sent here to `NOTIFY_SOCKET` as an
//! absolute path or an abstract socket (`@name`, Linux), which the crate
//! alone does not reach. A socket that cannot be reached is logged (once)
//! and never stops the Core. The Core's children
//! do not inherit the variables ([`MANAGER_ENV`]): a module must not notify
//! the service manager on the Core's behalf.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anima_protocol::Urn;
use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::registry::{ModuleState, ModuleView, Registry};

/// The variables the service manager hands the Core, which its children
/// must not inherit.
pub(crate) const MANAGER_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How long READY may wait for the modules' first leases after the endpoint
/// is up (well within systemd's default `TimeoutStartSec=90s`).
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Talks to the service manager, if there is one.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// `NOTIFY_SOCKET`, when set and not empty.
    socket: Option<OsString>,
    /// `WATCHDOG_USEC`, when set for this process.
    watchdog: Option<Duration>,
    /// Whether a failed send has been logged already.
    warned: AtomicBool,
}

impl Notifier {
    /// The service manager this process was started by, from the
    /// environment (none: every call does nothing).
    pub(crate) fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        Notifier {
            watchdog: socket.as_ref().and(watchdog),
            socket,
            warned: AtomicBool::new(false),
        }
    }

    /// Sends `states` as one datagram; a failure is logged, once.
    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(socket) = &self.socket else {
            return;
        };
        if let Err(e) = send_to(socket, states) {
            let first = !self.warned.swap(true, Ordering::Relaxed);
            if first {
                tracing::warn!(
                    socket = %socket.to_string_lossy(),
                    error = %e,
                    "cannot notify the service manager (NOTIFY_SOCKET); the Core goes on without it"
                );
            } else {
                tracing::debug!(error = %e, "service manager notification failed");
            }
        }
    }

    /// `STATUS=text`.
    pub(crate) fn status(&self, text: &str) {
        self.send(&[NotifyState::Status(&one_line(text))]);
    }

    /// `STOPPING=1`, with why in `STATUS=`.
    pub(crate) fn stopping(&self, why: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(&one_line(why))]);
    }

    /// Until dropped: READY=1 once the first leases are settled, STATUS= as
    /// they change, and WATCHDOG=1 at half the watchdog interval. Without a
    /// service manager it only waits.
    pub(crate) async fn run(&self, registry: &Registry, requires: &Requires) -> Infallible {
        if self.socket.is_none() {
            return std::future::pending().await;
        }
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut changes: Vec<_> = requires
            .0
            .keys()
            .filter_map(|u| registry.watch(u))
            .collect();
        let mut ping = self.watchdog.map(|usec| {
            let mut ping = tokio::time::interval(usec / 2);
            ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ping
        });
        let mut ready = false;
        let mut said = String::new();
        loop {
            let summary = Summary::of(&registry.list(), requires);
            if !ready && (summary.settled || Instant::now() >= deadline) {
                ready = true;
                said = self.ready(&summary);
            }
            let status = if ready {
                summary.to_string()
            } else {
                format!("starting: {summary}")
            };
            if status != said {
                self.status(&status);
                said = status;
            }
            tokio::select! {
                () = any_changed(&mut changes) => {}
                _ = tick(&mut ping) => self.send(&[NotifyState::Watchdog]),
                () = tokio::time::sleep_until(deadline), if !ready => {}
            }
        }
    }

    /// READY=1 with the summary in STATUS=; logged, as a warning when a
    /// module is not leased. Returns the status said.
    fn ready(&self, summary: &Summary) -> String {
        let status = summary.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(&status))]);
        if !summary.settled {
            tracing::warn!(status = %status, "notified the service manager: ready, after waiting {SETTLE_LIMIT:?} for the modules' first leases");
        } else if summary.not_leased.is_empty() {
            tracing::info!(status = %status, "notified the service manager: ready");
        } else {
            tracing::warn!(status = %status, "notified the service manager: ready, with modules not leased");
        }
        status
    }
}

/// One datagram to `socket`: an absolute path, or an abstract socket
/// (`@name`, Linux), as `sd_notify(3)` takes them.
fn send_to(socket: &OsString, states: &[NotifyState<'_>]) -> std::io::Result<()> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket.as_os_str());
    let addr = match bytes.split_first() {
        Some((b'@', name)) => abstract_addr(name)?,
        Some((b'/', _)) => SocketAddr::from_pathname(socket)?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor @abstract",
            ));
        }
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    if sent == message.len() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the notification was cut short",
        ))
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets are Linux-only",
    ))
}

/// A STATUS= value is one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Completes when any of `changes` sees a new state; never if none can.
async fn any_changed(changes: &mut [watch::Receiver<ModuleState>]) {
    let mut waits: Vec<_> = changes.iter_mut().map(|c| Box::pin(c.changed())).collect();
    std::future::poll_fn(|cx| {
        // A closed channel (its module gone) never completes the wait.
        let changed = waits
            .iter_mut()
            .any(|wait| matches!(wait.as_mut().poll(cx), std::task::Poll::Ready(Ok(()))));
        if changed {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// The next watchdog tick; never without a watchdog.
async fn tick(ping: &mut Option<tokio::time::Interval>) {
    match ping {
        Some(ping) => {
            ping.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Each configured module and the modules it `requires`.
#[derive(Debug, Default)]
pub(crate) struct Requires(HashMap<Urn, Vec<Urn>>);

impl Requires {
    /// From the configuration's modules.
    pub(crate) fn of(modules: &[crate::config::ModuleConfig]) -> Self {
        Requires(
            modules
                .iter()
                .map(|m| (m.urn.clone(), m.requires.clone()))
                .collect(),
        )
    }
}

/// Where the modules' first leases stand.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Whether every module's first lease is settled.
    pub(crate) settled: bool,
    /// How many modules are leased now.
    pub(crate) leased: usize,
    /// How many modules there are.
    pub(crate) total: usize,
    /// The modules not leased now, with their state.
    pub(crate) not_leased: Vec<(Urn, &'static str)>,
}

impl Summary {
    /// The summary of `views`.
    pub(crate) fn of(views: &[ModuleView], requires: &Requires) -> Self {
        let states: HashMap<&Urn, ModuleState> = views.iter().map(|v| (&v.urn, v.state)).collect();
        let settled = views
            .iter()
            .all(|v| is_settled(&v.urn, &states, requires, views.len()));
        let not_leased: Vec<_> = views
            .iter()
            .filter(|v| v.state != ModuleState::Leased)
            .map(|v| (v.urn.clone(), v.state.as_str()))
            .collect();
        Summary {
            settled,
            leased: views.len() - not_leased.len(),
            total: views.len(),
            not_leased,
        }
    }
}

/// Whether `urn`'s first lease is settled: it has been leased, it failed or
/// stopped, or it waits for a module that is settled without a lease
/// (`depth` guards against a cycle).
fn is_settled(
    urn: &Urn,
    states: &HashMap<&Urn, ModuleState>,
    requires: &Requires,
    depth: usize,
) -> bool {
    match states.get(urn) {
        None
        | Some(
            ModuleState::Leased
            | ModuleState::Standby
            | ModuleState::Failed
            | ModuleState::Stopped
            | ModuleState::Unreachable,
        ) => true,
        // Waits for a provider (P2): settled once that is leased and it is.
        Some(ModuleState::Restarting | ModuleState::Blocked) => false,
        Some(ModuleState::Starting) => {
            depth > 0
                && requires.0.get(urn).is_some_and(|reqs| {
                    reqs.iter().any(|r| {
                        states.get(r) != Some(&ModuleState::Leased)
                            && states.get(r) != Some(&ModuleState::Standby)
                            && is_settled(r, states, requires, depth - 1)
                    })
                })
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let noun = if self.total == 1 { "module" } else { "modules" };
        if self.not_leased.is_empty() {
            return match self.total {
                0 => write!(f, "no modules configured"),
                n => write!(f, "{n} {noun} leased"),
            };
        }
        write!(
            f,
            "{} of {} {noun} leased; not leased:",
            self.leased, self.total
        )?;
        for (i, (urn, state)) in self.not_leased.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{urn} ({state})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn urn(name: &str) -> Urn {
        format!("urn:anima:module:{name}").parse().unwrap()
    }

    fn view(name: &str, state: ModuleState) -> ModuleView {
        ModuleView {
            urn: urn(name),
            module_type: "resident-shared",
            state,
            detail: String::new(),
            pid: None,
            endpoint: String::new(),
            restarts: 0,
            lease_id: None,
            provides: Vec::new(),
            requires: Vec::new(),
        }
    }

    fn requires(pairs: &[(&str, &[&str])]) -> Requires {
        Requires(
            pairs
                .iter()
                .map(|(m, r)| (urn(m), r.iter().map(|r| urn(r)).collect()))
                .collect(),
        )
    }

    #[test]
    fn all_leased_is_settled_and_says_how_many() {
        let views = [
            view("a", ModuleState::Leased),
            view("b", ModuleState::Leased),
            view("c", ModuleState::Leased),
        ];
        let s = Summary::of(&views, &Requires::default());
        assert!(s.settled);
        assert_eq!(s.to_string(), "3 modules leased");
        let one = Summary::of(&views[..1], &Requires::default());
        assert_eq!(one.to_string(), "1 module leased");
        assert_eq!(
            Summary::of(&[], &Requires::default()).to_string(),
            "no modules configured"
        );
    }

    #[test]
    fn starting_or_restarting_is_not_settled() {
        for state in [ModuleState::Starting, ModuleState::Restarting] {
            let views = [view("a", ModuleState::Leased), view("b", state)];
            let s = Summary::of(&views, &Requires::default());
            assert!(!s.settled, "{state:?}");
        }
    }

    #[test]
    fn failed_settles_and_is_named_as_not_leased() {
        let views = [
            view("a", ModuleState::Leased),
            view("b", ModuleState::Failed),
        ];
        let s = Summary::of(&views, &Requires::default());
        assert!(s.settled);
        assert_eq!(
            s.to_string(),
            "1 of 2 modules leased; not leased: urn:anima:module:b (failed)"
        );
    }

    #[test]
    fn waiting_for_a_failed_requirement_is_settled_transitively() {
        let reqs = requires(&[("c", &["b"]), ("d", &["c"])]);
        let views = [
            view("b", ModuleState::Failed),
            view("c", ModuleState::Starting),
            view("d", ModuleState::Starting),
        ];
        assert!(Summary::of(&views, &reqs).settled);
        // Waiting for a requirement that may still lease is not settled.
        let views = [
            view("b", ModuleState::Restarting),
            view("c", ModuleState::Starting),
            view("d", ModuleState::Starting),
        ];
        assert!(!Summary::of(&views, &reqs).settled);
        // A cycle does not recurse forever.
        let cycle = requires(&[("x", &["y"]), ("y", &["x"])]);
        let views = [
            view("x", ModuleState::Starting),
            view("y", ModuleState::Starting),
        ];
        assert!(!Summary::of(&views, &cycle).settled);
    }

    #[test]
    fn an_unreachable_socket_is_logged_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        for socket in [
            dir.path().join("nobody-listens").into_os_string(),
            OsString::from("relative/notify"),
            OsString::from("@anima-test-nobody-listens-here"),
        ] {
            let n = Notifier {
                socket: Some(socket.clone()),
                watchdog: None,
                warned: AtomicBool::new(false),
            };
            n.status("x");
            n.stopping("y");
            assert!(n.warned.load(Ordering::Relaxed), "{socket:?}");
        }
    }

    /// What `socket` (`NOTIFY_SOCKET`) receives from `notifier.stopping`.
    fn received(listener: &std::os::unix::net::UnixDatagram, socket: String) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier {
            socket: Some(OsString::from(socket)),
            watchdog: None,
            warned: AtomicBool::new(false),
        };
        n.stopping("line one\nline two");
        assert!(!n.warned.load(Ordering::Relaxed));
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    #[test]
    fn a_path_socket_receives_one_datagram_of_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let text = received(&listener, path.to_string_lossy().into_owned());
        assert_eq!(text, "STOPPING=1\nSTATUS=line one line two\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_receives_the_datagram() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("anima-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        let text = received(&listener, format!("@{name}"));
        assert_eq!(text, "STOPPING=1\nSTATUS=line one line two\n");
    }

    #[tokio::test(start_paused = true)]
    async fn ready_comes_after_the_settle_limit_naming_the_modules_not_leased() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let registry = Registry::default();
        let _commands = [
            registry.add(urn("a"), "ephemeral", Vec::new(), Vec::new()),
            registry.add(urn("b"), "ephemeral", Vec::new(), Vec::new()),
        ];
        registry.set_state(&urn("a"), ModuleState::Leased, "");
        let n = Notifier {
            socket: Some(path.into_os_string()),
            watchdog: None,
            warned: AtomicBool::new(false),
        };
        let reqs = requires(&[("a", &[]), ("b", &[])]);
        let run = n.run(&registry, &reqs);
        tokio::pin!(run);
        let mut run_for = async |d: Duration| {
            tokio::select! {
                never = &mut run => match never {},
                () = tokio::time::sleep(d) => {}
            }
        };
        listener.set_nonblocking(true).unwrap();
        let said = || {
            let mut buf = [0u8; 512];
            listener
                .recv(&mut buf)
                .ok()
                .map(|len| String::from_utf8(buf[..len].to_vec()).unwrap())
        };
        let waiting = "1 of 2 modules leased; not leased: urn:anima:module:b (starting)";
        run_for(SETTLE_LIMIT - Duration::from_secs(1)).await;
        assert_eq!(said(), Some(format!("STATUS=starting: {waiting}\n")));
        assert_eq!(said(), None, "no READY before the limit");
        run_for(Duration::from_secs(2)).await;
        assert_eq!(said(), Some(format!("READY=1\nSTATUS={waiting}\n")));
        assert_eq!(said(), None, "said once");
    }
}
