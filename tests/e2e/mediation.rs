//! Modules that find and call each other through the Core (issue 15,
//! PROTOCOL.md §10): the registry (P4, P5), module peers refused (P6),
//! permissions (P7), the caller's own lease (P8), the interface's timeout
//! and retry policy (P10).
//!
//! The providers are the kvstore sample (`anima.sample/kv` 1.0.0), once or
//! twice (the second as `kvstore-b`); the caller is `notes`, the echo
//! fixture under a contract that requires kv. The test presents notes'
//! certificate to the Core, as notes' own handlers would: the Core checks
//! the caller's identity and its lease, not which process holds the key.

use std::path::Path;
use std::time::{Duration, Instant};

use anima_protocol::lease::Reason;
use anima_protocol::pb::module_admin_client::ModuleAdminClient;
use anima_protocol::pb::registry_client::RegistryClient;
use anima_protocol::pb::{
    DiscoverRequest, Provider, RegistryWatchRequest, StatusRequest, watch_item,
};
use anima_protocol::{ClientTls, Connection, PeerPolicy, TlsIdentity, TrustRoot, UrnKind};
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::notes_client::NotesClient;
use anima_sample_modules::pb::{AddNoteRequest, GetRequest, PutRequest, ReadNoteRequest};
use anima_tests::{PATIENCE, reason};
use tonic::Code;

use super::gateway::user;
use super::serve::{CoreProcess, core_and_admin, module_entry, sample};

const KV: &str = "anima.sample/kv";
const NOTES: &str = "urn:anima:module:notes";
const KVSTORE: &str = "urn:anima:module:kvstore";
const KVSTORE_B: &str = "urn:anima:module:kvstore-b";

/// The notes contract: the echo methods, requiring kv `>=1.0`.
fn notes_contract() -> String {
    format!(
        "urn = \"{NOTES}\"\nversion = \"0.1.0\"\ntype = \"resident-shared\"\n\
         methods = [{}]\nmax_lease = \"30s\"\n\
         requires = [{{ interface = \"{KV}\", version = \">=1.0\" }}]\n",
        anima_tests::echo_methods_toml()
    )
}

/// How the Core under test is set up.
#[derive(Default)]
struct Setup {
    /// `[[permission]]` entries (TOML).
    permissions: &'static str,
    /// A second kv provider, `kvstore-b`.
    second: bool,
    /// The Core's copy of the kv definition, edited: each (from, to).
    definition: &'static [(&'static str, &'static str)],
    /// notes is the notes sample (no contract file), which the dev user may
    /// call, instead of the fixture.
    sample: bool,
    /// `kvstore-b` (with [`Setup::second`]) has the ratelimit sample as its
    /// proxy sidecar.
    proxied_b: bool,
}

/// A `[[permission]]` for notes on kv, from any provider.
const ANY_KV: &str = "
[[permission]]
module = \"urn:anima:module:notes\"
interface = \"anima.sample/kv\"
";

/// The ratelimit sample, as a proxy sidecar (PROTOCOL.md §11.1).
const RATELIMIT: &str = "urn:anima:module:ratelimit";

fn kvstore_entry(name: &str, proxied: bool) -> String {
    let urn = format!("urn:anima:module:{name}");
    let sidecars = if proxied {
        format!("sidecars = [\"{RATELIMIT}\"]\n")
    } else {
        String::new()
    };
    module_entry(
        name,
        &format!(
            r#"type = "resident-private"
command = "{}"
{sidecars}
[module.env]
KVSTORE_CACHE_LIMIT = "65536"
KVSTORE_URN = "{urn}"
"#,
            sample("kvstore")
        ),
    )
}

impl Setup {
    /// Notes may call kv on any provider ([`ANY_KV`]).
    fn granted() -> Self {
        Setup {
            permissions: ANY_KV,
            ..Setup::default()
        }
    }

    /// Two providers, and notes may call kv on kvstore-b only.
    fn granted_from_b_only() -> Self {
        Setup {
            permissions: "
[[permission]]
module = \"urn:anima:module:notes\"
interface = \"anima.sample/kv\"
provider = \"urn:anima:module:kvstore-b\"
",
            second: true,
            ..Setup::default()
        }
    }

