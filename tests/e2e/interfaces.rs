//! Interfaces between modules (issue 15, PROTOCOL.md §9): resolution before
//! start (P2), and a contract copy that declares other interfaces than the
//! module (P1). The provider is the kvstore sample (`anima.sample/kv`
//! 1.0.0); the module requiring it is the echo fixture under a contract
//! with `requires`, named `notes`.

use std::path::Path;

use anima_tests::bin_path;

use super::serve::{CoreProcess, core_and_admin, module_entry, sample};

use super::scaffold::repo;

/// The notes contract: the echo methods, requiring `anima.sample/kv` in
/// `range`.
fn notes_contract(range: &str) -> String {
    format!(
        "urn = \"urn:anima:module:notes\"\nversion = \"0.1.0\"\ntype = \"resident-shared\"\n\
         methods = [{}]\nmax_lease = \"30s\"\n\
         requires = [{{ interface = \"anima.sample/kv\", version = \"{range}\" }}]\n",
        anima_tests::echo_methods_toml()
    )
}

/// The settings of the `notes` module: the echo fixture under the contract
/// file `notes.toml`, whose text (`contract`) it is also given to report as
/// its own.
pub(crate) fn notes_settings(contract: &str) -> String {
    format!(
        r#"type = "resident-shared"
command = "{}"
contract = "notes.toml"

[module.env]
FIXTURE_CONTRACT = '''{contract}'''
"#,
        bin_path("anima-fixture-module").display()
    )
}

/// A configuration hosting the kvstore (with its contract file when
/// `kv_contract`) and notes requiring `range` (with its contract file).
fn config(range: &str, kv_contract: bool) -> String {
    let kv_contract = if kv_contract {
        format!(
            "contract = \"{}\"\n",
            repo().join("sample-modules/kvstore/module.toml").display()
        )
    } else {
        String::new()
    };
    let kvstore = format!(
        r#"type = "resident-private"
command = "{}"
{kv_contract}
[module.env]
KVSTORE_CACHE_LIMIT = "65536"
"#,
        sample("kvstore")
    );
    let notes = notes_settings(&notes_contract(range));
    core_and_admin("") + &module_entry("kvstore", &kvstore) + &module_entry("notes", &notes)
}

/// Starts a Core with [`config`], the notes contract file written first
/// (notes' certificate is one of the dev identities).
async fn core(range: &str, kv_contract: bool) -> CoreProcess {
    let text = config(range, kv_contract);
    let contract = notes_contract(range);
    CoreProcess::start_with(Some(&text), move |certs| {
        let dir = certs.parent().and_then(Path::parent).unwrap();
        std::fs::write(dir.join("notes.toml"), contract).unwrap();
    })
    .await
}

/// The position of the first line of the Core's log with every one of
/// `parts`.
fn first_line(core: &CoreProcess, parts: &[&str]) -> usize {
    let log = std::fs::read_to_string(core.dir.path().join("stderr.log")).unwrap_or_default();
    log.lines()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in the Core's log:\n{log}"))
}

#[tokio::test]
async fn p2_a_module_starts_only_once_a_compatible_provider_of_what_it_requires_is_leased() {
    let core = core(">=1.0", true).await;
    core.wait_leased("kvstore").await;
    core.wait_leased("notes").await;
    let blocked = first_line(&core, &["module_blocked", "urn:anima:module:notes"]);
    let provider = first_line(&core, &["lease_issued", "urn:anima:module:kvstore"]);
    let started = first_line(&core, &["module_started", "urn:anima:module:notes"]);
    assert!(
        blocked < provider && provider < started,
        "blocked at line {blocked}, provider leased at {provider}, notes started at {started}"
    );
    let log = std::fs::read_to_string(core.dir.path().join("stderr.log")).unwrap();
    let line = log.lines().nth(blocked).unwrap();
    assert!(
        line.contains("waiting for a leased provider of anima.sample/kv >=1.0"),
        "{line}"
    );
}

/// Without the provider's contract file the Core cannot tell before start
/// what it provides: it learns it from `ModuleAdmin/Status` at the lease,
/// and a module requiring a version nobody provides stays `blocked`,
/// saying which, while one that accepts it starts.
#[tokio::test]
async fn p2_a_requirement_no_leased_module_satisfies_leaves_the_module_blocked() {
    let unmet = core("^2", false).await;
    unmet.wait_leased("kvstore").await;
    let row = unmet
        .wait_module("notes", "blocked", |m| m["state"] == "blocked")
        .await;
    assert_eq!(
        row["detail"], "waiting for a leased provider of anima.sample/kv ^2",
        "{row}"
    );
    assert!(row["pid"].is_null(), "not started: {row}");
    let met = core(">=1.0", false).await;
    met.wait_leased("notes").await;
}

/// With every contract known, a requirement nobody can satisfy is refused
/// before anything starts.
#[tokio::test]
async fn p2_config_check_refuses_a_requirement_no_module_provides() {
    let dir = tempfile::tempdir().unwrap();
    anima_certs::init_dir(&dir.path().join("certs/dev"), &Default::default()).unwrap();
    std::fs::write(dir.path().join("notes.toml"), notes_contract("^2")).unwrap();
    std::fs::write(dir.path().join("anima.toml"), config("^2", true)).unwrap();
    let out = std::process::Command::new(bin_path("anima"))
        .args(["config", "check", "anima.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "urn:anima:module:notes requires anima.sample/kv ^2: no module here provides a \
             compatible version (urn:anima:module:kvstore provides 1.0.0)"
        ),
        "{stderr}"
    );
}

/// P1, through a Core: the interfaces a module provides are the ones its
/// contract declares, and the module reports them. A Core whose copy of
/// kvstore's contract says it provides `anima.sample/kv` 2.0.0 learns at
/// the first lease that the module provides 1.0.0, names both, and does not
/// lease it.
#[tokio::test]
async fn p1_a_contract_copy_declaring_other_interfaces_than_the_module_is_reported() {
    let own = std::fs::read_to_string(repo().join("sample-modules/kvstore/module.toml")).unwrap();
    let stale = own.replace(
        "provides = [{ interface = \"anima.sample/kv\", version = \"1.0.0\" }]",
        "provides = [{ interface = \"anima.sample/kv\", version = \"2.0.0\" }]",
    );
    assert_ne!(own, stale);
    let kvstore = format!(
        "type = \"resident-private\"\ncommand = \"{}\"\ncontract = \"kvstore.toml\"\n",
        sample("kvstore")
    );
    let text = core_and_admin("") + &module_entry("kvstore", &kvstore);
    let core = CoreProcess::start_with(Some(&text), move |certs| {
        let dir = certs.parent().and_then(Path::parent).unwrap();
        std::fs::write(dir.join("kvstore.toml"), stale).unwrap();
    })
    .await;
    let failed = core
        .wait_module("kvstore", "failed", |m| m["state"] == "failed")
        .await;
    let detail = failed["detail"].as_str().unwrap();
    for said in [
        "provides here, not by the module: anima.sample/kv 2.0.0",
        "provides by the module, not here: anima.sample/kv 1.0.0",
    ] {
        assert!(detail.contains(said), "{said:?} not in {detail:?}");
    }
    assert!(failed["lease_id"].is_null(), "not leased: {failed}");
}
