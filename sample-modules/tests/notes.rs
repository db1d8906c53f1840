//! The notes module under the SDK's test harness. Its calls to kv go to a
//! fake Core: a TLS server with a Core's certificate that serves
//! `anima.sample.v1.KvStore` itself and records every call it gets, so a test
//! sees what the module sent (key, value, `grpc-timeout`) and can make kv
//! fail. The routing by a real Core is tested end to end elsewhere.

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod harness;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anima_module_sdk::testing::{FakeLease, ServedModule, TestBed};
use anima_module_sdk::{CoreClient, InitMode, ModuleType, Required};
use anima_protocol::transport::parse_grpc_timeout;
use anima_protocol::{PeerPolicy, ServerTls, Urn};
use anima_sample_modules::notes::{self, Notes};
use anima_sample_modules::pb::kv_store_server::{KvStore, KvStoreServer};
use anima_sample_modules::pb::notes_client::NotesClient;
use anima_sample_modules::pb::notes_server::NotesServer;
use anima_sample_modules::pb::{
    AddNoteReply, AddNoteRequest, CacheInfoReply, CacheInfoRequest, GetReply, GetRequest, PutReply,
    PutRequest, ReadNoteReply, ReadNoteRequest,
};
use harness::within;
use tonic::{Code, Request, Response, Status};

/// The Core that leases the notes module (the test bed's fake Core).
const CORE: &str = "urn:anima:core:owner";
/// The Core the module calls kv through (the fake kv Core below).
const KV_CORE: &str = "urn:anima:core:router";
const TTL: Duration = Duration::from_secs(10);

/// One call the fake Core's kv got.
#[derive(Debug, Clone, PartialEq)]
enum KvCall {
    Put {
        entries: HashMap<String, String>,
        timeout: Option<Duration>,
    },
    Get {
        key: String,
        timeout: Option<Duration>,
    },
}

/// The fake kv's data: the last version, and key → (value, version).
type Store = (u64, HashMap<String, (String, u64)>);

/// A kv store behind a fake Core: records calls, fails on demand.
#[derive(Debug, Default)]
struct FakeKv {
    calls: Mutex<Vec<KvCall>>,
    store: Mutex<Store>,
    /// Every call fails with this while it is set.
    failure: Mutex<Option<(Code, String)>>,
}

impl FakeKv {
    fn calls(&self) -> Vec<KvCall> {
        self.calls.lock().unwrap().clone()
    }

    fn fail_with(&self, failure: Option<(Code, &str)>) {
        *self.failure.lock().unwrap() = failure.map(|(code, m)| (code, m.to_owned()));
    }

