//! A Core built by hand from the protocol crate, able to misbehave on
//! purpose: it holds its copy of the lease (and so the proof key) and the raw
//! control stream, so the tool can forge, replay, refuse and go silent.

use std::time::{Duration, Instant, SystemTime};

use anima_protocol::control::{ControlStream, Elapsed, Granted, HandshakeError, SignedOffer};
use anima_protocol::lease::{
    self, Lease, LeaseClaims, LeaseRequest, LeaseSigner, PROOF_HEADER, Reason, Scope, reason_of,
};
use anima_protocol::pb::control_frame::Frame;
use anima_protocol::pb::module_admin_client::ModuleAdminClient;
use anima_protocol::pb::probe_client::ProbeClient;
use anima_protocol::pb::{
    ModuleStatus, ProbeReading, ReadRequest, Refusal, ShutdownRequest, SignedToken, StatusRequest,
    TouchRequest, WatchRequest,
};
use anima_protocol::transport::Address;
use anima_protocol::{ClientTls, Connection, PeerPolicy, SystemClock, TlsIdentity, TrustRoot, Urn};
use tonic::Status;

use crate::error::ToolError;

/// How long the tool waits for any single answer from the module.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The probe's method paths (PROTOCOL.md §8).
pub const TOUCH: &str = "/anima.v1.Probe/Touch";
/// See [`TOUCH`].
pub const READ: &str = "/anima.v1.Probe/Read";
/// See [`TOUCH`]: the probe's server stream (optional).
pub const WATCH: &str = "/anima.v1.Probe/Watch";

/// Who the tool is on one connection.
#[derive(Clone)]
pub struct Actor {
    /// The certificate and key presented.
    pub identity: TlsIdentity,
    /// The CA the module's certificate must chain to.
    pub trust: TrustRoot,
}

impl Actor {
    /// Dials the module, which must present `module`'s URN.
    pub async fn dial(
        &self,
        addr: impl Into<Address>,
        module: &Urn,
    ) -> Result<Connection, ToolError> {
        Ok(ClientTls::new(self.identity.clone(), self.trust.clone())
            .connect_timeout(PATIENCE)
            .handshake_timeout(PATIENCE)
            .dial_addr(addr, PeerPolicy::exactly(module.clone()))
            .await?)
    }
}

/// What the module answered to an offer.
pub enum Answer {
    /// A grant that verified: the lease is open.
    Granted(Box<Session>),
    /// A `refuse` frame.
    Refused(Refusal),
    /// Anything else (a grant that did not verify, another frame, silence,
    /// a broken stream), described.
    Other(String),
}

/// One connection with its control stream and, once granted, the Core's
/// copy of the lease.
pub struct Session {
    /// The connection.
    pub conn: Connection,
    signer: LeaseSigner,
    /// The Core's copy of the lease.
    pub lease: Lease,
    /// The module's grant, decoded (unverified view for reporting).
    pub grant: LeaseClaims,
    stream: ControlStream,
    seq: u64,
}

/// How an offer is built.
pub enum OfferKind {
    /// An honest offer.
    Honest,
    /// Signed by another key than the certificate's.
    ForgedSignature,
    /// An honest offer with its claims changed by the function, then signed
    /// with the certificate's key.
    Tampered(fn(&mut LeaseClaims)),
}

/// Opens the control stream on `conn` and sends an offer for `scope`/`ttl`,
/// through the protocol crate's handshake driver; `kind` is the hook that
/// makes the offer dishonest.
pub async fn offer(
    conn: Connection,
    identity: &TlsIdentity,
    scope: &Scope,
    ttl: Duration,
    kind: OfferKind,
) -> Result<Answer, ToolError> {
    let signer = LeaseSigner::from_identity(identity)?;
    let request = LeaseRequest {
        scope: scope.clone(),
        ttl,
    };
    let mut offer = SignedOffer::new(&signer, &conn, request, &SystemClock)?;
    tamper(&mut offer, &signer, kind)?;
    let answer = offer
        .send(&conn, PATIENCE)
        .await
        .and_then(|offered| offered.settle(&signer, SystemTime::now()));
    Ok(match answer {
        Ok(Granted {
            lease,
            grant,
            stream,
        }) => {
            let grant = decode_claims(&grant).ok_or(ToolError::Undecodable("grant"))?;
            Answer::Granted(Box::new(Session {
                conn,
                signer,
                lease,
                grant,
                stream,
                seq: 0,
            }))
        }
        Err(HandshakeError::Refused(refusal)) => Answer::Refused(refusal),
        Err(HandshakeError::Rpc(status)) => {
            Answer::Other(format!("control stream: {}", describe(&status)))
        }
        Err(other) => Answer::Other(other.to_string()),
    })
}

