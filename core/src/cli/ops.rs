//! The operator commands: `anima modules|leases|revoke|restart|stop|events`,
//! speaking to a running Core's admin API over mTLS.
//!
//! Exit status: 0 on success, 1 when the Core refuses or cannot be reached,
//! 2 for bad usage.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anima_protocol::pb::core_admin_client::CoreAdminClient;
use anima_protocol::pb::{
    LeaseInfo, ListLeasesRequest, ListModulesRequest, ModuleInfo, ModuleRequest,
    RevokeLeaseRequest, WatchEventsRequest,
};
use anima_protocol::transport::PeerChannel;
use anima_protocol::{ClientTls, PeerPolicy, TlsIdentity, TrustRoot, UrnKind};
use clap::Args;

use super::CliResult;

/// The operator's certificate when neither `--cert` nor the configuration
/// names one.
pub const DEFAULT_OPERATOR_CERT: &str = "certs/dev/user-dev.pem";
/// The operator's key when neither `--key` nor the configuration names one.
pub const DEFAULT_OPERATOR_KEY: &str = "certs/dev/user-dev.key";
/// The CA when neither `--ca` nor the configuration names one.
pub const DEFAULT_CA: &str = "certs/dev/ca.pem";

/// Where the Core is and who is asking.
///
/// Each value comes from its flag when given, else from the configuration
/// (`--config FILE`, or `anima.toml` in the working directory when there is
/// one, as for `anima serve`): `[admin] listen`, `[admin] operator_cert` and
/// `operator_key`, `[core] ca`; else the dev defaults.
#[derive(Debug, Args, Clone)]
pub struct AdminTarget {
    /// The Core's configuration, read for the admin address, the operator's
    /// certificate and key and the CA [default: ./anima.toml if it exists].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The Core's admin endpoint [default: the configuration's
    /// `[admin] listen`, else 127.0.0.1:7700].
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// The operator's certificate [default: the configuration's
    /// `[admin] operator_cert`, else certs/dev/user-dev.pem].
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// The operator's key [default: the configuration's
    /// `[admin] operator_key`, else certs/dev/user-dev.key].
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// The CA [default: the configuration's `[core] ca`, else
    /// certs/dev/ca.pem].
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Print JSON (one object per line for `events`) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What an operator command dials, and with which credentials: the
/// [`AdminTarget`]'s flags over the configuration over the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The admin endpoint, `host:port`.
    pub admin: String,
    /// The operator's certificate.
    pub cert: PathBuf,
    /// The operator's key.
    pub key: PathBuf,
    /// The CA.
    pub ca: PathBuf,
}

impl AdminTarget {
    /// The configuration file to read: `--config`, else `./anima.toml` if
    /// it exists, else none.
    fn config_file(&self) -> Option<PathBuf> {
        let local = PathBuf::from(super::config::DEFAULT_FILE);
        self.config
            .clone()
            .or_else(|| local.is_file().then_some(local))
    }

    /// Resolves the flags, the configuration and the defaults. Of the
    /// configuration only `[admin]` and `[core] ca` are read: a file that
    /// does not parse, or whose admin section is wrong, is an error naming
    /// the file (its problems are printed on stderr first), but a problem
    /// with a module does not keep an operator from the Core.
    pub fn resolve(&self) -> Result<Resolved, Box<dyn std::error::Error>> {
        let config = match self.config_file() {
            Some(path) => Some(load(&path)?),
            None => None,
        };
        let admin = match (&self.admin, &config) {
            (Some(admin), _) => admin.clone(),
            (None, Some((access, file))) => dial_address(access, file)?,
            (None, None) => crate::config::DEFAULT_ADMIN_LISTEN.to_owned(),
        };
        let operator = config
            .as_ref()
            .and_then(|(access, _)| access.admin.operator_cert.clone());
        let (file_cert, file_key) = operator.unzip();
        Ok(Resolved {
            admin,
            cert: self
                .cert
                .clone()
                .or(file_cert)
                .unwrap_or_else(|| DEFAULT_OPERATOR_CERT.into()),
            key: self
                .key
                .clone()
                .or(file_key)
                .unwrap_or_else(|| DEFAULT_OPERATOR_KEY.into()),
            ca: self
                .ca
                .clone()
                .or_else(|| config.map(|(access, _)| access.ca))
                .unwrap_or_else(|| DEFAULT_CA.into()),
        })
    }
}