    fn config(&self) -> String {
        let notes = if self.sample {
            format!(
                "type = \"resident-private\"\ncommand = \"{}\"\n",
                sample("notes")
            )
        } else {
            super::interfaces::notes_settings(&notes_contract())
        };
        let mut text =
            core_and_admin("interfaces = \"interfaces\"\n") + &kvstore_entry("kvstore", false);
        if self.second {
            text += &kvstore_entry("kvstore-b", self.proxied_b);
        }
        if self.proxied_b {
            text += &module_entry(
                "ratelimit",
                &format!(
                    "type = \"resident-private\"\ncommand = \"{}\"\n[module.restart]\npolicy = \"never\"\n",
                    sample("ratelimit")
                ),
            );
        }
        if self.sample {
            text += "\n[[policy]]\nuser = \"urn:anima:user:dev\"\nallow = [\"urn:anima:module:notes\"]\n";
        }
        text + &module_entry("notes", &notes) + self.permissions
    }

    /// Starts the Core, with kvstore-b's certificate, notes' contract file and the Core's interface definitions written first.
    async fn start(&self) -> CoreProcess {
        let text = self.config();
        let second = self.second;
        let definition = self.definition;
        let core = CoreProcess::start_with(Some(&text), move |certs| {
            // notes' own certificate is one of the dev identities.
            if second {
                anima_certs::issue_into_dir(certs, UrnKind::Module, "kvstore-b", 30, false)
                    .unwrap();
            }
            let dir = certs.parent().and_then(Path::parent).unwrap();
            std::fs::write(dir.join("notes.toml"), notes_contract()).unwrap();
            let from = super::scaffold::repo().join("interfaces/anima.sample/kv/1.0.0");
            let to = dir.join("interfaces/anima.sample/kv/1.0.0");
            std::fs::create_dir_all(&to).unwrap();
            let mut toml = std::fs::read_to_string(from.join("interface.toml")).unwrap();
            for (old, new) in definition {
                assert!(toml.contains(old), "{old:?} is in the kv definition");
                toml = toml.replace(old, new);
            }
            std::fs::write(to.join("interface.toml"), toml).unwrap();
            std::fs::copy(from.join("kvstore.proto"), to.join("kvstore.proto")).unwrap();
        })
        .await;
        core.wait_leased("kvstore").await;
        if second {
            core.wait_leased("kvstore-b").await;
        }
        core.wait_leased("notes").await;
        core
    }
}

/// A Core set up with [`Setup::granted`], and its endpoint as notes.
async fn granted_notes() -> (CoreProcess, Connection) {
    let core = Setup::granted().start().await;
    let notes = as_notes(&core).await;
    (core, notes)
}

/// The Core's endpoint as notes.
async fn as_notes(core: &CoreProcess) -> Connection {
    user(core, "module-notes").await
}

fn put(key: &str, value: &str, delay_ms: u64) -> PutRequest {
    PutRequest {
        entries: [(key.to_owned(), value.to_owned())].into(),
        delay_ms,
    }
}

/// `message` pinned to `provider` (the `anima-provider` metadata).
fn pinned<T>(message: T, provider: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("anima-provider", provider.parse().unwrap());
    request
}

