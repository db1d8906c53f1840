//! The capability contract: what a module declares about itself.
//!
//! Written as `module.toml` next to the module (or built in code):
//!
//! ```toml
//! urn = "urn:anima:module:hasher"
//! version = "0.1.0"
//! type = "ephemeral"            # or "resident-private" / "resident-shared"
//! # init = "core-started"       # resident-private only: or "pre-started"
//! methods = ["/anima.sample.v1.Hasher/Digest"]
//! max_lease = "30s"
//! startup_grace = "10s"
//! expired_grace = "0s"
//! termination_window = "2s"
//! # Interfaces provided and required (PROTOCOL.md §9):
//! provides = [{ interface = "anima.sample/digest", version = "1.0.0" }]
//! requires = [{ interface = "anima.sample/kv", version = ">=1.0" }]
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::identity::{Urn, UrnKind};
use crate::interface::{Provided, Required};
use crate::lease::{MIN_TTL, Scope};

/// The module type (ADR-0003 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleType {
    /// Type I: started by a Core, dies with its lease.
    Ephemeral,
    /// Type II: one Core; standby without a lease.
    ResidentPrivate(InitMode),
    /// Type III: many Cores, state isolated per lease; standby when none.
    ResidentShared,
}

/// How a resident private module is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitMode {
    /// The Core starts it.
    CoreStarted,
    /// Infrastructure starts it; the Core dials it.
    PreStarted,
}

impl fmt::Display for ModuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleType::Ephemeral => "ephemeral",
            ModuleType::ResidentPrivate(InitMode::CoreStarted) => "resident-private (core-started)",
            ModuleType::ResidentPrivate(InitMode::PreStarted) => "resident-private (pre-started)",
            ModuleType::ResidentShared => "resident-shared",
        })
    }
}

/// Why a contract is invalid or cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// The text is not TOML of the contract's shape (an unknown or missing
    /// key, a wrong type).
    #[error("{0}")]
    Syntax(String),
    /// A field's value breaks a rule.
    #[error("{field}: {message}")]
    Field {
        /// The field, as `module.toml` spells it.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's contract is invalid.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: Box<ContractError>,
    },
}

impl ContractError {
    /// What is wrong, without the file name [`ContractError::InFile`] adds.
    pub fn without_path(&self) -> &ContractError {
        match self {
            ContractError::InFile { source, .. } => source.without_path(),
            other => other,
        }
    }
}

/// A module's capability contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// The module's identity (must equal its certificate's URN).
    pub urn: Urn,
    /// The module's version.
    pub version: String,
    /// The module type.
    pub module_type: ModuleType,
    /// The exact capability methods offered.
    pub methods: Scope,
    /// The longest lease the module grants.
    pub max_lease: Duration,
    /// How long to wait for a first lease before giving up (Type I exits).
    pub startup_grace: Duration,
    /// After a Type I lease ends: how long the same Core may re-lease.
    pub expired_grace: Duration,
    /// After zero-lease, how long cleanup may take before a Type I exits.
    pub termination_window: Duration,
    /// The interfaces the module provides (P1), each at one version.
    pub provides: Vec<Provided>,
    /// The interfaces the module requires (P1), each in a range of versions.
    pub requires: Vec<Required>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct RawContract {
    urn: String,
    version: String,
    #[serde(rename = "type", default)]
    module_type: Option<String>,
    init: Option<String>,
    methods: Vec<String>,
    max_lease: String,
    startup_grace: Option<String>,
    expired_grace: Option<String>,
    termination_window: Option<String>,
    #[serde(default)]
    provides: Vec<RawInterface>,
    #[serde(default)]
    requires: Vec<RawInterface>,
}

/// One `provides` or `requires` entry: an interface and a version (for
/// `provides`) or a range of versions (for `requires`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    interface: String,
    version: String,
}

/// Default startup grace.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(10);
/// Default termination window.
pub const DEFAULT_TERMINATION_WINDOW: Duration = Duration::from_secs(2);

