//! `anima demo`: two processes, one mutually authenticated gRPC call.
//!
//! The parent plays a Core (`urn:anima:core:dev`); it starts a child playing
//! the module `urn:anima:module:hasher`, which serves `grpc.health.v1` behind
//! Anima's mutual-TLS listener and prints the identity of each caller. The
//! parent dials it requiring exactly that module identity, makes one call,
//! prints what it proved about the peer, and closes the child's stdin, which
//! the child takes as its signal to exit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anima_protocol::{
    ClientTls, PeerInfo, PeerPolicy, ServerTls, TlsIdentity, TrustRoot, Urn, UrnKind,
};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::CliResult;

const DEMO_MODULE: &str = "urn:anima:module:hasher";
const READY_PREFIX: &str = "ANIMA-DEMO-READY ";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// `anima demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory of the dev certificates (created with `anima certs init` when missing).
    #[arg(long, default_value = "certs/dev")]
    pub dir: PathBuf,
}

/// `anima demo-server` (internal)
#[derive(Debug, Args)]
pub struct DemoServerArgs {
    /// Directory of the dev certificates.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Runs the parent (Core) half.
pub fn run(args: DemoArgs) -> CliResult {
    if !args.dir.join("ca.pem").exists() {
        let created = anima_certs::init_dir(&args.dir, &anima_certs::InitOptions::default())?;
        println!(
            "created {} dev certificate files in {}",
            created.len(),
            args.dir.display()
        );
    }
    runtime()?.block_on(parent(&args.dir))
}

/// Runs the child (module) half.
pub fn run_server(args: DemoServerArgs) -> CliResult {
    runtime()?.block_on(child(&args.dir))
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn load(dir: &Path, stem: &str) -> Result<(TlsIdentity, TrustRoot), Box<dyn std::error::Error>> {
    let identity = TlsIdentity::from_pem_files(
        &dir.join(format!("{stem}.pem")),
        &dir.join(format!("{stem}.key")),
    )?;
    let trust = TrustRoot::from_pem_file(&dir.join("ca.pem"))?;
    Ok((identity, trust))
}

async fn parent(dir: &Path) -> CliResult {
    let (identity, trust) = load(dir, "core-dev")?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("demo-server")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(STARTUP_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                return Ok::<_, std::io::Error>(Some(addr.to_owned()));
            }
        }
        Ok(None)
    })
    .await
    .map_err(|_| "the module did not report its address within 10 s")??
    .ok_or("the module exited before reporting its address")?;
    // Pass on what the module prints from now on.
    let forward = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{line}");
        }
    });

    let expected: Urn = DEMO_MODULE.parse()?;
    let client = ClientTls::new(identity.clone(), trust);
    let conn = client.dial(&addr, PeerPolicy::exactly(expected)).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(conn.channel());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status();
    println!(
        "core   {}: connected to {} at {addr}",
        identity.urn(),
        conn.peer().urn()
    );
    println!(
        "core   {}: module certificate sha256 {}",
        identity.urn(),
        conn.peer().fingerprint()
    );
    println!(
        "core   {}: health check answered {status:?}",
        identity.urn()
    );

    // Closing stdin tells the module to stop.
    drop(child.stdin.take());
    let exit = tokio::time::timeout(STARTUP_TIMEOUT, child.wait()).await;
    let _ = forward.await;
    match exit {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("the module exited with {s}").into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("the module did not exit within 10 s of being told to".into()),
    }
}

async fn child(dir: &Path) -> CliResult {
    let (identity, trust) = load(dir, "module-hasher")?;
    let tls = ServerTls::new(&identity, &trust, PeerPolicy::kind(UrnKind::Core))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let me = identity.urn().clone();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            if let Some(peer) = req.extensions().get::<PeerInfo>() {
                println!(
                    "module {me}: call from {} ({}, {})",
                    peer.urn(),
                    peer.remote_addr(),
                    peer.connection()
                );
            }
            Ok(req)
        },
    );
    println!("{READY_PREFIX}{addr}");
    let stop = async {
        // EOF (or any error) on stdin: the parent is done or gone.
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(crate::service::ENDPOINT_MAX_CONCURRENT_STREAMS)
        .add_service(health)
        .serve_with_incoming_shutdown(tls.incoming(listener), stop)
        .await?;
    Ok(())
}
