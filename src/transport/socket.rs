//! What connections run over: TCP, or a Unix domain socket for a module on
//! the Core's own host (PROTOCOL.md §6.1). TLS 1.3 with mutual certificates
//! runs over either; only the socket differs.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

/// How an [`Address`] names a Unix domain socket: `unix:` and an absolute
/// path.
pub const UNIX_PREFIX: &str = "unix:";

/// The longest Unix socket path, in bytes (Linux's `sun_path` holds 108
/// bytes with the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Where a peer listens: `ip:port`, or `unix:/absolute/path`.
///
/// ```
/// use anima_protocol::transport::Address;
///
/// let tcp: Address = "127.0.0.1:7001".parse()?;
/// let local: Address = "unix:/run/user/1000/anima/42/echo.sock".parse()?;
/// assert_eq!(tcp.to_string(), "127.0.0.1:7001");
/// assert_eq!(local.to_string(), "unix:/run/user/1000/anima/42/echo.sock");
/// assert!("unix:relative.sock".parse::<Address>().is_err());
/// # Ok::<(), anima_protocol::transport::AddressError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket's path (absolute, at most [`MAX_UNIX_PATH`]
    /// bytes).
    Unix(PathBuf),
}

/// Why a text is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Neither `ip:port` nor `unix:PATH`.
    #[error("{0:?} is neither ip:port nor unix:/absolute/path")]
    Malformed(String),
    /// A Unix socket path that is relative, too long, or holds a NUL byte.
    #[error("unix socket path {path:?}: {why}")]
    BadPath {
        /// The path given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Address {
    /// A Unix socket address for `path`, checked as [`Address::from_str`]
    /// checks one.
    pub fn unix(path: impl Into<PathBuf>) -> Result<Self, AddressError> {
        let path = path.into();
        let bad = |why| AddressError::BadPath {
            path: path.display().to_string(),
            why,
        };
        if !path.is_absolute() {
            return Err(bad("not absolute"));
        }
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.len() > MAX_UNIX_PATH {
            return Err(bad("longer than 107 bytes"));
        }
        if bytes.contains(&0) {
            return Err(bad("holds a NUL byte"));
        }
        Ok(Address::Unix(path))
    }

    /// The TCP address, if this is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(a) => Some(*a),
            Address::Unix(_) => None,
        }
    }

    /// Whether this is a Unix socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Address::Unix(_))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => a.fmt(f),
            Address::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// `ip:port` (`[v6]:port` for IPv6), or `unix:` followed by an absolute
    /// path of at most [`MAX_UNIX_PATH`] bytes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(UNIX_PREFIX) {
            Some(path) => Address::unix(path),
            None => s
                .parse()
                .map(Address::Tcp)
                .map_err(|_| AddressError::Malformed(s.to_owned())),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

/// A listening socket for [`ServerTls::incoming`](super::ServerTls::incoming).
///
/// One bound by [`Listener::bind`] on a Unix socket path creates the socket
/// readable and writable by its owner only, and removes it when dropped.
#[derive(Debug)]
pub struct Listener {
    inner: Bound,
    /// The socket file this listener created, removed on drop.
    unlink: Option<PathBuf>,
}

#[derive(Debug)]
enum Bound {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

impl Listener {
    /// Listens on `addr`. A Unix socket is created at its path (which must
    /// not exist), mode 0600, and removed when the listener is dropped.
    pub async fn bind(addr: &Address) -> io::Result<Self> {
        match addr {
            Address::Tcp(a) => Ok(TcpListener::bind(a).await?.into()),
            #[cfg(unix)]
            Address::Unix(path) => {
                use std::os::unix::fs::PermissionsExt;
                let listener = UnixListener::bind(path)?;
                let created = Listener {
                    inner: Bound::Unix(listener),
                    unlink: Some(path.clone()),
                };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(created)
            }
            #[cfg(not(unix))]
            Address::Unix(_) => Err(no_unix_sockets()),
        }
    }

    /// Where it listens.
    pub fn local_address(&self) -> io::Result<Address> {
        match &self.inner {
            Bound::Tcp(l) => l.local_addr().map(Address::Tcp),
            #[cfg(unix)]
            Bound::Unix(l) => unix_address(&l.local_addr()?),
        }
    }

    /// Sets the listen backlog (listening again on a listening socket only
    /// sets its backlog).
    pub(crate) fn set_backlog(&self, backlog: i32) -> io::Result<()> {
        match &self.inner {
            Bound::Tcp(l) => socket2::SockRef::from(l).listen(backlog),
            #[cfg(unix)]
            Bound::Unix(l) => socket2::SockRef::from(l).listen(backlog),
        }
    }

