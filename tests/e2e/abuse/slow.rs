//! Slow unauthenticated sockets (a "slowloris" on the TLS handshake), the
//! resident memory of a process, and latency percentiles.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The first bytes of a ClientHello that announces 512 bytes: a TLS
/// record header and the handshake header. The rest never comes in time.
const HELLO_START: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // legacy_version
];

/// `n` sockets that each connect, start a ClientHello and then trickle one
/// byte every `trickle`, never finishing. When the server closes one, it is
/// opened again after `reopen` (a persistent abuser keeps its count up).
pub struct SlowSockets {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    open: Arc<AtomicUsize>,
    closed_by_server: Arc<AtomicU64>,
}

impl SlowSockets {
    /// Opens `n` slow sockets to `addr` and waits until every one of them
    /// has connected and sent its first bytes (or `limit` passes).
    pub async fn open(addr: SocketAddr, n: usize, limit: Duration) -> Self {
        Self::open_from(addr, &[], n, limit).await
    }

    /// As [`SlowSockets::open`], each socket bound to one of `sources` in
    /// turn (all of them loopback addresses other than 127.0.0.1, so that
    /// an abuser is not the legitimate client's address); none: the
    /// system's choice.
    pub async fn open_from(
        addr: SocketAddr,
        sources: &[IpAddr],
        n: usize,
        limit: Duration,
    ) -> Self {
        let stop = CancellationToken::new();
        let open = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let closed_by_server = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            let (stop, open, started, closed) = (
                stop.clone(),
                open.clone(),
                started.clone(),
                closed_by_server.clone(),
            );
            tasks.spawn(async move {
                let mut first = true;
                while !stop.is_cancelled() {
                    if let Ok(mut tcp) = connect(addr, source).await
                        && tcp.write_all(&HELLO_START).await.is_ok()
                    {
                        open.fetch_add(1, Ordering::SeqCst);
                        if first {
                            started.fetch_add(1, Ordering::SeqCst);
                            first = false;
                        }
                        let server_closed = trickle(&mut tcp, &stop).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                        if server_closed {
                            closed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            });
        }
        let deadline = tokio::time::Instant::now() + limit;
        while started.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        SlowSockets {
            stop,
            tasks,
            open,
            closed_by_server,
        }
    }

    /// Sockets connected and not (yet) closed by the server.
    pub fn now_open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Sockets the server closed so far.
    pub fn closed(&self) -> u64 {
        self.closed_by_server.load(Ordering::SeqCst)
    }

    /// Closes every socket.
    pub async fn close(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A connection to `addr`, from `source` when given.
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Sends one byte every 500 ms until the server closes the socket (true)
/// or the abuser stops (false).
async fn trickle(tcp: &mut TcpStream, stop: &CancellationToken) -> bool {
    let mut buf = [0u8; 256];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            read = tcp.read(&mut buf) => match read {
                // Closed, or an alert before closing: either way, over.
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if tcp.write_all(&[0x00]).await.is_err() {
                    return true;
                }
            }
        }
    }
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