/// Reads what the operator commands need of `path`
/// ([`crate::config::operator_access`]); its problems are printed on stderr,
/// one a line, as `anima config check` prints them, and the error names the
/// file.
fn load(
    path: &std::path::Path,
) -> Result<(crate::config::OperatorAccess, PathBuf), Box<dyn std::error::Error>> {
    let access = crate::config::operator_access(path).map_err(|problems| {
        for problem in &problems {
            eprintln!("{problem}");
        }
        let n = problems.len();
        let noun = if n == 1 { "problem" } else { "problems" };
        format!("{n} {noun} in {}", path.display())
    })?;
    Ok((access, path.to_path_buf()))
}

/// Where to dial the admin endpoint the configuration listens on: an
/// unspecified address (`0.0.0.0`, `::`) is dialled on loopback.
fn dial_address(access: &crate::config::OperatorAccess, file: &Path) -> Result<String, String> {
    let mut addr = access.admin.listen;
    if addr.port() == 0 {
        return Err(format!(
            "{}: admin.listen {addr} has port 0 (chosen when the Core starts): give --admin",
            file.display()
        ));
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr.to_string())
}

/// `anima revoke LEASE_ID`
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The lease id (from `anima leases`). Ids are base64url and may start
    /// with `-`, so a leading dash is taken as part of the id.
    #[arg(allow_hyphen_values = true)]
    pub lease_id: String,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `anima restart|stop MODULE`
#[derive(Debug, Args)]
pub struct ModuleArg {
    /// The module's URN (`urn:anima:module:NAME`) or just NAME.
    pub module: String,
}

async fn connect(
    target: &AdminTarget,
) -> Result<CoreAdminClient<PeerChannel>, Box<dyn std::error::Error>> {
    Ok(CoreAdminClient::new(endpoint(target).await?))
}

