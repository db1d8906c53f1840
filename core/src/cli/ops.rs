//! The operator commands: `anima modules|leases|revoke|restart|stop|events`,
//! speaking to a running Core's admin API over mTLS.
//!
//! Exit status: 0 on success, 1 when the Core refuses or cannot be reached,
//! 2 for bad usage.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anima_protocol::pb::core_admin_client::CoreAdminClient;
use anima_protocol::pb::{
    ListLeasesRequest, ListModulesRequest, ModuleRequest, RevokeLeaseRequest, WatchEventsRequest,
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

/// `anima modules`
pub fn modules(target: AdminTarget) -> CliResult {
    runtime()?.block_on(async {
        let reply = connect(&target)
            .await?
            .list_modules(ListModulesRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        if target.json {
            let rows: Vec<serde_json::Value> = reply
                .modules
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "urn": m.urn, "type": m.module_type, "state": m.state, "detail": m.detail,
                        "pid": (m.pid != 0).then_some(m.pid), "endpoint": m.endpoint,
                        "restarts": m.restarts, "lease_id": (!m.lease_id.is_empty()).then_some(&m.lease_id),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            table(
                &["MODULE", "TYPE", "STATE", "PID", "RESTARTS", "LEASE", "DETAIL"],
                reply
                    .modules
                    .into_iter()
                    .map(|m| {
                        vec![
                            m.urn,
                            m.module_type,
                            m.state,
                            if m.pid == 0 { "-".into() } else { m.pid.to_string() },
                            m.restarts.to_string(),
                            if m.lease_id.is_empty() { "-".into() } else { m.lease_id },
                            m.detail,
                        ]
                    })
                    .collect(),
            );
        }
        Ok(())
    })
}

/// `anima leases`
pub fn leases(target: AdminTarget) -> CliResult {
    runtime()?.block_on(async {
        let reply = connect(&target)
            .await?
            .list_leases(ListLeasesRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        if target.json {
            let rows: Vec<serde_json::Value> = reply
                .leases
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "lease_id": l.lease_id, "module": l.module, "scope": l.scope,
                        "issued_ms": l.issued_ms, "expires_ms": l.expires_ms, "ttl_ms": l.ttl_ms,
                        "renewals": l.renewals, "state": l.state,
                        "reason": (!l.reason.is_empty()).then_some(&l.reason),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            table(
                &[
                    "LEASE", "MODULE", "STATE", "TTL", "RENEWALS", "EXPIRES", "REASON",
                ],
                reply
                    .leases
                    .into_iter()
                    .map(|l| {
                        vec![
                            l.lease_id,
                            l.module,
                            l.state,
                            format!("{}ms", l.ttl_ms),
                            l.renewals.to_string(),
                            ago(l.expires_ms),
                            l.reason,
                        ]
                    })
                    .collect(),
            );
        }
        Ok(())
    })
}

/// `anima revoke`
pub fn revoke(target: AdminTarget, args: RevokeArgs) -> CliResult {
    runtime()?.block_on(async {
        connect(&target)
            .await?
            .revoke_lease(RevokeLeaseRequest {
                lease_id: args.lease_id.clone(),
                reason: args.reason,
            })
            .await
            .map_err(rpc_error)?;
        if !target.json {
            println!("revoked {}", args.lease_id);
        }
        Ok(())
    })
}

/// `anima restart` / `anima stop`
pub fn module_command(target: AdminTarget, args: ModuleArg, restart: bool) -> CliResult {
    runtime()?.block_on(async {
        let urn = module_urn(&args.module);
        let mut client = connect(&target).await?;
        let request = ModuleRequest { urn: urn.clone() };
        if restart {
            client.restart_module(request).await.map_err(rpc_error)?;
        } else {
            client.stop_module(request).await.map_err(rpc_error)?;
        }
        if !target.json {
            println!("{} {urn}", if restart { "restarting" } else { "stopping" });
        }
        Ok(())
    })
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
