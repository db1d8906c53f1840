//! A hostile HTTP/2 client, written from frames: it reads the server's
//! SETTINGS, then opens request streams (HEADERS without END_STREAM) that it
//! never finishes, ignoring any limit the server announced, and counts what
//! the server does with each. A well-behaved client (tonic, hyper) would
//! queue streams beyond the limit instead, so it could not show whether the
//! server enforces it.
//!
//! It dials with the transport's probing client configuration
//! (`anima_protocol::transport::probe`): the given certificate, any server
//! certificate accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anima_protocol::transport::probe;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;

use anima_tests::PATIENCE;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

/// What the server did with the streams of one connection.
#[derive(Debug, Default)]
pub struct Tally {
    /// Streams reset with `REFUSED_STREAM` (over the stream limit).
    pub refused: AtomicU64,
    /// Streams reset with another code.
    pub reset: AtomicU64,
    /// Streams the server answered and ended (e.g. a call refused by the
    /// application: trailers-only with END_STREAM).
    pub answered: AtomicU64,
    /// The server sent GOAWAY or closed the connection.
    pub closed: AtomicBool,
}

impl Tally {
    /// Streams the server has let go of, one way or another.
    pub fn done(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
            + self.reset.load(Ordering::SeqCst)
            + self.answered.load(Ordering::SeqCst)
    }
}

/// One hostile HTTP/2 connection.
pub struct RawH2 {
    writer: Arc<Mutex<WriteHalf<TlsStream<TcpStream>>>>,
    /// The server's first SETTINGS frame, as (identifier, value) pairs.
    pub settings: Vec<(u16, u32)>,
    /// What the server did with this connection's streams.
    pub tally: Arc<Tally>,
    next_stream: u32,
    reader: tokio::task::JoinHandle<()>,
}

/// A client certificate and key (PEM).
pub struct ClientCert {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl ClientCert {
    /// Reads `<stem>.pem` and `<stem>.key` from `dir`.
    pub fn from_dir(dir: &std::path::Path, stem: &str) -> Self {
        ClientCert {
            cert: std::fs::read(dir.join(format!("{stem}.pem"))).unwrap(),
            key: std::fs::read(dir.join(format!("{stem}.key"))).unwrap(),
        }
    }
}

/// Dials `addr` over TLS 1.3 (ALPN h2) presenting `cert`, or no certificate.
pub async fn tls(
    addr: SocketAddr,
    cert: Option<&ClientCert>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let pem = cert.map(|c| probe::ProbeCert {
        cert_pem: String::from_utf8_lossy(&c.cert).into_owned(),
        key_pem: String::from_utf8_lossy(&c.key).into_owned(),
    });
    let config = probe::any_server_config(pem.as_ref(), true).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

impl RawH2 {
    /// Connects, sends the preface and empty SETTINGS, and waits for the
    /// server's SETTINGS. Fails when the server closes the connection first.
    pub async fn connect(addr: SocketAddr, cert: &ClientCert) -> std::io::Result<RawH2> {
        let stream = tls(addr, Some(cert)).await?;
        let (mut read, mut write) = tokio::io::split(stream);
        write.write_all(PREFACE).await?;
        write.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        write.flush().await?;
        let settings = tokio::time::timeout(PATIENCE, async {
            loop {
                let (kind, flags, _, payload) = read_frame(&mut read).await?;
                if kind == SETTINGS && flags & ACK == 0 {
                    return Ok::<_, std::io::Error>(
                        payload
                            .chunks_exact(6)
                            .map(|c| {
                                (
                                    u16::from_be_bytes([c[0], c[1]]),
                                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                                )
                            })
                            .collect::<Vec<_>>(),
                    );
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        write.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
        write.flush().await?;
        let writer = Arc::new(Mutex::new(write));
        let tally = Arc::new(Tally::default());
        let reader = tokio::spawn(pump(read, writer.clone(), tally.clone()));
        Ok(RawH2 {
            writer,
            settings,
            tally,
            next_stream: 1,
            reader,
        })
    }

    /// The SETTINGS_MAX_CONCURRENT_STREAMS the server announced, if any.
    pub fn max_concurrent_streams(&self) -> Option<u32> {
        self.settings
            .iter()
            .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
            .map(|(_, v)| *v)
    }

    /// Opens `n` gRPC request streams to `path` and leaves them open: the
    /// headers are sent, the request message never is.
    pub async fn hold(&mut self, path: &str, n: usize) -> std::io::Result<()> {
        let block = request_headers(path);
        let mut batch = Vec::with_capacity(64 * (block.len() + 9));
        for i in 0..n {
            batch.extend_from_slice(&frame(HEADERS, END_HEADERS, self.next_stream, &block));
            self.next_stream += 2;
            if batch.len() > 32 * 1024 || i + 1 == n {
                let mut w = self.writer.lock().await;
                w.write_all(&batch).await?;
                w.flush().await?;
                batch.clear();
            }
        }
        Ok(())
    }

    /// Closes the connection (TCP FIN after a TLS close_notify).
    pub async fn close(self) {
        let mut w = self.writer.lock().await;
        let _ = w.shutdown().await;
        drop(w);
        self.reader.abort();
    }
}

/// Reads frames until the connection ends, answering PING and SETTINGS and
/// counting what happens to the streams.
async fn pump(
    mut read: ReadHalf<TlsStream<TcpStream>>,
    writer: Arc<Mutex<WriteHalf<TlsStream<TcpStream>>>>,
    tally: Arc<Tally>,
) {
    // Each stream counts once, by what happened to it first (an answered
    // stream is usually reset afterwards too).
    let mut finished = std::collections::HashSet::new();
    loop {
        let Ok((kind, flags, stream, payload)) = read_frame(&mut read).await else {
            break;
        };
        match kind {
            RST_STREAM if payload.len() == 4 && finished.insert(stream) => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if code == REFUSED_STREAM {
                    tally.refused.fetch_add(1, Ordering::SeqCst);
                } else {
                    tally.reset.fetch_add(1, Ordering::SeqCst);
                }
            }
            HEADERS | DATA if flags & END_STREAM != 0 && stream != 0 && finished.insert(stream) => {
                tally.answered.fetch_add(1, Ordering::SeqCst);
            }
            PING if flags & ACK == 0 => {
                let mut w = writer.lock().await;
                let _ = w.write_all(&frame(PING, ACK, 0, &payload)).await;
                let _ = w.flush().await;
            }
            SETTINGS if flags & ACK == 0 => {
                let mut w = writer.lock().await;
                let _ = w.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                let _ = w.flush().await;
            }
            GOAWAY => break,
            _ => {}
        }
    }
    tally.closed.store(true, Ordering::SeqCst);
}

async fn read_frame(
    read: &mut ReadHalf<TlsStream<TcpStream>>,
) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block for a gRPC POST to `path`: static-table entries and
/// literals without indexing (no Huffman coding, no dynamic table).
fn request_headers(path: &str) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 127, "short strings only");
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = vec![0x83, 0x87]; // :method POST, :scheme https
    out.push(0x04); // :path, literal without indexing (static name 4)
    string(&mut out, path);
    out.push(0x01); // :authority (static name 1)
    string(&mut out, "anima.abuse");
    out.extend_from_slice(&[0x0f, 0x10]); // content-type (static name 31)
    string(&mut out, "application/grpc");
    out.push(0x00); // te: trailers (new name)
    string(&mut out, "te");
    string(&mut out, "trailers");
    out
}