    /// The next connection: its socket, the peer's address (for a Unix
    /// socket, the listener's own path: local peers are unnamed) and where
    /// it comes from, for the pending-handshake table.
    pub(crate) async fn accept(&self) -> io::Result<Accepted> {
        match &self.inner {
            Bound::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok(Accepted {
                    local: tcp.local_addr().map(Address::Tcp),
                    socket: Socket::Tcp(tcp),
                    peer: Address::Tcp(peer),
                    origin: Origin::Ip(peer.ip()),
                })
            }
            #[cfg(unix)]
            Bound::Unix(l) => {
                let (unix, _) = l.accept().await?;
                let origin = Origin::Uid(unix.peer_cred().map_or(u32::MAX, |c| c.uid()));
                let local = unix.local_addr().and_then(|a| unix_address(&a));
                Ok(Accepted {
                    peer: local
                        .as_ref()
                        .map_or_else(|_| Address::Unix(PathBuf::new()), Clone::clone),
                    local,
                    socket: Socket::Unix(unix),
                    origin,
                })
            }
        }
    }

    /// Whether an accept error means the listening socket is gone (closed,
    /// shut down, not listening) rather than one connection or a passing
    /// shortage.
    pub(crate) fn failed_for_good(&self, e: &io::Error) -> bool {
        // EINVAL: the socket is not listening (any more), e.g. shut down.
        e.kind() == io::ErrorKind::InvalidInput || self.local_address().is_err()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = self.unlink.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener {
            inner: Bound::Tcp(l),
            unlink: None,
        }
    }
}

#[cfg(unix)]
impl From<UnixListener> for Listener {
    /// Listens on `l`; its socket file stays the caller's to remove.
    fn from(l: UnixListener) -> Self {
        Listener {
            inner: Bound::Unix(l),
            unlink: None,
        }
    }
}

#[cfg(unix)]
fn unix_address(a: &tokio::net::unix::SocketAddr) -> io::Result<Address> {
    Ok(Address::Unix(
        a.as_pathname()
            .map(Path::to_path_buf)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unnamed unix socket"))?,
    ))
}

#[cfg(not(unix))]
fn no_unix_sockets() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "unix domain sockets are not available on this platform",
    )
}

/// One accepted connection, before its handshake.
pub(crate) struct Accepted {
    pub(crate) socket: Socket,
    pub(crate) peer: Address,
    pub(crate) local: io::Result<Address>,
    pub(crate) origin: Origin,
}

/// Where a pending handshake comes from: one remote IP address, or one local
/// user (the peer's uid on a Unix socket). Each has its own share of the
/// pending-handshake table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
    Ip(IpAddr),
    Uid(u32),
}

/// A connected socket, TCP or Unix.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Socket {
    /// Connects to `addr` (TCP with `TCP_NODELAY`); also returns this
    /// side's address.
    pub(crate) async fn connect(addr: &Address) -> io::Result<(Socket, Address)> {
        match addr {
            Address::Tcp(a) => {
                let tcp = TcpStream::connect(a).await?;
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr()?;
                Ok((Socket::Tcp(tcp), Address::Tcp(local)))
            }
            #[cfg(unix)]
            Address::Unix(path) => {
                let unix = UnixStream::connect(path).await?;
                // The client's end is unnamed: it is on the server's path.
                Ok((Socket::Unix(unix), Address::Unix(path.clone())))
            }
            #[cfg(not(unix))]
            Address::Unix(_) => Err(no_unix_sockets()),
        }
    }
}

/// Delegates to the socket inside, whichever it is.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Socket::Tcp($s) => $e,
            #[cfg(unix)]
            Socket::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Socket::Unix(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_both_kinds() {
        for text in [
            "127.0.0.1:4000",
            "[::1]:65535",
            "unix:/run/anima/1/echo.sock",
        ] {
            let parsed: Address = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert!("unix:/x".parse::<Address>().unwrap().is_unix());
        assert_eq!(
            "10.0.0.1:9".parse::<Address>().unwrap().tcp(),
            Some("10.0.0.1:9".parse().unwrap())
        );
    }

    #[test]
    fn bad_addresses_say_why() {
        let long = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH));
        for (text, why) in [
            ("localhost:80", "neither"),
            ("unix:", "not absolute"),
            ("unix:run/x.sock", "not absolute"),
            (long.as_str(), "longer than 107 bytes"),
            ("unix:/a\0b", "NUL"),
        ] {
            let e = text.parse::<Address>().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let longest = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH - 1));
        assert!(longest.parse::<Address>().is_ok());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_bound_unix_listener_is_owner_only_and_gone_when_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::unix(dir.path().join("m.sock")).unwrap();
        let Address::Unix(path) = &addr else {
            unreachable!()
        };
        let listener = Listener::bind(&addr).await.unwrap();
        assert_eq!(listener.local_address().unwrap(), addr);
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (client, _) = Socket::connect(&addr).await.unwrap();
        let accepted = listener.accept().await.unwrap();
        assert_eq!(accepted.peer, addr);
        // Our own uid: the one that owns the directory we just made.
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap());
        assert_eq!(accepted.origin, Origin::Uid(uid));
        drop((client, accepted));
        // A second listener on the same path is refused while the first lives.
        assert!(Listener::bind(&addr).await.is_err());
        drop(listener);
        assert!(!path.exists());
    }
}
