//! The transport: gRPC over mutually authenticated TLS 1.3, and nothing else.
//!
//! This module is the only code in Anima that builds TLS. Servers wrap a
//! [`Listener`] (TCP, or a Unix domain socket for a module on the Core's
//! host) with [`ServerTls::incoming`]; clients open connections with
//! [`ClientTls::dial`] and [`ClientTls::dial_addr`]. Both sides:
//!
//! - speak TLS 1.3 only, ALPN `h2`, with the `ring` provider;
//! - require the peer's certificate to chain to the configured [`TrustRoot`]
//!   and to carry exactly one `urn:anima:` URI SAN (its identity);
//! - can require a particular identity ([`PeerPolicy`]), checked inside the
//!   handshake so a wrong peer never reaches request handling;
//! - give every connection its own [`ConnectionId`] and expose the
//!   authenticated peer as [`PeerInfo`] (request extension on servers,
//!   [`Connection::peer`] on clients).
//!
//! [`probe`] is the one client that lets any server in, for tools that test
//! how a server admits clients; it is built here, by the same code.
//!
//! There is no plaintext path: no function here listens or dials without TLS,
//! and the generated clients have no `connect(url)` helper.

mod admission;
mod cert;
mod channel;
mod client;
mod error;
mod peer;
pub mod probe;
mod refusal;
mod refusal_log;
mod reload;
mod server;
mod socket;
mod tls;

pub use admission::{IdentityLimit, IdentitySlot};
pub use cert::{CertIdentityError, CertPublicKey, Fingerprint, identity_of, not_after, public_key};
pub use channel::{ChannelError, PeerChannel, ResponseFuture, grpc_timeout, parse_grpc_timeout};
pub use client::{
    ClientTls, Connection, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
};
pub use error::TransportError;
pub use peer::{ConnectionId, PeerInfo};
pub use refusal::{Refusal, RefusalReason};
pub use refusal_log::{DEFAULT_REFUSAL_LOG_BURST, DEFAULT_REFUSAL_LOG_INTERVAL, RefusalCount};
pub use reload::{CERT_POLL, CertWatch, ReloadCause};
pub use server::{
    DEFAULT_CLIENT_HELLO_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LISTEN_BACKLOG,
    DEFAULT_MAX_CONNECTIONS_PER_IDENTITY, DEFAULT_MAX_PENDING_HANDSHAKES,
    DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS, ServerTls, TlsConn,
};
pub use socket::{Address, AddressError, Listener, MAX_UNIX_PATH, UNIX_PREFIX};
pub use tls::{PeerPolicy, TlsIdentity, TrustRoot, host_client_config, leaf_fingerprint};
