//! The operator commands: `anima modules|leases|revoke|restart|stop|events`,
//! speaking to a running Core's admin API over mTLS.
//!
//! Exit status: 0 on success, 1 when the Core refuses or cannot be reached,
//! 2 for bad usage.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anima_protocol::pb::core_admin_client::CoreAdminClient;
use anima_protocol::pb::{
    LeaseInfo, ListLeasesRequest, ListModulesRequest, ModuleInfo, ModuleRequest,
    RevokeLeaseRequest, WatchEventsRequest,
};
use anima_protocol::{ClientTls, PeerPolicy, TlsIdentity, TrustRoot, UrnKind};
use clap::Args;
use tonic::transport::Channel;

use super::CliResult;

/// Where the Core is and who is asking.
#[derive(Debug, Args, Clone)]
pub struct AdminTarget {
    /// The Core's admin endpoint.
    #[arg(long, default_value = crate::config::DEFAULT_ADMIN_LISTEN, global = true)]
    pub admin: String,
    /// The operator's certificate.
    #[arg(long, default_value = "certs/dev/user-dev.pem", global = true)]
    pub cert: PathBuf,
    /// The operator's key.
    #[arg(long, default_value = "certs/dev/user-dev.key", global = true)]
    pub key: PathBuf,
    /// The CA.
    #[arg(long, default_value = "certs/dev/ca.pem", global = true)]
    pub ca: PathBuf,
    /// Print JSON (one object per line for `events`) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
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
) -> Result<CoreAdminClient<Channel>, Box<dyn std::error::Error>> {
    let identity = TlsIdentity::from_pem_files(&target.cert, &target.key)?;
    let trust = TrustRoot::from_pem_file(&target.ca)?;
    let conn = ClientTls::new(identity, trust)
        .connect_timeout(Duration::from_secs(3))
        .dial(&target.admin, PeerPolicy::kind(UrnKind::Core))
        .await?;
    Ok(CoreAdminClient::new(conn.channel()))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn rpc_error(status: tonic::Status) -> Box<dyn std::error::Error> {
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

fn ago(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if ms >= now {
        format!("in {:.1}s", (ms - now) as f64 / 1000.0)
    } else {
        format!("{:.1}s ago", (now - ms) as f64 / 1000.0)
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
    rpc: impl AsyncFnOnce(CoreAdminClient<Channel>) -> Result<tonic::Response<T>, tonic::Status>,
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
        vec![
            self.lease_id,
            self.module,
            self.state,
            format!("{}ms", self.ttl_ms),
            self.renewals.to_string(),
            ago(self.expires_ms),
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
                        "ts_ms": event.ts_ms, "kind": event.kind, "module": event.module,
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
    use clap::Parser;

    use crate::cli::{Cli, Command};

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