/// The registry's `Watch` of kv, as `notes`, from `since` in `epoch`.
async fn watch_kv(
    notes: &Connection,
    since: u64,
    epoch: String,
) -> tonic::Streaming<anima_protocol::pb::WatchItem> {
    RegistryClient::new(notes.channel())
        .watch(RegistryWatchRequest {
            interfaces: vec![KV.into()],
            since_revision: since,
            epoch,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next item of a registry watch, which must be an event, in time.
async fn next_event(
    stream: &mut tonic::Streaming<anima_protocol::pb::WatchItem>,
) -> anima_protocol::pb::RegistryEvent {
    let item = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event in time")
        .unwrap()
        .expect("the stream goes on");
    let Some(watch_item::Item::Event(event)) = item.item else {
        panic!("an event, not {item:?}");
    };
    event
}

/// What `key` reads at `provider`, through the Core as notes.
async fn read_at(conn: &Connection, provider: &str, key: &str) -> Option<(String, u64)> {
    let reply = KvStoreClient::new(conn.channel())
        .get(pinned(GetRequest { key: key.into() }, provider))
        .await
        .unwrap()
        .into_inner();
    reply.found.then_some((reply.value, reply.version))
}

async fn discover(conn: &Connection, range: &str) -> Result<Vec<Provider>, tonic::Status> {
    RegistryClient::new(conn.channel())
        .discover(DiscoverRequest {
            interface: KV.into(),
            range: range.into(),
        })
        .await
        .map(|r| r.into_inner().providers)
}

#[tokio::test]
async fn p4_a_module_discovers_the_providers_it_may_call_with_their_state_and_route() {
    let (core, notes) = granted_notes().await;
    let found = discover(&notes, ">=1.0").await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let kv = &found[0];
    assert_eq!(
        (
            kv.module.as_str(),
            kv.interface.as_str(),
            kv.version.as_str(),
            kv.state.as_str()
        ),
        (KVSTORE, KV, "1.0.0", "leased")
    );
    let route = kv.route.as_ref().unwrap();
    assert_eq!(route.core, "urn:anima:core:dev");
    assert_eq!(
        route.methods,
        [
            "/anima.sample.v1.KvStore/Put",
            "/anima.sample.v1.KvStore/Get",
            "/anima.sample.v1.KvStore/CacheInfo"
        ]
    );
    assert_eq!(
        (route.pin_header.as_str(), route.pin_value.as_str()),
        ("anima-provider", KVSTORE)
    );
    // The route is all it takes: a call pinned as it says is answered.
    let reply = KvStoreClient::new(notes.channel())
        .put(pinned(put("k", "v", 0), &route.pin_value))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().version, 1);
    assert!(
        discover(&notes, "^2").await.unwrap().is_empty(),
        "out of range"
    );
    // An operator sees every provider; a user that is neither is refused.
    let operator = user(&core, "user-dev").await;
    assert_eq!(discover(&operator, "").await.unwrap().len(), 1);
    anima_certs::issue_into_dir(
        &core.dir.path().join("certs/dev"),
        UrnKind::User,
        "app",
        30,
        false,
    )
    .unwrap();
    let app = user(&core, "user-app").await;
    let refused = discover(&app, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(reason(&refused), Some(Reason::PolicyDenied));

    // Without a permission, notes discovers nothing it may not call.
    let denied = Setup::default().start().await;
    let notes = as_notes(&denied).await;
    assert!(discover(&notes, "").await.unwrap().is_empty());
    assert_eq!(
        discover(&user(&denied, "user-dev").await, "")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn p5_a_watcher_sees_provider_events_in_order_and_resumes_without_missing_one() {
    let (core, notes) = granted_notes().await;
    let watch = |since: u64, epoch: String| watch_kv(&notes, since, epoch);
    let mut stream = watch(0, String::new()).await;
    // The provider stops and starts again: its events arrive in order.
    core.cli_ok(&["restart", KVSTORE]).await;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(_, kind, _): &(u64, String, String)| kind == "lease_issued")
    {
        let event = next_event(&mut stream).await;
        assert_eq!(event.module, KVSTORE);
        assert_eq!(event.provides, [format!("{KV} 1.0.0")]);
        seen.push((event.revision, event.kind, event.epoch));
    }
    let revisions: Vec<u64> = seen.iter().map(|e| e.0).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in order: {seen:?}"
    );
    let kinds: Vec<&str> = seen.iter().map(|e| e.1.as_str()).collect();
    assert!(kinds.contains(&"module_restarting"), "{kinds:?}");
    let epoch = seen[0].2.clone();
    // Resumed after the first event: the rest again, exactly.
    let mut resumed = watch(seen[0].0, epoch.clone()).await;
    for expected in &seen[1..] {
        let item = resumed.message().await.unwrap().unwrap();
        let Some(watch_item::Item::Event(event)) = item.item else {
            panic!("an event, not {item:?}");
        };
        assert_eq!((event.revision, &event.kind), (expected.0, &expected.1));
    }
    // From another run of the Core: a snapshot first.
    let mut other = watch(1, "0000000000000000".into()).await;
    let item = other.message().await.unwrap().unwrap();
    let Some(watch_item::Item::Snapshot(snapshot)) = item.item else {
        panic!("a snapshot, not {item:?}");
    };
    assert_eq!(snapshot.epoch, epoch);
    let state = |p: &Provider| (p.module.clone(), p.state.clone());
    assert_eq!(
        snapshot.providers.iter().map(state).collect::<Vec<_>>(),
        [(KVSTORE.to_owned(), "leased".to_owned())]
    );
}

/// P5 with P7: a module watching an interface sees the events of the
/// providers its permissions let it call, and no others, as `Discover` and
/// the snapshot list only those.
#[tokio::test]
async fn p5_p7_a_watcher_sees_no_event_of_a_provider_it_may_not_call() {
    let core = Setup::granted_from_b_only().start().await;
    let notes = as_notes(&core).await;
    let mut stream = watch_kv(&notes, 0, String::new()).await;
    // kvstore (not permitted) goes through a restart first, then kvstore-b.
    core.cli_ok(&["restart", KVSTORE]).await;
    core.wait_leased("kvstore").await;
    core.cli_ok(&["restart", KVSTORE_B]).await;
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut stream).await;
        seen.push((event.module.clone(), event.kind.clone()));
        if event.module == KVSTORE_B && event.kind == "lease_issued" {
            break;
        }
    }
    assert!(
        seen.iter().all(|(module, _)| module == KVSTORE_B),
        "only kvstore-b's events: {seen:?}"
    );
}

#[tokio::test]
async fn p6_a_module_refuses_a_connection_from_another_module() {
    let core = Setup::default().start().await;
    let kvstore = core.module("kvstore").await;
    let addr: anima_protocol::transport::Address =
        kvstore["endpoint"].as_str().unwrap().parse().unwrap();
    let dir = core.dir.path().join("certs/dev");
    let as_identity = |stem: &str| {
        let identity = TlsIdentity::from_pem_files(
            &dir.join(format!("{stem}.pem")),
            &dir.join(format!("{stem}.key")),
        )
        .unwrap();
        ClientTls::new(
            identity,
            TrustRoot::from_pem_file(&dir.join("ca.pem")).unwrap(),
        )
    };
    // The module checks the client's certificate after the client has
    // finished its side of the handshake: the refusal comes with the first
    // call, if the dial itself got through.
    let status = |identity: &str| {
        let client = as_identity(identity);
        let addr = addr.clone();
        async move {
            let conn = client
                .dial_addr(addr, PeerPolicy::exactly(KVSTORE.parse().unwrap()))
                .await
                .map_err(|e| e.to_string())?;
            ModuleAdminClient::new(conn.channel())
                .status(StatusRequest {})
                .await
                .map(|r| r.into_inner().urn)
                .map_err(|e| e.to_string())
        }
    };
    let refused = status("module-notes").await;
    assert!(
        refused.is_err(),
        "a module called another directly: {refused:?}"
    );
    // The same socket serves its Core's kind of peer.
    assert_eq!(status("core-dev").await.unwrap(), KVSTORE);
}

#[tokio::test]
async fn p7_a_module_calls_only_what_a_permission_grants_and_a_denied_call_never_runs() {
    let core = Setup::default().start().await;
    let notes = as_notes(&core).await;
    let denied = KvStoreClient::new(notes.channel())
        .put(put("k", "v", 0))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(reason(&denied), Some(Reason::PolicyDenied));
    assert!(
        denied
            .message()
            .contains("urn:anima:module:notes has no [[permission]] to call anima.sample/kv"),
        "{denied:?}"
    );
    let record = audited(&core, "call_refused").await;
    assert_eq!(record["actor"], "module");
    assert_eq!(record["module"], NOTES);
    assert_eq!(record["reason"], "POLICY_DENIED");

    // Granted only from kvstore-b: kvstore is refused, and its store shows
    // that the denied call never ran; kvstore-b answers.
    let granted = Setup::granted_from_b_only().start().await;
    let notes = as_notes(&granted).await;
    let refused = KvStoreClient::new(notes.channel())
        .put(pinned(put("k", "v", 0), KVSTORE))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), Some(Reason::PolicyDenied), "{refused:?}");
    for _ in 0..4 {
        // Not pinned: only kvstore-b is ever chosen.
        KvStoreClient::new(notes.channel())
            .put(put("k", "v", 0))
            .await
            .unwrap();
    }
    assert_eq!(read_at(&notes, KVSTORE_B, "k").await, Some(("v".into(), 4)));
}

