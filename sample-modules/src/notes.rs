//! The notes module: a Type II (resident private) module that calls another
//! module's interface through its Core.
//!
//! It keeps no data of its own. A note is one entry of a key-value store, the
//! interface `anima.sample/kv` its contract `requires` (`>=1.0`): `Add` is a
//! `KvStore/Put` of the key `note/<id>`, `Read` a `KvStore/Get`. It never
//! dials a provider. It calls the Core that launched it, with its own
//! certificate, through [`CoreClient`]; the Core checks that it may, picks a
//! provider and forwards the call (PROTOCOL.md §10).
//!
//! What it shows:
//!
//! - **one client of the Core for the whole process**, built at start from
//!   the launch environment ([`Notes::from_env`]). A module started without
//!   `ANIMA_CORE_ENDPOINT` still serves, and every call that needs kv fails
//!   with `FAILED_PRECONDITION` saying why;
//! - **bounded input, checked before any call**: a refused request costs the
//!   provider nothing;
//! - **deadlines carried over**: the call to kv gets the caller's remaining
//!   deadline (its `grpc-timeout`), or [`DEFAULT_KV_DEADLINE`] when the
//!   caller gave none, so nothing waits on kv longer than its caller does;
//! - **errors passed through**: an error from kv or from the Core's routing
//!   reaches the caller with the same gRPC code and its message prefixed
//!   `kv: `, so a retriable code stays retriable. Details such as
//!   `ErrorInfo` are not copied: a `LEASE_EXPIRED` from kv concerns the
//!   module's own lease with its Core, not the caller's;
//! - **no side effect of its own to commit**: the write is the provider's.
//!   A lease that ends mid-call drops the handler and with it the call to
//!   kv; the Put may have been applied or not, as for any cancelled RPC.
//!
//! ```no_run
//! # async fn demo() {
//! use anima_sample_modules::{DESCRIPTORS, notes, pb::notes_server::NotesServer};
//!
//! let code = anima_module_sdk::launch(notes::contract(), |m| {
//!     m.file_descriptor_set(DESCRIPTORS)
//!         .service(NotesServer::new(notes::Notes::from_env()))
//!         .probe()
//! })
//! .await;
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anima_module_sdk::launch::{ENV_CORE_ENDPOINT, LaunchEnvError};
use anima_module_sdk::{Contract, CoreClient, SdkError};
use anima_protocol::transport::parse_grpc_timeout;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::pb::kv_store_client::KvStoreClient;
use crate::pb::{
    AddNoteReply, AddNoteRequest, GetRequest, PutRequest, ReadNoteReply, ReadNoteRequest,
};
use crate::{check_text, lease_of, too_long};

/// The longest note text, in bytes (the kv interface's value limit).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// The longest note id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// The deadline of a call to kv when the caller gave none.
pub const DEFAULT_KV_DEADLINE: Duration = Duration::from_secs(10);
/// What a note's kv key starts with: the key is `note/<id>`.
pub const KEY_PREFIX: &str = "note/";

/// The notes module's capability contract (`notes/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a test
    // (tests/notes.rs) parses it.
    Contract::from_toml(include_str!("../notes/module.toml"))
        .expect("notes/module.toml is a valid contract")
}

