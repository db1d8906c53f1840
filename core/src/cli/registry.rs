//! `anima registry`: the providers of an interface and their lifecycle
//! events, as the Core's registry (`anima.v1.Registry`) answers its
//! operators — every provider, whatever the permissions.

use anima_protocol::pb::registry_client::RegistryClient;
use anima_protocol::pb::{DiscoverRequest, Provider, RegistryWatchRequest, watch_item};
use clap::Subcommand;

use super::CliResult;
use super::ops::{AdminTarget, endpoint, rpc_error, runtime};

/// `anima registry …`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// List the providers of an interface, with state, version and route.
    Discover {
        /// The interface, e.g. `anima.sample/kv`.
        interface: String,
        /// A semver range of versions, e.g. `>=1.0, <2` [default: any].
        #[arg(long, default_value = "")]
        range: String,
        /// Where the Core is.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Follow the lifecycle events of the providers of interfaces.
    Watch {
        /// The interfaces (at least one).
        #[arg(required = true)]
        interfaces: Vec<String>,
        /// Resume after this revision (as printed): nothing is missed, or a
        /// snapshot comes first [default: from now on].
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// The epoch that revision belongs to (as printed).
        #[arg(long, default_value = "")]
        epoch: String,
        /// Where the Core is.
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Runs `anima registry …`.
pub fn run(cmd: RegistryCommand) -> CliResult {
    match cmd {
        RegistryCommand::Discover {
            interface,
            range,
            target,
        } => discover(interface, range, &target),
        RegistryCommand::Watch {
            interfaces,
            since,
            epoch,
            target,
        } => watch(interfaces, since, epoch, &target),
    }
}

fn discover(interface: String, range: String, target: &AdminTarget) -> CliResult {
    runtime()?.block_on(async {
        let reply = RegistryClient::new(endpoint(target).await?)
            .discover(DiscoverRequest { interface, range })
            .await
            .map_err(rpc_error)?
            .into_inner();
        if target.json {
            for provider in &reply.providers {
                println!("{}", provider_json(provider, reply.revision, &reply.epoch));
            }
        } else {
            println!(
                "{:<36} {:<20} {:<10} {:<12} METHODS",
                "MODULE", "INTERFACE", "VERSION", "STATE"
            );
            for p in &reply.providers {
                let methods = p.route.as_ref().map_or(0, |r| r.methods.len());
                println!(
                    "{:<36} {:<20} {:<10} {:<12} {methods}",
                    p.module, p.interface, p.version, p.state
                );
            }
            println!("revision {} epoch {}", reply.revision, reply.epoch);
        }
        Ok(())
    })
}

fn watch(interfaces: Vec<String>, since: u64, epoch: String, target: &AdminTarget) -> CliResult {
    runtime()?.block_on(async {
        let mut stream = RegistryClient::new(endpoint(target).await?)
            .watch(RegistryWatchRequest {
                interfaces,
                since_revision: since,
                epoch,
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        while let Some(item) = stream.message().await.map_err(rpc_error)? {
            match item.item {
                Some(watch_item::Item::Event(e)) if target.json => println!(
                    "{}",
                    serde_json::json!({
                        "revision": e.revision, "epoch": e.epoch, "ts_ms": e.ts_ms,
                        "kind": e.kind, "module": e.module,
                        "lease_id": (!e.lease_id.is_empty()).then_some(&e.lease_id),
                        "detail": e.detail, "provides": e.provides,
                    })
                ),
                Some(watch_item::Item::Event(e)) => println!(
                    "{:>6}  {}  {:<18} {}  {}  {}",
                    e.revision, e.ts_ms, e.kind, e.module, e.lease_id, e.detail
                ),
                Some(watch_item::Item::Snapshot(s)) => {
                    for p in &s.providers {
                        if target.json {
                            println!("{}", provider_json(p, s.revision, &s.epoch));
                        } else {
                            println!(
                                "{:>6}  snapshot {} {} {} {}",
                                s.revision, p.module, p.interface, p.version, p.state
                            );
                        }
                    }
                }
                None => {}
            }
        }
        Ok(())
    })
}

fn provider_json(p: &Provider, revision: u64, epoch: &str) -> serde_json::Value {
    serde_json::json!({
        "module": p.module, "interface": p.interface, "version": p.version,
        "state": p.state, "revision": revision, "epoch": epoch,
        "route": p.route.as_ref().map(|r| serde_json::json!({
            "core": r.core, "methods": r.methods,
            "pin": { r.pin_header.clone(): r.pin_value },
        })),
    })
}
