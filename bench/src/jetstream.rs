//! The plain NATS JetStream baseline of the `messages` group: Debian's
//! `nats-server` started for the run (JetStream on, file storage, TLS with
//! client certificates from the bench's CA, as the Core's link to it would
//! be), and `async-nats` publishing 1 KiB messages, each acknowledged by the
//! server, to a durable pull consumer that acknowledges each one: the same
//! publish→deliver round trip and throughput the mediator's figures measure,
//! without the Core.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use tokio_stream::StreamExt as _;

use crate::procs::{CORE, Res, Setup};
use crate::stats::Samples;

/// What the baseline measured.
pub struct Baseline {
    /// Publish (acknowledged) to delivery, one message at a time.
    pub round_trip: Samples,
    /// Messages a second, `publishers` at once, each delivery acknowledged.
    pub per_s: f64,
}

/// A `nats-server` for the run, stopped on drop.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// `tls://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `nats-server` can be run here.
pub fn installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `nats-server` with JetStream and TLS from the bench's CA.
pub fn start(setup: &Setup) -> Res<Server> {
    let dir = setup.dir.path().join("nats");
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (cert, key) = setup.files(CORE)?;
    let conf = format!(
        "listen: \"127.0.0.1:{port}\"\nmax_payload: 4194304\n\
         jetstream {{ store_dir: \"{store}\" }}\n\
         tls {{ cert_file: \"{cert}\", key_file: \"{key}\", ca_file: \"{ca}\", verify: true }}\n",
        store = dir.join("js").display(),
        cert = cert.display(),
        key = key.display(),
        ca = setup.ca_file().display(),
    );
    std::fs::write(dir.join("nats.conf"), conf)?;
    let log = std::fs::File::create(dir.join("nats.log"))?;
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if server.child.try_wait()?.is_some() || Instant::now() > deadline {
            return Err(format!(
                "nats-server did not start; see {}",
                dir.join("nats.log").display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    server.port = port;
    Ok(server)
}

/// Runs the baseline on `server`: `n` round trips, then `total` messages
/// from `publishers` publishers at once.
pub async fn measure(
    server: &Server,
    setup: &Setup,
    n: usize,
    total: usize,
    publishers: usize,
    payload: usize,
) -> Res<Baseline> {
    let tls = anima_protocol::transport::host_client_config(&setup.core, &setup.trust)?;
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(tls)
        .connect(server.url())
        .await?;
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "bench",
            consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let body = bytes::Bytes::from(vec![b'.'; payload]);

    let mut round_trip = Samples::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        js.publish("bench.m", body.clone()).await?.await?;
        let delivered = tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await?
            .ok_or("the consumer ended")??;
        round_trip.push(t.elapsed());
        delivered.ack().await?;
    }

    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        for _ in 0..total {
            let delivered = tokio::time::timeout(Duration::from_secs(15), messages.next())
                .await?
                .ok_or("the consumer ended")??;
            delivered.ack().await?;
        }
        Res::Ok(started.elapsed())
    });
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let js = js.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in (p..total).step_by(publishers) {
                js.publish("bench.m", body.clone()).await?.await?;
            }
            Res::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = receiving.await??;
    Ok(Baseline {
        round_trip,
        per_s: total as f64 / elapsed.as_secs_f64(),
    })
}