impl Contract {
    /// Parses a `module.toml`.
    pub fn from_toml(text: &str) -> Result<Self, ContractError> {
        let raw: RawContract =
            toml::from_str(text).map_err(|e| ContractError::Syntax(e.to_string()))?;
        let urn = urn_field(&raw.urn)?;
        let module_type = type_field(raw.module_type.as_deref(), raw.init.as_deref())?;
        if raw.methods.is_empty() {
            return Err(invalid(
                "methods",
                "a module declares at least one method".into(),
            ));
        }
        let methods = Scope::new(raw.methods).map_err(|e| invalid("methods", e.to_string()))?;
        let max_lease = duration_field("max_lease", Some(&raw.max_lease), Duration::ZERO)?;
        if max_lease < MIN_TTL {
            return Err(invalid(
                "max_lease",
                format!("must be at least {MIN_TTL:?}"),
            ));
        }
        let (provides, requires) = interfaces_field(&raw.provides, &raw.requires)?;
        Ok(Contract {
            urn,
            version: raw.version,
            provides,
            requires,
            module_type,
            methods,
            max_lease,
            startup_grace: duration_field(
                "startup_grace",
                raw.startup_grace.as_deref(),
                DEFAULT_STARTUP_GRACE,
            )?,
            expired_grace: duration_field(
                "expired_grace",
                raw.expired_grace.as_deref(),
                Duration::ZERO,
            )?,
            termination_window: duration_field(
                "termination_window",
                raw.termination_window.as_deref(),
                DEFAULT_TERMINATION_WINDOW,
            )?,
        })
    }

    /// Reads and parses a `module.toml` file.
    pub fn from_file(path: &Path) -> Result<Self, ContractError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| ContractError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }
}

/// A field of `module.toml` whose value breaks a rule.
fn invalid(field: &'static str, message: String) -> ContractError {
    ContractError::Field { field, message }
}

/// The `urn` field: a module's URN.
fn urn_field(text: &str) -> Result<Urn, ContractError> {
    let urn: Urn = text
        .parse()
        .map_err(|e: crate::IdentityError| invalid("urn", e.to_string()))?;
    if urn.kind() != UrnKind::Module {
        return Err(invalid("urn", format!("{urn} is not a module URN")));
    }
    Ok(urn)
}

/// The `type` and `init` fields: the module type (ephemeral when absent),
/// with an init mode for a resident-private module and for no other.
fn type_field(module_type: Option<&str>, init: Option<&str>) -> Result<ModuleType, ContractError> {
    Ok(match (module_type, init) {
        (None | Some("ephemeral"), None) => ModuleType::Ephemeral,
        (Some("resident-private"), Some("core-started")) => {
            ModuleType::ResidentPrivate(InitMode::CoreStarted)
        }
        (Some("resident-private"), Some("pre-started")) => {
            ModuleType::ResidentPrivate(InitMode::PreStarted)
        }
        (Some("resident-private"), None) => {
            return Err(invalid(
                "init",
                "a resident-private module must declare init = \"core-started\" or \"pre-started\""
                    .into(),
            ));
        }
        (Some("resident-shared"), None) => ModuleType::ResidentShared,
        (Some(t @ ("ephemeral" | "resident-shared")), Some(_)) => {
            return Err(invalid(
                "init",
                format!("only resident-private modules declare init (type is {t})"),
            ));
        }
        (Some("resident-private"), Some(other)) => {
            return Err(invalid(
                "init",
                format!("{other:?} is not \"core-started\" or \"pre-started\""),
            ));
        }
        (Some(other), _) => {
            return Err(invalid(
                "type",
                format!(
                    "{other:?} is not \"ephemeral\", \"resident-private\" or \"resident-shared\""
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "init",
                "only resident-private modules declare init".into(),
            ));
        }
    })
}

/// The `provides` and `requires` fields (P1): every entry well-formed, no
/// interface provided twice at one version or required twice, and none
/// required that the module itself provides in a matching version.
fn interfaces_field(
    provides: &[RawInterface],
    requires: &[RawInterface],
) -> Result<(Vec<Provided>, Vec<Required>), ContractError> {
    let mut provided: Vec<Provided> = Vec::new();
    for (i, entry) in provides.iter().enumerate() {
        let p = Provided::new(&entry.interface, &entry.version)
            .map_err(|e| invalid("provides", format!("provides[{i}]: {e}")))?;
        if provided.contains(&p) {
            return Err(invalid(
                "provides",
                format!("provides[{i}]: {p} is listed twice"),
            ));
        }
        provided.push(p);
    }
    let mut required: Vec<Required> = Vec::new();
    for (i, entry) in requires.iter().enumerate() {
        let r = Required::new(&entry.interface, &entry.version)
            .map_err(|e| invalid("requires", format!("requires[{i}]: {e}")))?;
        if required.iter().any(|o| o.interface == r.interface) {
            return Err(invalid(
                "requires",
                format!(
                    "requires[{i}]: {} is required twice; give one range (e.g. \">=1.2, <3\")",
                    r.interface
                ),
            ));
        }
        if let Some(own) = provided.iter().find(|p| r.accepts(p)) {
            return Err(invalid(
                "requires",
                format!("requires[{i}]: the module provides {own} itself"),
            ));
        }
        required.push(r);
    }
    Ok((provided, required))
}

/// A duration field: its value, or `default` when it is absent.
fn duration_field(
    field: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ContractError> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration(v).map_err(|e| invalid(field, e.0)),
    }
}