/// The kv key of the note `id`: `note/<id>`.
pub fn key_of(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// The notes service: serve it with
/// [`NotesServer::new`](crate::pb::notes_server::NotesServer::new).
#[derive(Debug)]
pub struct Notes {
    core: Result<CoreClient, String>,
    /// One more per id the module chooses.
    chosen: AtomicU64,
    random: SystemRandom,
}

impl Notes {
    /// Notes kept in the kv store reached through `core`.
    pub fn new(core: CoreClient) -> Self {
        Notes::with(Ok(core))
    }

    /// A service that knows no Core: every call that needs kv fails with
    /// `FAILED_PRECONDITION` (a module started without
    /// `ANIMA_CORE_ENDPOINT`).
    pub fn without_core() -> Self {
        Notes::with(Err(endpoint_unknown()))
    }

    /// Notes kept in the kv store of the launching Core, from the launch
    /// environment ([`CoreClient::from_env`]). Never fails: without a usable
    /// client of the Core (`ANIMA_CORE_ENDPOINT` unset, or another launch
    /// variable missing or invalid) it logs a warning and every call that
    /// needs kv fails with `FAILED_PRECONDITION` saying why.
    pub fn from_env() -> Self {
        let core = CoreClient::from_env().map_err(|e| match e {
            SdkError::LaunchEnv(LaunchEnvError::Missing(ENV_CORE_ENDPOINT)) => endpoint_unknown(),
            e => format!("no client of the Core ({e}); fix the launch environment and restart"),
        });
        if let Err(why) = &core {
            tracing::warn!("{why}");
        }
        Notes::with(core)
    }

    fn with(core: Result<CoreClient, String>) -> Self {
        Notes {
            core,
            chosen: AtomicU64::new(0),
            random: SystemRandom::new(),
        }
    }

    /// A client of kv over the Core's channel, or `FAILED_PRECONDITION`.
    fn kv(&self) -> Result<KvStoreClient<Channel>, Status> {
        match &self.core {
            Ok(core) => Ok(KvStoreClient::new(core.channel())),
            Err(why) => Err(Status::failed_precondition(why.clone())),
        }
    }

    /// A new id: `note-<n>-<8 hex digits>`, `n` counting the ids this
    /// process chose and the random suffix telling processes apart.
    fn choose_id(&self) -> Result<String, Status> {
        let n = self.chosen.fetch_add(1, Ordering::Relaxed) + 1;
        let mut suffix = [0u8; 4];
        self.random.fill(&mut suffix).map_err(|_| {
            Status::unavailable("the system random generator failed; retry, or give an id")
        })?;
        Ok(format!("note-{n}-{:08x}", u32::from_be_bytes(suffix)))
    }
}

#[tonic::async_trait]
impl crate::pb::notes_server::Notes for Notes {
    async fn add(
        &self,
        request: Request<AddNoteRequest>,
    ) -> Result<Response<AddNoteReply>, Status> {
        let lease_id = lease_of(&request)?.lease_id();
        let deadline = kv_deadline(request.metadata());
        let AddNoteRequest { text, id } = request.into_inner();
        if text.len() > MAX_TEXT_BYTES {
            return Err(too_long("the text", text.len(), MAX_TEXT_BYTES));
        }
        if id.len() > MAX_ID_BYTES {
            return Err(too_long("the id", id.len(), MAX_ID_BYTES));
        }
        let mut kv = self.kv()?;
        let id = if id.is_empty() { self.choose_id()? } else { id };
        let put = PutRequest {
            entries: [(key_of(&id), text)].into(),
            delay_ms: 0,
        };
        let version = call_kv(deadline, kv.put(with_deadline(put, deadline)))
            .await?
            .version;
        tracing::info!(lease_id = %lease_id, id, version, "note added");
        Ok(Response::new(AddNoteReply { id, version }))
    }

    async fn read(
        &self,
        request: Request<ReadNoteRequest>,
    ) -> Result<Response<ReadNoteReply>, Status> {
        lease_of(&request)?;
        let deadline = kv_deadline(request.metadata());
        let id = &request.get_ref().id;
        check_text("the id", id, MAX_ID_BYTES)?;
        let get = GetRequest { key: key_of(id) };
        let mut kv = self.kv()?;
        let reply = call_kv(deadline, kv.get(with_deadline(get, deadline))).await?;
        Ok(Response::new(ReadNoteReply {
            found: reply.found,
            text: reply.value,
            version: reply.version,
        }))
    }
}

/// The FAILED_PRECONDITION message of a module started without its Core's
/// endpoint.
fn endpoint_unknown() -> String {
    format!(
        "the Core's endpoint is unknown ({ENV_CORE_ENDPOINT} was not set when the module \
         started): kv cannot be called; start the module from a Core that sets it"
    )
}

/// How long a call to kv may take: the caller's deadline (its `grpc-timeout`,
/// read as the handler starts), or [`DEFAULT_KV_DEADLINE`].
fn kv_deadline(metadata: &MetadataMap) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_KV_DEADLINE)
}

/// `message` as a request whose `grpc-timeout` is `deadline`, for the Core to
/// enforce and forward.
fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Runs a call to kv within `deadline` (also enforced here: the channel does
/// not enforce `grpc-timeout` itself), passing its errors through.
async fn call_kv<T>(
    deadline: Duration,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(from_kv(&status)),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "kv: no answer within {} ms; retry with a longer deadline",
            deadline.as_millis()
        ))),
    }
}

/// An error from kv (or from the Core's routing), as the caller gets it: the
/// same code, the message prefixed `kv: `. Not its details: an `anima`
/// `ErrorInfo` reason from the call to kv (`LEASE_REVOKED`, `PROVIDER_LOST`,
/// …) is about that call's lease, not this one, and the Core reads such a
/// reason in notes' answer as the end of notes' own lease.
fn from_kv(status: &Status) -> Status {
    Status::new(status.code(), format!("kv: {}", status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_without_grpc_timeout_gets_the_default_deadline() {
        let mut metadata = MetadataMap::new();
        assert_eq!(kv_deadline(&metadata), DEFAULT_KV_DEADLINE);
        metadata.insert("grpc-timeout", "garbage".parse().unwrap());
        assert_eq!(kv_deadline(&metadata), DEFAULT_KV_DEADLINE);
        metadata.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(kv_deadline(&metadata), Duration::from_millis(1500));
    }

    #[test]
    fn kv_errors_keep_their_code() {
        let status = from_kv(&Status::unavailable("no provider of anima.sample/kv"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "kv: no provider of anima.sample/kv");
    }

    #[test]
    fn kv_errors_do_not_carry_kvs_lease_reasons() {
        use anima_protocol::lease::{Reason, reason_of, status_for};
        let lost = status_for(Reason::LeaseRevoked, "kv's lease was revoked mid-call", []);
        let status = from_kv(&lost);
        assert_eq!(status.code(), lost.code());
        assert_eq!(reason_of(&status), None);
    }

    #[test]
    fn chosen_ids_differ_and_fit() {
        let notes = Notes::without_core();
        let a = notes.choose_id().unwrap();
        let b = notes.choose_id().unwrap();
        assert!(
            a.starts_with("note-1-") && b.starts_with("note-2-"),
            "{a} {b}"
        );
        assert!(a.len() <= MAX_ID_BYTES);
    }
}