/// P3: the interface's published definition, not what a provider happens
/// to serve, says which methods are the interface's. With Get left out of
/// the Core's copy of the kv definition, a module's Get is refused
/// `UNKNOWN_METHOD` before any provider sees it, though kvstore serves Get;
/// Put, which the definition lists, goes through.
#[tokio::test]
async fn p3_only_the_methods_the_interface_definition_lists_are_routed() {
    let core = Setup {
        definition: &[(
            "[[method]]\npath = \"/anima.sample.v1.KvStore/Get\"\nidempotent = true\ntimeout = \"5s\"\n\n\
             [method.retry]\nattempts = 3\nbackoff = \"20ms\"\n",
            "",
        )],
        ..Setup::granted()
    }
    .start()
    .await;
    let notes = as_notes(&core).await;
    let refused = KvStoreClient::new(notes.channel())
        .get(GetRequest { key: "k".into() })
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), Some(Reason::UnknownMethod), "{refused:?}");
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    let written = KvStoreClient::new(notes.channel())
        .put(put("k", "v", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written.version, 1, "{written:?}");
}

#[tokio::test]
async fn p8_a_module_whose_lease_ended_cannot_call_others() {
    let (core, notes) = granted_notes().await;
    KvStoreClient::new(notes.channel())
        .put(put("k", "before", 0))
        .await
        .unwrap();
    core.cli_ok(&["stop", NOTES]).await;
    core.wait_module("notes", "stopped", |m| m["state"] == "stopped")
        .await;
    let refused = KvStoreClient::new(notes.channel())
        .put(put("k", "after", 0))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(reason(&refused), Some(Reason::NoLease));
    let registry = discover(&notes, "").await.unwrap_err();
    assert_eq!(reason(&registry), Some(Reason::NoLease), "{registry:?}");
    // The provider never saw the refused call.
    core.cli_ok(&["restart", NOTES]).await;
    core.wait_leased("notes").await;
    assert_eq!(
        read_at(&notes, KVSTORE, "k").await,
        Some(("before".into(), 1))
    );
}