    fn failing(&self) -> Result<(), Status> {
        match &*self.failure.lock().unwrap() {
            Some((code, message)) => Err(Status::new(*code, message.clone())),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl KvStore for FakeKv {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let timeout = grpc_timeout(&request);
        let entries = request.into_inner().entries;
        self.calls.lock().unwrap().push(KvCall::Put {
            entries: entries.clone(),
            timeout,
        });
        self.failing()?;
        let mut store = self.store.lock().unwrap();
        store.0 += 1;
        let version = store.0;
        store
            .1
            .extend(entries.into_iter().map(|(k, v)| (k, (v, version))));
        Ok(Response::new(PutReply { version }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let timeout = grpc_timeout(&request);
        let key = request.into_inner().key;
        self.calls.lock().unwrap().push(KvCall::Get {
            key: key.clone(),
            timeout,
        });
        self.failing()?;
        let store = self.store.lock().unwrap();
        Ok(Response::new(match store.1.get(&key) {
            Some((value, version)) => GetReply {
                found: true,
                value: value.clone(),
                version: *version,
            },
            None => GetReply::default(),
        }))
    }

    async fn cache_info(
        &self,
        _: Request<CacheInfoRequest>,
    ) -> Result<Response<CacheInfoReply>, Status> {
        Err(Status::unimplemented("the fake kv has no cache"))
    }
}

/// The `grpc-timeout` a request arrived with; one that is there but not
/// valid fails the test.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    Some(parse_grpc_timeout(value).unwrap_or_else(|| panic!("grpc-timeout {value:?}")))
}

/// The fake Core: serves `kv` over mutual TLS as [`KV_CORE`] to the notes
/// module's identity only, until dropped.
struct FakeKvCore {
    kv: Arc<FakeKv>,
    client: CoreClient,
    server: tokio::task::JoinHandle<()>,
}

impl FakeKvCore {
    async fn start(bed: &TestBed) -> Self {
        let module: Urn = notes::contract().urn.clone();
        let core: Urn = KV_CORE.parse().unwrap();
        let trust = bed.trust().unwrap();
        let tls = ServerTls::new(
            &bed.identity(KV_CORE).unwrap(),
            &trust,
            PeerPolicy::exactly(module.clone()),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kv = Arc::new(FakeKv::default());
        let service = KvStoreServer::from_arc(kv.clone());
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tls.incoming(listener))
                .await
                .unwrap();
        });
        let client =
            CoreClient::new(addr, core, bed.identity(module.as_str()).unwrap(), trust).unwrap();
        FakeKvCore { kv, client, server }
    }
}

impl Drop for FakeKvCore {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves `notes` as `main` does.
async fn serve(bed: &TestBed, notes: Notes) -> ServedModule {
    bed.serve(|m| {
        m.file_descriptor_set(anima_sample_modules::DESCRIPTORS)
            .service(NotesServer::new(notes))
            .probe()
    })
    .await
    .unwrap()
}

/// A notes module calling kv through a fake Core, leased by [`CORE`].
async fn leased_with_kv(bed: &TestBed) -> (ServedModule, FakeLease, FakeKvCore) {
    let kv_core = FakeKvCore::start(bed).await;
    let served = serve(bed, Notes::new(kv_core.client.clone())).await;
    let lease = bed.core(CORE).unwrap().lease(&served, TTL).await.unwrap();
    (served, lease, kv_core)
}

fn add(text: &str, id: &str) -> AddNoteRequest {
    AddNoteRequest {
        text: text.into(),
        id: id.into(),
    }
}

fn read(id: &str) -> ReadNoteRequest {
    ReadNoteRequest { id: id.into() }
}

async fn add_ok(lease: &FakeLease, request: AddNoteRequest) -> AddNoteReply {
    within(NotesClient::new(lease.channel()).add(request))
        .await
        .unwrap()
        .into_inner()
}

async fn read_ok(lease: &FakeLease, id: &str) -> ReadNoteReply {
    within(NotesClient::new(lease.channel()).read(read(id)))
        .await
        .unwrap()
        .into_inner()
}

#[test]
fn notes_contract_requires_kv_and_provides_nothing() {
    let contract = notes::contract();
    assert_eq!(contract.urn.as_str(), "urn:anima:module:notes");
    assert_eq!(
        contract.module_type,
        ModuleType::ResidentPrivate(InitMode::CoreStarted)
    );
    assert_eq!(
        contract.requires,
        [Required::new("anima.sample/kv", ">=1.0").unwrap()]
    );
    assert!(contract.requires[0].accepts(&anima_sample_modules::kvstore::interface().provided));
    assert!(contract.provides.is_empty());
    for method in ["/anima.sample.v1.Notes/Add", "/anima.sample.v1.Notes/Read"] {
        assert!(contract.methods.iter().any(|m| m == method), "{method}");
    }
}

#[tokio::test]
async fn notes_serves_exactly_its_contract() {
    // The SDK refuses to serve when the served methods differ from the
    // contract's: serving at all is the check.
    let bed = TestBed::new(notes::contract()).unwrap();
    let served = serve(&bed, Notes::without_core()).await;
    bed.core(CORE).unwrap().lease(&served, TTL).await.unwrap();
}

#[tokio::test]
async fn notes_refuses_oversized_input_without_calling_kv() {
    let bed = TestBed::new(notes::contract()).unwrap();
    let (_served, lease, kv_core) = leased_with_kv(&bed).await;
    let mut client = NotesClient::new(lease.channel());

    let long_text = "t".repeat(notes::MAX_TEXT_BYTES + 1);
    let long_id = "i".repeat(notes::MAX_ID_BYTES + 1);
    for request in [add(&long_text, ""), add("ok", &long_id)] {
        let err = within(client.add(request)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    for id in ["", long_id.as_str()] {
        let err = within(client.read(read(id))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert_eq!(kv_core.kv.calls(), [], "a refused call reaches kv");

    // At the limits, both calls go through.
    let text = "t".repeat(notes::MAX_TEXT_BYTES);
    let id = "i".repeat(notes::MAX_ID_BYTES);
    assert_eq!(add_ok(&lease, add(&text, &id)).await.version, 1);
    assert_eq!(read_ok(&lease, &id).await.text, text);
    assert_eq!(kv_core.kv.calls().len(), 2);
}

#[tokio::test]
async fn notes_without_a_core_endpoint_fails_failed_precondition() {
    let bed = TestBed::new(notes::contract()).unwrap();
    let served = serve(&bed, Notes::without_core()).await;
    let lease = bed.core(CORE).unwrap().lease(&served, TTL).await.unwrap();
    let mut client = NotesClient::new(lease.channel());

    let errors = [
        within(client.add(add("hello", ""))).await.unwrap_err(),
        within(client.add(add("hello", "mine"))).await.unwrap_err(),
        within(client.read(read("mine"))).await.unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("the Core's endpoint is unknown")
                && err.message().contains("ANIMA_CORE_ENDPOINT"),
            "{err:?}"
        );
    }
    // Still serving: bad input is still told apart.
    let err = within(client.read(read(""))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn notes_add_then_read_through_the_core() {
    let bed = TestBed::new(notes::contract()).unwrap();
    let (_served, lease, kv_core) = leased_with_kv(&bed).await;

    let first = add_ok(&lease, add("first", "")).await;
    let second = add_ok(&lease, add("second", "")).await;
    assert!(first.id.starts_with("note-1-"), "{first:?}");
    assert!(second.id.starts_with("note-2-"), "{second:?}");
    assert_eq!((first.version, second.version), (1, 2));
    let mine = add_ok(&lease, add("mine", "shopping")).await;
    assert_eq!((mine.id.as_str(), mine.version), ("shopping", 3));

    let note = read_ok(&lease, &first.id).await;
    assert_eq!(
        (note.found, note.text.as_str(), note.version),
        (true, "first", 1)
    );
    let note = read_ok(&lease, "shopping").await;
    assert_eq!(
        (note.found, note.text.as_str(), note.version),
        (true, "mine", 3)
    );
    let missing = read_ok(&lease, "nothing").await;
    assert_eq!(
        (missing.found, missing.text.as_str(), missing.version),
        (false, "", 0)
    );

    // Each call was one kv call, on the key note/<id>.
    let calls = kv_core.kv.calls();
    let keys: Vec<String> = calls
        .iter()
        .map(|call| match call {
            KvCall::Put { entries, .. } => {
                assert_eq!(entries.len(), 1, "{call:?}");
                format!("put {}", entries.keys().next().unwrap())
            }
            KvCall::Get { key, .. } => format!("get {key}"),
        })
        .collect();
    assert_eq!(
        keys,
        [
            format!("put note/{}", first.id),
            format!("put note/{}", second.id),
            "put note/shopping".to_owned(),
            format!("get note/{}", first.id),
            "get note/shopping".to_owned(),
            "get note/nothing".to_owned(),
        ]
    );
}

#[tokio::test]
async fn kv_errors_reach_the_caller_with_their_code() {
    let bed = TestBed::new(notes::contract()).unwrap();
    let (_served, lease, kv_core) = leased_with_kv(&bed).await;
    let mut client = NotesClient::new(lease.channel());

    for code in [
        Code::Unavailable,
        Code::ResourceExhausted,
        Code::PermissionDenied,
        Code::NotFound,
        Code::Internal,
    ] {
        kv_core.kv.fail_with(Some((code, "provider in standby")));
        for err in [
            within(client.add(add("x", "a"))).await.unwrap_err(),
            within(client.read(read("a"))).await.unwrap_err(),
        ] {
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.message(), "kv: provider in standby");
        }
    }
    // The module outlived every error.
    kv_core.kv.fail_with(None);
    assert_eq!(add_ok(&lease, add("x", "a")).await.version, 1);
    assert!(read_ok(&lease, "a").await.found);
}

#[tokio::test]
async fn kv_calls_carry_the_callers_deadline_or_ten_seconds() {
    let bed = TestBed::new(notes::contract()).unwrap();
    let (_served, lease, kv_core) = leased_with_kv(&bed).await;
    let mut client = NotesClient::new(lease.channel());

    let mut with_deadline = Request::new(add("x", "a"));
    with_deadline.set_timeout(Duration::from_secs(3));
    within(client.add(with_deadline)).await.unwrap();
    let mut with_deadline = Request::new(read("a"));
    with_deadline.set_timeout(Duration::from_secs(3));
    within(client.read(with_deadline)).await.unwrap();
    within(client.read(read("a"))).await.unwrap();

    let timeouts: Vec<Duration> = kv_core
        .kv
        .calls()
        .into_iter()
        .map(|call| match call {
            KvCall::Put { timeout, .. } | KvCall::Get { timeout, .. } => timeout.unwrap(),
        })
        .collect();
    let [put, get, default] = timeouts[..] else {
        panic!("three kv calls expected: {timeouts:?}");
    };
    // What remained of the caller's 3 s (less the time in transit), and the
    // default for a caller without a deadline.
    for remaining in [put, get] {
        assert!(
            remaining <= Duration::from_secs(3) && remaining > Duration::from_secs(1),
            "{remaining:?}"
        );
    }
    assert!(
        default <= notes::DEFAULT_KV_DEADLINE && default > Duration::from_secs(8),
        "{default:?}"
    );
}
