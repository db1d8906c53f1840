//! Transport rows: T1 (gRPC over mutual TLS 1.3 with ALPN `h2`, one
//! listener), T2 (no plaintext) and T3 (certificates and identities the
//! module must refuse, a user identity that offers a lease).

use std::net::SocketAddr;
use std::time::Duration;

use anima_protocol::lease::Reason;
use anima_protocol::{Connection, UrnKind};
use tokio::io::AsyncReadExt as _;

use super::Run;
use super::admission::refused;
use crate::error::ToolError;
use crate::rawtls;
use crate::report::Report;
use crate::session::{self, OfferKind, PATIENCE};
use crate::target::listening_ports;

/// T2: a plaintext HTTP/2 client gets no service.
pub(crate) async fn plaintext_check(r: &mut Report, addr: SocketAddr) {
    match plaintext_served(addr).await {
        Ok(false) => r.pass("T2", "a plaintext HTTP/2 preface got no HTTP/2 answer"),
        Ok(true) => r.fail(
            "T2",
            "the module answered a plaintext HTTP/2 client with SETTINGS",
        ),
        Err(e) => r.fail("T2", format!("plaintext probe: {e}")),
    }
}

impl Run<'_> {
    /// T3: certificates the module must refuse.
    pub(crate) async fn certificate_checks(&self, r: &mut Report, addr: SocketAddr) {
        // T3: certificates the module must refuse. The control case (a
        // valid certificate, same probe) must be served, or the probe proves
        // nothing.
        match rawtls::admission(addr, Some(&self.ids().valid)).await {
            Ok(rawtls::Admission::Served) => {
                for (what, cert) in &self.ids().refused {
                    match rawtls::admission(addr, cert.as_ref()).await {
                        Ok(rawtls::Admission::HandshakeRefused(e)) => {
                            r.pass("T3", format!("{what}: refused at the handshake ({e})"));
                        }
                        Ok(rawtls::Admission::CallRefused(e)) => r.pass(
                            "T3",
                            format!("{what}: handshake completed, but the call was refused ({e})"),
                        ),
                        Ok(rawtls::Admission::Served) => {
                            r.fail(
                                "T3",
                                format!("{what}: ACCEPTED (ModuleAdmin/Status answered)"),
                            );
                        }
                        Err(e) => r.fail("T3", format!("{what}: probe failed: {e}")),
                    }
                }
            }
            Ok(other) => r.fail(
                "T3",
                format!(
                    "a valid operator certificate was not served by the raw TLS probe: {other:?}"
                ),
            ),
            Err(e) => r.fail("T3", format!("raw TLS probe: {e}")),
        }
    }

    /// T1: mutual TLS with the module's URN, and (when the process is
    /// known) one listener. The connection, for the checks that follow.
    pub(crate) async fn mtls_checks(
        &self,
        r: &mut Report,
        addr: SocketAddr,
        pid: Option<u32>,
    ) -> Option<Connection> {
        // T1: mutual TLS with the module's URN; one listener.
        let conn = match self.dial(&self.ids().operator, addr).await {
            Ok(conn) => {
                r.pass(
                    "T1",
                    format!(
                        "mutual TLS 1.3 with {} (its certificate names it)",
                        self.module
                    ),
                );
                conn
            }
            Err(e) => {
                r.fail(
                    "T1",
                    format!("cannot connect with a valid certificate: {e}"),
                );
                return None;
            }
        };
        if let Some(pid) = pid {
            match listening_ports(pid) {
                Some(ports) if ports == [addr.port()] => {
                    r.pass(
                        "T1",
                        format!("process {pid} listens on {} only", addr.port()),
                    );
                }
                Some(ports) => r.fail(
                    "T1",
                    format!(
                        "process {pid} listens on TCP ports {ports:?}; only {} is the module's",
                        addr.port()
                    ),
                ),
                None => {}
            }
        }
        Some(conn)
    }

    /// T1: TLS 1.3 only, ALPN `h2` required.
    pub(crate) async fn transport_checks(&self, r: &mut Report, addr: SocketAddr) {
        match rawtls::negotiates_tls12(addr).await {
            Ok(false) => r.pass("T1", "a TLS 1.2-only ClientHello is refused"),
            Ok(true) => r.fail(
                "T1",
                "the module negotiated TLS 1.2 (a ServerHello to a TLS 1.2-only ClientHello)",
            ),
            Err(e) => r.fail("T1", format!("TLS 1.2 probe: {e}")),
        }
        match rawtls::admission_alpn(addr, Some(&self.ids().valid), false).await {
            Ok(rawtls::Admission::Served) => r.fail(
                "T1",
                "a client that negotiated no ALPN was served (PROTOCOL.md §1: ALPN MUST be h2)",
            ),
            Ok(other) => r.pass(
                "T1",
                format!("a client without ALPN h2 is refused ({other:?})"),
            ),
            Err(e) => r.fail("T1", format!("ALPN probe: {e}")),
        }
    }

    /// T3: a user identity the module lets in (an operator) cannot lease.
    pub(crate) async fn user_offer(&self, r: &mut Report, addr: SocketAddr) {
        let operator = self.ids().operator.clone();
        if operator.identity.urn().kind() != UrnKind::User {
            // Endpoint mode: the tool cannot name the module's operators,
            // and no other user gets past the handshake (checked above).
            return;
        }
        let answer = match self.dial(&operator, addr).await {
            Ok(conn) => {
                session::offer(
                    conn,
                    &operator.identity,
                    &self.declared.clone(),
                    self.ttl(),
                    OfferKind::Honest,
                )
                .await
            }
            Err(e) => Err(e),
        };
        refused(
            r,
            "T3",
            "an offer from a user identity (an operator)",
            Reason::IdentityMismatch,
            answer,
        );
    }
}

/// Sends an HTTP/2 client preface in clear and reports whether the peer
/// answered with an HTTP/2 SETTINGS frame (that is, served plaintext).
async fn plaintext_served(addr: SocketAddr) -> Result<bool, ToolError> {
    // Preface, then an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut stream =
        rawtls::connect_and_send(addr, PATIENCE, &hello, "send an HTTP/2 preface in clear to")
            .await?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Err(_) | Ok(Err(_)) | Ok(Ok(0)) => Ok(false),
        // A SETTINGS frame header: type 4 at byte 3.
        Ok(Ok(n)) => Ok(n >= 4 && buf[3] == 4 && buf[0] != 0x15 && buf[0] != 0x16),
    }
}