#[tokio::test]
async fn p10_the_interfaces_timeout_bounds_a_call_that_the_caller_lets_run_longer() {
    let core = Setup {
        definition: &[(
            "path = \"/anima.sample.v1.KvStore/Put\"\nidempotent = false\n",
            "path = \"/anima.sample.v1.KvStore/Put\"\nidempotent = false\ntimeout = \"300ms\"\n",
        )],
        ..Setup::granted()
    }
    .start()
    .await;
    let notes = as_notes(&core).await;
    let mut slow = tonic::Request::new(put("k", "slow", 3_000));
    slow.set_timeout(Duration::from_secs(20));
    let started = Instant::now();
    let late = KvStoreClient::new(notes.channel())
        .put(slow)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2_500),
        "ended after {took:?}, the interface's timeout being 300 ms"
    );
    // Cut at the interface's deadline, the write was not committed.
    assert_eq!(read_at(&notes, KVSTORE, "k").await, None);
    // Within the interface's timeout, the call goes through.
    KvStoreClient::new(notes.channel())
        .put(put("k", "quick", 20))
        .await
        .unwrap();
    assert_eq!(
        read_at(&notes, KVSTORE, "k").await,
        Some(("quick".into(), 1))
    );
}

/// The first audit record of `event`, waiting for the log's writer.
async fn audited(core: &CoreProcess, event: &str) -> serde_json::Value {
    let path = core.dir.path().join("audit.jsonl");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let audit = std::fs::read_to_string(&path).unwrap_or_default();
        let found = audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["event"] == event);
        if let Some(record) = found {
            return record;
        }
        assert!(Instant::now() < deadline, "no {event} record:\n{audit}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Core's copy of the kv definition with Put idempotent, tried twice.
const PUT_RETRIED: &[(&str, &str)] = &[(
    "path = \"/anima.sample.v1.KvStore/Put\"\nidempotent = false\n",
    "path = \"/anima.sample.v1.KvStore/Put\"\nidempotent = true\n\n\
     [method.retry]\nattempts = 2\nbackoff = \"10ms\"\n",
)];

/// Which provider an unpinned call goes to: the Core takes the leased
/// providers in turn, so after one unpinned call and two pinned ones the
/// next unpinned call goes to the other provider than the first.
async fn next_unpinned_goes_to(notes: &Connection, key: &str) -> &'static str {
    KvStoreClient::new(notes.channel())
        .put(put(key, "probe", 0))
        .await
        .unwrap();
    let first_at_a = read_at(notes, KVSTORE, key).await.is_some();
    let first_at_b = read_at(notes, KVSTORE_B, key).await.is_some();
    assert!(first_at_a != first_at_b, "the probe went to one provider");
    if first_at_a { KVSTORE_B } else { KVSTORE }
}