/// A channel to the Core's endpoint as the operator.
pub(crate) async fn endpoint(
    target: &AdminTarget,
) -> Result<PeerChannel, Box<dyn std::error::Error>> {
    let target = target.resolve()?;
    let identity = TlsIdentity::from_pem_files(&target.cert, &target.key)?;
    let trust = TrustRoot::from_pem_file(&target.ca)?;
    let conn = ClientTls::new(identity, trust)
        .connect_timeout(Duration::from_secs(3))
        .dial(&target.admin, PeerPolicy::kind(UrnKind::Core))
        .await
        .map_err(|e| {
            format!(
                "cannot reach the Core's admin endpoint at {}: {e}",
                target.admin
            )
        })?;
    Ok(conn.channel())
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub(crate) fn rpc_error(status: tonic::Status) -> Box<dyn std::error::Error> {
    match anima_protocol::lease::reason_of(&status) {
        Some(reason) => format!("{reason}: {}", status.message()).into(),
        None => format!("{:?}: {}", status.code(), status.message()).into(),
    }
}

fn module_urn(name: &str) -> String {
    if name.starts_with("urn:") {
        name.to_owned()
    } else {
        format!("urn:anima:module:{name}")
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `12.3s` from a span in milliseconds.
fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// A lease's EXPIRES cell at `now` (ms since the epoch): when an active
/// lease expires (`in 12.3s`), or that a lease is over and when. An expired
/// lease ended at its expiry (`expired 3.2s ago`); a lease ended early ended
/// no later than its last expiry (`ended over 3.2s ago`), and one whose expiry
/// is still ahead shows only `ended`: an ended lease never shows a future
/// time.
fn expiry_cell(state: &str, expires_ms: u64, now: u64) -> String {
    let past = now.checked_sub(expires_ms);
    match (state, past) {
        ("active", Some(ago)) => format!("{} ago", seconds(ago)),
        ("active", None) => format!("in {}", seconds(expires_ms - now)),
        ("expired", Some(ago)) => format!("expired {} ago", seconds(ago)),
        ("expired", None) => "expired".into(),
        (_, Some(ago)) => format!("ended over {} ago", seconds(ago)),
        (_, None) => "ended".into(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// Makes one admin call to the Core, on a runtime of its own; a refusal is
/// the error.
fn call<T>(
    target: &AdminTarget,
    rpc: impl AsyncFnOnce(CoreAdminClient<PeerChannel>) -> Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, Box<dyn std::error::Error>> {
    runtime()?.block_on(async {
        let reply = rpc(connect(target).await?).await.map_err(rpc_error)?;
        Ok(reply.into_inner())
    })
}

/// A row of `anima modules` or `anima leases`.
trait Row {
    /// The table's headers.
    const HEADERS: &'static [&'static str];

    /// The row as `--json` prints it.
    fn object(&self) -> serde_json::Value;

    /// The row's cells in the table, under [`Row::HEADERS`].
    fn cells(self) -> Vec<String>;
}

impl Row for ModuleInfo {
    const HEADERS: &'static [&'static str] = &[
        "MODULE", "TYPE", "STATE", "PID", "RESTARTS", "LEASE", "DETAIL",
    ];

    fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "urn": self.urn, "type": self.module_type, "state": self.state, "detail": self.detail,
            "pid": (self.pid != 0).then_some(self.pid), "endpoint": self.endpoint,
            "restarts": self.restarts, "lease_id": (!self.lease_id.is_empty()).then_some(&self.lease_id),
        })
    }

    fn cells(self) -> Vec<String> {
        vec![
            self.urn,
            self.module_type,
            self.state,
            if self.pid == 0 {
                "-".into()
            } else {
                self.pid.to_string()
            },
            self.restarts.to_string(),
            if self.lease_id.is_empty() {
                "-".into()
            } else {
                self.lease_id
            },
            self.detail,
        ]
    }
}

impl Row for LeaseInfo {
    const HEADERS: &'static [&'static str] = &[
        "LEASE", "MODULE", "STATE", "TTL", "RENEWALS", "EXPIRES", "REASON",
    ];

    fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "lease_id": self.lease_id, "module": self.module, "scope": self.scope,
            "issued_ms": self.issued_ms, "expires_ms": self.expires_ms, "ttl_ms": self.ttl_ms,
            "renewals": self.renewals, "state": self.state,
            "reason": (!self.reason.is_empty()).then_some(&self.reason),
        })
    }

    fn cells(self) -> Vec<String> {
        let expires = expiry_cell(&self.state, self.expires_ms, now_ms());
        vec![
            self.lease_id,
            self.module,
            self.state,
            format!("{}ms", self.ttl_ms),
            self.renewals.to_string(),
            expires,
            self.reason,
        ]
    }
}

/// Prints `rows` as a table, or with `--json` as a JSON array.
fn print_rows<R: Row>(target: &AdminTarget, rows: Vec<R>) -> CliResult {
    if target.json {
        let objects: Vec<serde_json::Value> = rows.iter().map(R::object).collect();
        println!("{}", serde_json::to_string(&objects)?);
    } else {
        table(R::HEADERS, rows.into_iter().map(R::cells).collect());
    }
    Ok(())
}

/// `anima modules`
pub fn modules(target: AdminTarget) -> CliResult {
    let reply = call(&target, async |mut admin| {
        admin.list_modules(ListModulesRequest {}).await
    })?;
    print_rows(&target, reply.modules)
}

/// `anima leases`
pub fn leases(target: AdminTarget) -> CliResult {
    let reply = call(&target, async |mut admin| {
        admin.list_leases(ListLeasesRequest {}).await
    })?;
    print_rows(&target, reply.leases)
}