/// Makes `offer` what `kind` asks for.
fn tamper(offer: &mut SignedOffer, signer: &LeaseSigner, kind: OfferKind) -> Result<(), ToolError> {
    match kind {
        OfferKind::Honest => Ok(()),
        OfferKind::ForgedSignature => {
            // Same claims, signed by a key the certificate does not hold.
            let forger = signer.impostor()?;
            offer.tamper(|jws| resign(jws, &forger, |_| {}))
        }
        OfferKind::Tampered(change) => offer.tamper(|jws| resign(jws, signer, change)),
    }
}

/// The claims of `jws` changed by `change` and signed by `signer`.
fn resign(
    jws: &str,
    signer: &LeaseSigner,
    change: impl FnOnce(&mut LeaseClaims),
) -> Result<String, ToolError> {
    let mut claims: LeaseClaims = decode_token(jws).ok_or(ToolError::Undecodable("offer"))?;
    change(&mut claims);
    Ok(lease::sign_claims(signer, &claims)?)
}

/// The claims of a JWS, without verifying it (for reports only).
pub fn decode_claims(jws: &str) -> Option<LeaseClaims> {
    decode_token(jws)
}

/// The claims of any JWS, without verifying it (for reports and for
/// tampering with the tool's own tokens).
pub fn decode_token<T: serde::de::DeserializeOwned>(jws: &str) -> Option<T> {
    use base64::Engine as _;
    let payload = jws.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A status as `CODE REASON: message` for evidence.
pub fn describe(status: &Status) -> String {
    let reason = reason_of(status).map_or("-", |r| r.as_str());
    format!("{:?} {reason}: {}", status.code(), status.message())
}

/// Whether `status` carries `reason`.
pub fn has_reason(status: &Status, reason: Reason) -> bool {
    reason_of(status) == Some(reason)
}

impl Session {
    /// The next proof sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A genuine proof for `method` with a fresh sequence number.
    pub fn proof(&mut self, method: &str) -> String {
        let seq = self.next_seq();
        self.lease.proof_key().proof(seq, method)
    }

    /// `Probe/Touch` with a fresh proof.
    pub async fn touch(&mut self, hold_ms: u32) -> Result<ProbeReading, Status> {
        let proof = self.proof(TOUCH);
        touch(&self.conn, Some(proof), hold_ms).await
    }

    /// `Probe/Watch` with a fresh proof: the stream of readings.
    pub async fn watch(
        &mut self,
        every_ms: u32,
        count: u32,
    ) -> Result<tonic::Streaming<ProbeReading>, Status> {
        let mut request = tonic::Request::new(WatchRequest { every_ms, count });
        add_proof(&mut request, Some(self.proof(WATCH)));
        let mut client = ProbeClient::new(self.conn.channel());
        tokio::time::timeout(PATIENCE, client.watch(request))
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")))
            .map(tonic::Response::into_inner)
    }

    /// `Probe/Read` with a fresh proof.
    pub async fn read(&mut self) -> Result<ProbeReading, Status> {
        let proof = self.proof(READ);
        read(&self.conn, Some(proof)).await
    }

    /// The Core certificate key this session signs with.
    pub fn signer(&self) -> &LeaseSigner {
        &self.signer
    }

    /// A signed renewal request for `ttl`, not sent.
    pub fn renew_token(&mut self, ttl: Duration) -> Result<String, ToolError> {
        Ok(self
            .lease
            .renew_request(ttl, Instant::now(), SystemTime::now())?)
    }

    /// Sends a control frame (false if the stream is gone).
    pub async fn send(&self, frame: Frame) -> bool {
        self.stream.send(frame).await
    }

    /// Closes the tool's half of the control stream cleanly, with no
    /// `revoke` before it: as a Core does when its copy of the lease expired.
    pub fn close_half(&mut self) {
        self.stream.close();
    }

    /// The next control frame within `wait`: `Ok(Some)` a frame, `Ok(None)`
    /// the module closed the stream, `Err` nothing in time.
    pub async fn next_frame(&mut self, wait: Duration) -> Result<Option<Frame>, Elapsed> {
        self.stream.next_frame(wait).await
    }

    /// The module's answer to a request just sent, within [`PATIENCE`].
    async fn answer(&mut self) -> Result<Option<Frame>, ToolError> {
        self.next_frame(PATIENCE)
            .await
            .map_err(|Elapsed(after)| ToolError::Timeout {
                what: "the module's answer",
                after,
            })
    }

    /// Asks for a renewal of `ttl` and waits for the answer.
    pub async fn renew(&mut self, ttl: Duration) -> Result<Duration, ToolError> {
        let jws = self
            .lease
            .renew_request(ttl, Instant::now(), SystemTime::now())?;
        self.send(Frame::Renew(SignedToken { jws })).await;
        match self.answer().await? {
            Some(Frame::Renewed(SignedToken { jws })) => {
                let claims = self.lease.receive(&jws)?;
                Ok(self.lease.apply_renewed(&claims, Instant::now())?)
            }
            Some(Frame::Refuse(r)) => Err(ToolError::Unexpected(format!(
                "refused: {} {}",
                r.reason, r.detail
            ))),
            other => Err(ToolError::Unexpected(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Sends a rescope request for `scope` and returns the module's answer.
    pub async fn rescope(&mut self, scope: &Scope) -> Result<Option<Frame>, ToolError> {
        let jws =
            self.lease
                .rescope_request(&self.signer, scope, Instant::now(), SystemTime::now())?;
        self.send(Frame::Rescope(SignedToken { jws })).await;
        let answer = self.answer().await?;
        if let Some(Frame::Rescoped(SignedToken { jws })) = &answer {
            let claims = self.lease.receive(jws)?;
            self.lease.apply_rescoped(&claims, Instant::now())?;
        }
        Ok(answer)
    }

    /// Revokes the lease from the Core's side.
    pub async fn revoke(&mut self, detail: &str) {
        if let Ok(jws) = self.lease.revoke(
            &self.signer,
            Reason::LeaseRevoked,
            detail,
            Instant::now(),
            SystemTime::now(),
        ) {
            self.send(Frame::Revoke(SignedToken { jws })).await;
        }
    }

    /// Revokes the lease and gives the module up to [`PATIENCE`] to close
    /// its half of the control stream, without judging whether it did.
    pub async fn revoke_and_wait(&mut self, detail: &str) {
        self.revoke(detail).await;
        let _ = self.await_close(PATIENCE).await;
    }

    /// Waits until the module closes its half of the control stream (after a
    /// lease ended); `Err` with what arrived instead, or on timeout.
    pub async fn await_close(&mut self, wait: Duration) -> Result<Duration, ToolError> {
        let start = Instant::now();
        loop {
            let left = wait.saturating_sub(start.elapsed());
            match self.next_frame(left).await {
                Ok(None) => return Ok(start.elapsed()),
                Ok(Some(Frame::Revoke(_) | Frame::Refuse(_))) => continue,
                Ok(Some(other)) => {
                    return Err(ToolError::Unexpected(format!(
                        "sent {other:?} after the lease ended"
                    )));
                }
                Err(Elapsed(after)) => {
                    return Err(ToolError::Timeout {
                        what: "the module closing its half of the stream",
                        after,
                    });
                }
            }
        }
    }
}

/// `Probe/Touch` on `conn` with `proof` (or none).
pub async fn touch(
    conn: &Connection,
    proof: Option<String>,
    hold_ms: u32,
) -> Result<ProbeReading, Status> {
    let mut request = tonic::Request::new(TouchRequest { hold_ms });
    add_proof(&mut request, proof);
    request.set_timeout(PATIENCE + Duration::from_millis(u64::from(hold_ms)));
    ProbeClient::new(conn.channel())
        .touch(request)
        .await
        .map(tonic::Response::into_inner)
}

/// `Probe/Read` on `conn` with `proof` (or none).
pub async fn read(conn: &Connection, proof: Option<String>) -> Result<ProbeReading, Status> {
    let mut request = tonic::Request::new(ReadRequest {});
    add_proof(&mut request, proof);
    request.set_timeout(PATIENCE);
    ProbeClient::new(conn.channel())
        .read(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Calls `path` with an empty message (valid for any proto3 request type),
/// with `metadata` added: `Ok` once the call is answered with a message or
/// ends OK. Works for every RPC shape: the request is one message then a
/// half-close, and only the first response message is awaited (a server
/// stream may never end); the call is then cancelled. Gives up after
/// `PATIENCE` (`DEADLINE_EXCEEDED`), whatever the module does.
pub async fn call_empty(
    conn: &Connection,
    path: &str,
    metadata: &[(&'static str, String)],
) -> Result<(), Status> {
    tokio::time::timeout(PATIENCE, call_empty_once(conn, path, metadata))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(
                "the module did not answer in time",
            ))
        })
}

async fn call_empty_once(
    conn: &Connection,
    path: &str,
    metadata: &[(&'static str, String)],
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(conn.channel());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut request = tonic::Request::new(());
    for (k, v) in metadata {
        if let Ok(v) = v.parse() {
            request.metadata_mut().insert(*k, v);
        }
    }
    request.set_timeout(PATIENCE);
    let mut answers = grpc
        .server_streaming(request, path, tonic_prost::ProstCodec::<(), ()>::default())
        .await?
        .into_inner();
    answers.message().await.map(|_| ())
}

/// Adds `proof` to a probe call as the Core sends it: an HPACK literal never
/// indexed (PROTOCOL.md §4, *Header encoding*). The calls of
/// [`call_empty`] send theirs as tonic does by default (indexed), so a run
/// sends the proof both ways, and a module must take either.
fn add_proof<T>(request: &mut tonic::Request<T>, proof: Option<String>) {
    let Some(mut value) = proof.and_then(|p| p.parse::<tonic::metadata::AsciiMetadataValue>().ok())
    else {
        return;
    };
    value.set_sensitive(true);
    request.metadata_mut().insert(PROOF_HEADER, value);
}

/// `ModuleAdmin/Status` on `conn`.
pub async fn status(conn: &Connection) -> Result<ModuleStatus, Status> {
    let mut request = tonic::Request::new(StatusRequest {});
    request.set_timeout(PATIENCE);
    ModuleAdminClient::new(conn.channel())
        .status(request)
        .await
        .map(tonic::Response::into_inner)
}

/// `ModuleAdmin/Shutdown` on `conn`.
pub async fn shutdown(conn: &Connection, reason: &str) -> Result<(), Status> {
    let mut request = tonic::Request::new(ShutdownRequest {
        reason: reason.into(),
    });
    request.set_timeout(PATIENCE);
    ModuleAdminClient::new(conn.channel())
        .shutdown(request)
        .await
        .map(|_| ())
}

/// Opens a control stream on `conn` and sends nothing: what the module
/// sends first, and when, within `wait` (`Err` if nothing came).
pub async fn silent_stream(
    conn: Connection,
    wait: Duration,
) -> Result<(Option<Frame>, Duration), ToolError> {
    let started = Instant::now();
    let outcome = tokio::time::timeout(wait, async {
        let mut stream = ControlStream::open(&conn, None).await.map_err(|st| {
            ToolError::Unexpected(format!("control stream refused: {}", describe(&st)))
        })?;
        match stream.message().await {
            Ok(Some(frame)) => Ok(frame.frame),
            Ok(None) => Ok(None),
            Err(st) => Err(ToolError::Unexpected(format!(
                "control stream broke: {}",
                describe(&st)
            ))),
        }
    })
    .await;
    match outcome {
        Err(_) => Err(ToolError::Timeout {
            what: "a first frame on a silent control stream",
            after: wait,
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(frame)) => Ok((frame, started.elapsed())),
    }
}