/// Waits until the Core counts a call in flight under `module`'s lease.
async fn wait_in_flight(core: &CoreProcess, module: &str) {
    let operator = user(core, "user-dev").await;
    let line = format!("anima_calls_in_flight{{module=\"{module}\"}} 1");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = super::gateway::metrics(&operator).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no call in flight at {module}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Revokes `module`'s active lease, as an operator.
async fn revoke(core: &CoreProcess, module: &str) {
    let name = module.trim_start_matches("urn:anima:module:");
    let lease = core.lease_of(name).await;
    core.cli_ok(&["revoke", lease["lease_id"].as_str().unwrap()])
        .await;
}

/// Puts `value` at "k" (a 2 s write) through the Core as notes, on the
/// provider the next unpinned call goes to, and revokes that provider's
/// lease while the call is in flight; returns that provider, the other one,
/// and what the caller got.
async fn put_revoked_mid_call(
    core: &CoreProcess,
    notes: &Connection,
    value: &str,
) -> (
    &'static str,
    &'static str,
    Result<tonic::Response<anima_sample_modules::pb::PutReply>, tonic::Status>,
) {
    let first = next_unpinned_goes_to(notes, "probe").await;
    let other = if first == KVSTORE { KVSTORE_B } else { KVSTORE };
    (
        first,
        other,
        put_revoked_at(core, notes, first, value).await,
    )
}

/// Puts `value` at "k" (a 2 s write) through the Core as notes, unpinned,
/// and revokes `provider`'s lease once the call is in flight there; what
/// the caller got.
async fn put_revoked_at(
    core: &CoreProcess,
    notes: &Connection,
    provider: &str,
    value: &str,
) -> Result<tonic::Response<anima_sample_modules::pb::PutReply>, tonic::Status> {
    let call = tokio::spawn({
        let channel = notes.channel();
        let request = put("k", value, 2_000);
        async move { KvStoreClient::new(channel).put(request).await }
    });
    wait_in_flight(core, provider).await;
    revoke(core, provider).await;
    call.await.unwrap()
}

#[tokio::test]
async fn p10_an_idempotent_method_is_retried_on_the_other_provider_and_no_other_is() {
    // The Core's copy of the definition makes Put idempotent, with retries.
    let retried = Setup {
        second: true,
        definition: PUT_RETRIED,
        ..Setup::granted()
    }
    .start()
    .await;
    let notes = as_notes(&retried).await;
    // The provider's lease ends under the call: it writes nothing, answers
    // LEASE_REVOKED, and the Core tries the other provider.
    let (first, other, reply) = put_revoked_mid_call(&retried, &notes, "retried").await;
    let reply = reply.expect("retried on the other provider");
    // The other provider's second write (its first was the probe).
    assert_eq!(reply.into_inner().version, 2);
    assert_eq!(
        read_at(&notes, other, "k").await,
        Some(("retried".into(), 2))
    );
    retried
        .wait_leased(first.trim_start_matches("urn:anima:module:"))
        .await;
    assert_eq!(read_at(&notes, first, "k").await, None, "written once");

    // As published, Put is not idempotent: the same end is the caller's.
    let core = Setup {
        second: true,
        ..Setup::granted()
    }
    .start()
    .await;
    let notes = as_notes(&core).await;
    let (_, other, reply) = put_revoked_mid_call(&core, &notes, "once").await;
    // To the caller, a provider whose lease ended under its call is lost:
    // retriable, but the call may or may not have run.
    let ended = reply.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(reason(&ended), Some(Reason::ProviderLost), "{ended:?}");
    assert_eq!(read_at(&notes, other, "k").await, None, "not retried");
}

/// P12 with P10: a retry that moves to another provider asks that
/// provider's proxy sidecars first, as the first attempt asked the first
/// provider's: a module is never reached around its proxy, not even by a
/// retry.
#[tokio::test]
async fn p12_a_retry_on_another_provider_asks_that_providers_proxy_sidecar_first() {
    let core = Setup {
        second: true,
        proxied_b: true,
        definition: PUT_RETRIED,
        ..Setup::granted()
    }
    .start()
    .await;
    let notes = as_notes(&core).await;
    // The next unpinned call goes to kvstore, which has no sidecar.
    let mut probes = 0;
    while next_unpinned_goes_to(&notes, &format!("probe {probes}")).await != KVSTORE {
        probes += 1;
        assert!(probes < 4, "the Core takes the providers in turn");
    }
    // kvstore-b's proxy can no longer be asked: nothing may reach kvstore-b.
    core.cli_ok(&["stop", "ratelimit"]).await;
    core.wait_module("ratelimit", "stopped", |m| m["state"] == "stopped")
        .await;
    // kvstore's lease ends under the call: the Core would retry on kvstore-b.
    let refused = put_revoked_at(&core, &notes, KVSTORE, "around the proxy")
        .await
        .expect_err("kvstore-b's proxy cannot be asked");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        reason(&refused),
        Some(Reason::SidecarUnavailable),
        "{refused:?}"
    );
    // With its proxy back, kvstore-b is read: it never got the write.
    core.cli_ok(&["restart", "ratelimit"]).await;
    core.wait_leased("ratelimit").await;
    let deadline = Instant::now() + PATIENCE;
    let at_b = loop {
        let read = KvStoreClient::new(notes.channel())
            .get(pinned(GetRequest { key: "k".into() }, KVSTORE_B))
            .await;
        match read {
            Ok(reply) => break reply.into_inner(),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "kvstore-b is not reached again: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(
        !at_b.found,
        "kvstore-b was written around its proxy: {at_b:?}"
    );
}

/// The embedded default, end to end with real modules: notes (no contract
/// file) says at its start that it requires kv, waits `blocked` until the
/// kvstore is leased, and then keeps a user's notes in kv, calling it
/// through the Core.
#[tokio::test]
async fn p2_p6_the_notes_sample_keeps_its_notes_in_kv_through_the_core() {
    let env = [("KVSTORE_CACHE_LIMIT".to_owned(), "65536".to_owned())];
    let core = CoreProcess::start_env(None, |_| {}, &env).await;
    core.wait_leased("kvstore").await;
    core.wait_leased("notes").await;
    let log = std::fs::read_to_string(core.dir.path().join("stderr.log")).unwrap();
    let at = |parts: &[&str]| {
        log.lines()
            .position(|l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no line with {parts:?}:\n{log}"))
    };
    let kv_leased = at(&["lease_issued", KVSTORE]);
    let notes_leased = at(&["lease_issued", NOTES]);
    assert!(
        kv_leased < notes_leased,
        "notes was leased before its provider"
    );
    let app = user(&core, "user-dev").await;
    let mut notes = NotesClient::new(app.channel());
    let added = notes
        .add(AddNoteRequest {
            text: "through the Core".into(),
            id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.version, 1);
    let read = notes
        .read(ReadNoteRequest {
            id: added.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (read.found, read.text.as_str(), read.version),
        (true, "through the Core", 1)
    );
    // It is in kv, under notes' key.
    let as_notes = as_notes(&core).await;
    assert_eq!(
        read_at(&as_notes, KVSTORE, &format!("note/{}", added.id)).await,
        Some(("through the Core".into(), 1))
    );
}

/// Issue 15's acceptance: a workload of 1,000 calls from the notes sample to
/// kv through the Core (every call a user's `Notes/Add` or `Notes/Read`,
/// each one kv call), with two kv providers; one is killed (`kill -9`) a
/// third of the way in. Reads (`Get`, idempotent, retried by the
/// interface's policy) never fail; writes (`Put`, not idempotent) fail only
/// when in flight on the killed provider, as `PROVIDER_LOST` (counted); notes
/// is never restarted.
#[tokio::test]
async fn p9_a_killed_provider_loses_no_call_but_the_non_retriable_ones_in_flight() {
    const CALLS: usize = 1_000;
    const CONCURRENCY: usize = 16;
    let core = Setup {
        second: true,
        sample: true,
        ..Setup::granted()
    }
    .start()
    .await;
    let notes_before = core.module("notes").await;
    let app = user(&core, "user-dev").await;
    let victim = core.module("kvstore").await["pid"].as_u64().unwrap();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killed = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (next, killed) = (next.clone(), killed.clone());
        let mut notes = NotesClient::new(app.channel());
        workers.spawn(async move {
            let mut failures: Vec<(usize, Code, String)> = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= CALLS {
                    return failures;
                }
                if n == CALLS / 3 {
                    killed.notify_one();
                }
                let outcome = if n % 2 == 0 {
                    let add = AddNoteRequest {
                        text: format!("note {n}"),
                        id: format!("n{n}"),
                    };
                    notes.add(add).await.map(drop)
                } else {
                    let read = ReadNoteRequest {
                        id: format!("n{}", n - 1),
                    };
                    notes.read(read).await.map(drop)
                };
                if let Err(status) = outcome {
                    failures.push((n, status.code(), status.message().to_owned()));
                }
            }
        });
    }
    killed.notified().await;
    let status = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut failures = Vec::new();
    while let Some(done) = workers.join_next().await {
        failures.extend(done.unwrap());
    }
    let (writes, reads): (Vec<_>, Vec<_>) = failures.iter().partition(|(n, ..)| n % 2 == 0);
    assert!(
        reads.is_empty(),
        "reads are retried, none may fail: {reads:?}"
    );
    for (n, code, message) in &writes {
        assert_eq!(*code, Code::Unavailable, "call {n}: {message}");
        assert!(
            message.contains("went away during the call"),
            "call {n} failed for another reason than its provider's loss: {message}"
        );
    }
    assert!(
        writes.len() <= CONCURRENCY,
        "{} writes lost: more than were in flight at once ({CONCURRENCY})",
        writes.len()
    );
    println!(
        "{CALLS} calls, {CONCURRENCY} at once, a provider killed at call {}: {} non-retriable \
         writes lost (PROVIDER_LOST), 0 reads",
        CALLS / 3,
        writes.len()
    );
    let notes_after = core.module("notes").await;
    assert_eq!(notes_after["restarts"], 0, "{notes_after}");
    assert_eq!(notes_after["pid"], notes_before["pid"], "{notes_after}");
    assert_eq!(notes_after["state"], "leased", "{notes_after}");
}