/// `anima revoke`
pub fn revoke(target: AdminTarget, args: RevokeArgs) -> CliResult {
    let request = RevokeLeaseRequest {
        lease_id: args.lease_id.clone(),
        reason: args.reason,
    };
    call(&target, async |mut admin| admin.revoke_lease(request).await)?;
    if !target.json {
        println!("revoked {}", args.lease_id);
    }
    Ok(())
}

/// `anima restart` / `anima stop`
pub fn module_command(target: AdminTarget, args: ModuleArg, restart: bool) -> CliResult {
    let urn = module_urn(&args.module);
    let request = ModuleRequest { urn: urn.clone() };
    call(&target, async |mut admin| {
        if restart {
            admin.restart_module(request).await
        } else {
            admin.stop_module(request).await
        }
    })?;
    if !target.json {
        println!("{} {urn}", if restart { "restarting" } else { "stopping" });
    }
    Ok(())
}

/// `anima events` (follows until interrupted or the Core stops)
pub fn events(target: AdminTarget) -> CliResult {
    runtime()?.block_on(async {
        let mut stream = connect(&target)
            .await?
            .watch_events(WatchEventsRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        while let Some(event) = stream.message().await.map_err(rpc_error)? {
            if target.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "revision": event.revision, "ts_ms": event.ts_ms, "kind": event.kind,
                        "module": event.module,
                        "lease_id": (!event.lease_id.is_empty()).then_some(&event.lease_id),
                        "detail": event.detail,
                    })
                );
            } else {
                println!(
                    "{}  {:<18} {}  {}  {}",
                    event.ts_ms, event.kind, event.module, event.lease_id, event.detail
                );
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::{AdminTarget, DEFAULT_CA, DEFAULT_OPERATOR_CERT, Resolved, expiry_cell};
    use crate::cli::{Cli, Command};

    const NOW: u64 = 1_000_000;

    #[test]
    fn an_active_lease_shows_when_it_expires() {
        assert_eq!(expiry_cell("active", NOW + 18_800, NOW), "in 18.8s");
        assert_eq!(expiry_cell("active", NOW - 1_200, NOW), "1.2s ago");
    }

    #[test]
    fn an_ended_or_expired_lease_never_shows_a_future_expiry() {
        // The bug: an ended lease shown as "in 18.8s".
        assert_eq!(expiry_cell("ended", NOW + 18_800, NOW), "ended");
        assert_eq!(
            expiry_cell("ended", NOW - 3_200, NOW),
            "ended over 3.2s ago"
        );
        assert_eq!(expiry_cell("expired", NOW - 3_200, NOW), "expired 3.2s ago");
        assert_eq!(expiry_cell("expired", NOW + 5, NOW), "expired");
        for state in ["ended", "expired"] {
            for expires in [NOW - 10_000, NOW, NOW + 1, NOW + 60_000] {
                let cell = expiry_cell(state, expires, NOW);
                assert!(cell.starts_with(state), "{state}: {cell}");
                assert!(!cell.contains("in "), "{state}: {cell}");
            }
        }
    }

    /// The operator commands' flags, parsed as `anima modules ARGS`.
    fn target(args: &[&str]) -> AdminTarget {
        let cli = Cli::try_parse_from(["anima", "modules"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Modules(target) => target,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// A directory with dev certificates and an `anima.toml` whose `[admin]`
    /// is `admin`.
    fn config_dir(admin: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        anima_certs::init_dir(
            &dir.path().join("certs/dev"),
            &anima_certs::InitOptions::default(),
        )
        .unwrap();
        let file = dir.path().join("anima.toml");
        let text = format!(
            "[core]\nurn = \"urn:anima:core:dev\"\ncert = \"certs/dev/core-dev.pem\"\n\
             key = \"certs/dev/core-dev.key\"\nca = \"certs/dev/ca.pem\"\n\
             [admin]\noperators = [\"urn:anima:user:dev\"]\n{admin}\n"
        );
        std::fs::write(&file, text).unwrap();
        let file = file.to_string_lossy().into_owned();
        (dir, file)
    }

    #[test]
    fn a_module_problem_does_not_lock_operators_out() {
        // A module whose certificate, contract and command are all gone:
        // `anima config check` refuses the file, but an operator can still
        // reach the Core it describes.
        let (_dir, file) = config_dir(
            "listen = \"127.0.0.1:7712\"\n\
             [[module]]\nurn = \"urn:anima:module:gone\"\ncommand = \"/nowhere/gone\"\n\
             cert = \"certs/dev/gone.pem\"\nkey = \"certs/dev/gone.key\"\n\
             contract = \"/nowhere/module.toml\"",
        );
        assert!(crate::config::load(Path::new(&file)).is_err());
        let resolved = target(&["--config", &file]).resolve().unwrap();
        assert_eq!(resolved.admin, "127.0.0.1:7712");
    }

    #[test]
    fn the_configuration_gives_the_address_and_the_credentials() {
        let (dir, file) = config_dir(
            "listen = \"127.0.0.1:7711\"\n\
             operator_cert = \"certs/dev/user-dev.pem\"\noperator_key = \"certs/dev/user-dev.key\"",
        );
        let certs = std::path::absolute(dir.path()).unwrap().join("certs/dev");
        let resolved = target(&["--config", &file]).resolve().unwrap();
        assert_eq!(
            resolved,
            Resolved {
                admin: "127.0.0.1:7711".into(),
                cert: certs.join("user-dev.pem"),
                key: certs.join("user-dev.key"),
                ca: certs.join("ca.pem"),
            }
        );
        // Flags override the file, one by one.
        let resolved = target(&[
            "--config",
            &file,
            "--admin",
            "127.0.0.1:9",
            "--cert",
            "c.pem",
        ])
        .resolve()
        .unwrap();
        assert_eq!(resolved.admin, "127.0.0.1:9");
        assert_eq!(resolved.cert, Path::new("c.pem"));
        assert_eq!(resolved.key, certs.join("user-dev.key"));
    }

    #[test]
    fn an_unspecified_listen_address_is_dialled_on_loopback() {
        let (_dir, file) = config_dir("listen = \"0.0.0.0:7712\"");
        let resolved = target(&["--config", &file]).resolve().unwrap();
        assert_eq!(resolved.admin, "127.0.0.1:7712");
        // No operator_cert in the file: the dev default.
        assert_eq!(resolved.cert, Path::new(DEFAULT_OPERATOR_CERT));
        let (_dir, file) = config_dir("listen = \"127.0.0.1:0\"");
        let err = target(&["--config", &file]).resolve().unwrap_err();
        assert!(err.to_string().contains("give --admin"), "{err}");
    }

    #[test]
    fn a_bad_configuration_is_an_error_naming_the_file() {
        let (_dir, file) = config_dir("listen = 7700");
        let err = target(&["--config", &file]).resolve().unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("1 problem in {file}")),
            "{err}"
        );
        let err = target(&["--config", "/nowhere/anima.toml"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("/nowhere/anima.toml"), "{err}");
    }

    #[test]
    fn without_a_configuration_the_defaults_apply() {
        let t = target(&["--config", "/dev/null"]);
        // An explicit empty file has no [core]: refused, naming it.
        assert!(t.resolve().unwrap_err().to_string().contains("/dev/null"));
        let t = target(&[]);
        if t.config_file().is_none() {
            let resolved = t.resolve().unwrap();
            assert_eq!(resolved.admin, crate::config::DEFAULT_ADMIN_LISTEN);
            assert_eq!(resolved.ca, Path::new(DEFAULT_CA));
        }
    }

    #[test]
    fn lease_ids_may_start_with_a_dash() {
        let cli = Cli::try_parse_from([
            "anima",
            "revoke",
            "-AbCdEfGhIjKlMnOpQrStUv",
            "--reason",
            "x",
        ])
        .unwrap();
        match cli.command {
            Command::Revoke { args, .. } => assert_eq!(args.lease_id, "-AbCdEfGhIjKlMnOpQrStUv"),
            other => panic!("parsed as {other:?}"),
        }
    }
}