/// A duration that [`parse_duration`] does not read; says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parses `250ms`, `30s`, `5m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse_duration_text(text).map_err(DurationError)
}

fn parse_duration_text(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h)"))?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
    .ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        urn = "urn:anima:module:x"
        version = "1.0.0"
        methods = ["/x.v1.X/Do"]
        max_lease = "30s"
    "#;

    #[test]
    fn e7_type_defaults_to_ephemeral() {
        let c = Contract::from_toml(BASE).unwrap();
        assert_eq!(c.module_type, ModuleType::Ephemeral);
        assert_eq!(c.max_lease, Duration::from_secs(30));
        assert_eq!(c.startup_grace, DEFAULT_STARTUP_GRACE);
    }

    #[test]
    fn r1_resident_private_needs_an_init_mode() {
        let no_init = format!("{BASE}\ntype = \"resident-private\"");
        assert!(
            Contract::from_toml(&no_init)
                .unwrap_err()
                .to_string()
                .contains("init")
        );
        let ok = format!("{BASE}\ntype = \"resident-private\"\ninit = \"pre-started\"");
        assert_eq!(
            Contract::from_toml(&ok).unwrap().module_type,
            ModuleType::ResidentPrivate(InitMode::PreStarted)
        );
    }

    #[test]
    fn s1_resident_shared_is_declared() {
        let c = Contract::from_toml(&format!("{BASE}\ntype = \"resident-shared\"")).unwrap();
        assert_eq!(c.module_type, ModuleType::ResidentShared);
    }

    #[test]
    fn bad_contracts_name_the_field() {
        for (text, field) in [
            (format!("{BASE}\nbogus = 1"), "bogus"),
            (BASE.replace("30s", "30"), "max_lease"),
            (BASE.replace("/x.v1.X/Do", "Do"), "methods"),
            (BASE.replace("module:x", "core:x"), "urn"),
            (format!("{BASE}\ntype = \"weird\""), "type"),
        ] {
            let err = Contract::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn p1_a_contract_declares_the_interfaces_it_provides_and_requires() {
        let c = Contract::from_toml(&format!(
            "{BASE}\nprovides = [{{ interface = \"network/basic\", version = \"1.0\" }}, \
             {{ interface = \"network/basic\", version = \"2.1.0\" }}]\n\
             requires = [{{ interface = \"anima.sample/kv\", version = \">=1.0\" }}]"
        ))
        .unwrap();
        assert_eq!(
            c.provides
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["network/basic 1.0.0", "network/basic 2.1.0"]
        );
        assert_eq!(c.requires.len(), 1);
        assert!(
            c.requires[0]
                .accepts(&crate::interface::Provided::new("anima.sample/kv", "1.3").unwrap())
        );
        let none = Contract::from_toml(BASE).unwrap();
        assert!(none.provides.is_empty() && none.requires.is_empty());
    }

    #[test]
    fn p1_a_malformed_interface_declaration_is_refused_naming_the_entry() {
        let provides = |entries: &str| format!("{BASE}\nprovides = [{entries}]");
        let requires = |entries: &str| format!("{BASE}\nrequires = [{entries}]");
        for (text, says) in [
            (
                provides("{ interface = \"basic\", version = \"1.0\" }"),
                "provides[0]: interface name",
            ),
            (
                provides("{ interface = \"net/basic\", version = \"one\" }"),
                "provides[0]: interface version",
            ),
            (
                provides(
                    "{ interface = \"net/basic\", version = \"1.0\" }, { interface = \"net/basic\", version = \"1.0.0\" }",
                ),
                "provides[1]: net/basic 1.0.0 is listed twice",
            ),
            (provides("{ interface = \"net/basic\" }"), "version"),
            (
                provides("{ interface = \"net/basic\", version = \"1.0\", extra = 1 }"),
                "extra",
            ),
            (
                requires("{ interface = \"net/basic\", version = \"=>1\" }"),
                "requires[0]: version range",
            ),
            (
                requires(
                    "{ interface = \"net/basic\", version = \">=1\" }, { interface = \"net/basic\", version = \"<3\" }",
                ),
                "requires[1]: net/basic is required twice",
            ),
            (
                format!(
                    "{BASE}\nprovides = [{{ interface = \"net/basic\", version = \"1.2\" }}]\nrequires = [{{ interface = \"net/basic\", version = \"^1\" }}]"
                ),
                "requires[0]: the module provides net/basic 1.2.0 itself",
            ),
        ] {
            let err = Contract::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(says), "{err:?} should say {says:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "5", "5 s", "-5s", "5d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
