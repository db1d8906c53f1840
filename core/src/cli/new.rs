//! `anima new module NAME --type …`: scaffold a module as a Cargo crate of
//! its own.
//!
//! The crate's files are the templates in `new/`, with `{{placeholders}}`
//! replaced: its manifest (the SDK and the protocol crate by path, an empty
//! `[workspace]` table so it builds where it lies), `build.rs` compiling its
//! proto with protox, its contract, a counter service whose state is per
//! lease, `main`, a `TestBed` test and a client calling it through a Core.
//! `module-sdk/README.md` walks through the same files.

use std::path::{Path, PathBuf};

use anima_protocol::identity::validate_name;
use clap::{Args, Subcommand, ValueEnum};

use super::CliResult;

/// `anima new …`
#[derive(Debug, Subcommand)]
pub enum NewCommand {
    /// Scaffold a module: a Cargo crate of its own with a counter service,
    /// its contract, a test and a client; prints the next steps.
    Module(ModuleArgs),
}

/// `anima new module`
#[derive(Debug, Args)]
pub struct ModuleArgs {
    /// The module's name: its URN is `urn:anima:module:NAME`, and it names
    /// the crate and the binary (lowercase letters, digits and '-',
    /// starting with a letter).
    pub name: String,
    /// The module type (ADR-0003): ephemeral (Type I), private (Type II,
    /// resident, one Core) or shared (Type III, resident, many Cores).
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub module_type: Kind,
    /// The crate's directory, created if missing and refused unless empty.
    /// Default: ./NAME.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The module-sdk directory of an Anima source tree, which the crate
    /// depends on by path (and on the protocol crate in its parent).
    /// Default: the SDK this `anima` was built from.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

/// The module types, as `--type` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Type I: started for one lease, exits when it ends.
    Ephemeral,
    /// Type II: resident, one Core; standby without a lease.
    Private,
    /// Type III: resident, any number of Cores, state per lease.
    Shared,
}

impl Kind {
    /// The contract's `type` value.
    fn contract_type(self) -> &'static str {
        match self {
            Kind::Ephemeral => "ephemeral",
            Kind::Private => "resident-private",
            Kind::Shared => "resident-shared",
        }
    }

    /// The lines of `module.toml` that say the type, with what it means.
    fn contract_lines(self) -> &'static str {
        match self {
            Kind::Ephemeral => {
                "# Type I: the Core starts it for one lease, and it exits when the lease\n\
                 # ends (after `expired_grace`, in which the same Core may lease it again,\n\
                 # and `termination_window` for cleanup).\n\
                 type = \"ephemeral\"\n\
                 startup_grace = \"10s\"\n\
                 expired_grace = \"1s\"\n\
                 termination_window = \"2s\"\n"
            }
            Kind::Private => {
                "# Type II: the Core starts it; one Core at a time. Without a lease it\n\
                 # waits in standby, process intact, for its Core to lease it again.\n\
                 type = \"resident-private\"\n\
                 init = \"core-started\"\n"
            }
            Kind::Shared => {
                "# Type III: any number of Cores lease it at once, each seeing only the\n\
                 # counters of its own lease; standby when no lease is left.\n\
                 type = \"resident-shared\"\n"
            }
        }
    }
}

/// The SDK source this binary was built from: the default `--sdk-path`.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../module-sdk");

/// The scaffold: each file's path in the crate (`NAME` replaced) and its
/// template.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("new/Cargo.toml.tmpl")),
    ("build.rs", include_str!("new/build.rs.tmpl")),
    ("module.toml", include_str!("new/module.toml.tmpl")),
    ("proto/NAME.proto", include_str!("new/proto.tmpl")),
    ("src/lib.rs", include_str!("new/lib.rs.tmpl")),
    ("src/main.rs", include_str!("new/main.rs.tmpl")),
    ("tests/counter.rs", include_str!("new/test.rs.tmpl")),
    ("examples/client.rs", include_str!("new/client.rs.tmpl")),
    (".gitignore", include_str!("new/gitignore.tmpl")),
];

/// What the command prints once the crate is written.
const NEXT_STEPS: &str = include_str!("new/next-steps.txt");

/// Rust keywords and names Cargo reserves, which cannot name a crate.
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "build",
    "const",
    "continue",
    "core",
    "crate",
    "deps",
    "do",
    "dyn",
    "else",
    "enum",
    "examples",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "incremental",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc-macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Runs `anima new`.
pub fn run(command: NewCommand) -> CliResult {
    match command {
        NewCommand::Module(args) => module(args),
    }
}

/// Runs `anima new module`: checks everything, writes the crate, prints
/// the next steps.
fn module(args: ModuleArgs) -> CliResult {
    check_name(&args.name)?;
    let sdk = sdk_path(args.sdk_path.as_deref())?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    check_empty(&dir)?;
    let protocol = sdk.parent().unwrap_or(&sdk).to_path_buf();
    let vars = Vars {
        name: args.name.clone(),
        kind: args.module_type,
        sdk: sdk.clone(),
        protocol,
    };
    for (path, template) in FILES {
        let file = dir.join(path.replace("NAME", &args.name));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                format!(
                    "cannot create {}: {e}: give --dir a writable place",
                    parent.display()
                )
            })?;
        }
        std::fs::write(&file, vars.render(template)).map_err(|e| {
            format!(
                "cannot write {}: {e}: give --dir a writable place",
                file.display()
            )
        })?;
    }
    let steps = vars
        .render(NEXT_STEPS)
        .replace("{{dir}}", &dir.display().to_string())
        .replace(
            "{{sdk_readme}}",
            &sdk.join("README.md").display().to_string(),
        );
    print!("{steps}");
    Ok(())
}

/// The values the templates' placeholders stand for.
struct Vars {
    name: String,
    kind: Kind,
    sdk: PathBuf,
    protocol: PathBuf,
}

impl Vars {
    /// `template` with its placeholders replaced.
    fn render(&self, template: &str) -> String {
        let crate_name = self.name.replace('-', "_");
        let proto_package = format!("{crate_name}.v1");
        [
            ("{{name}}", self.name.as_str()),
            ("{{crate}}", &crate_name),
            ("{{proto_package}}", &proto_package),
            ("{{type}}", self.kind.contract_type()),
            ("{{type_lines}}", self.kind.contract_lines()),
            ("{{rust_version}}", env!("CARGO_PKG_RUST_VERSION")),
            ("{{sdk_path}}", &toml_string(&self.sdk)),
            ("{{protocol_path}}", &toml_string(&self.protocol)),
        ]
        .iter()
        .fold(template.to_owned(), |text, (from, to)| {
            text.replace(from, to)
        })
    }
}

/// `path` as a TOML string (quoted, escaped).
fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// A module name: a valid URN name that also names a Rust crate, a binary
/// and a protobuf package.
fn check_name(name: &str) -> Result<(), String> {
    const FIX: &str = "; choose one like \"my-counter\" (lowercase letters, digits and '-', \
                       starting with a letter)";
    let why = if name.is_empty() {
        "it is empty"
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        "it must start with a lowercase letter, as it also names a Rust crate and a protobuf \
         package"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        "only lowercase letters, digits and '-' are allowed in a module crate's name"
    } else if RESERVED.contains(&name) {
        "it is a Rust keyword or a name Cargo reserves"
    } else {
        // What else a URN's name must be (at most 63 characters).
        return validate_name(name).map_err(|e| format!("{e}{FIX}"));
    };
    Err(format!("invalid name {name:?}: {why}{FIX}"))
}

/// The SDK to depend on: `given`, else the one this binary was built from;
/// absolute, and checked to be the SDK inside an Anima source tree.
fn sdk_path(given: Option<&Path>) -> Result<PathBuf, String> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None if Path::new(BUILT_FROM_SDK).is_dir() => PathBuf::from(BUILT_FROM_SDK),
        None => {
            return Err(format!(
                "the SDK this anima was built from ({BUILT_FROM_SDK}) is not here: \
                 give --sdk-path, the module-sdk directory of an Anima source tree"
            ));
        }
    };
    let sdk = std::fs::canonicalize(&path).map_err(|e| {
        format!(
            "--sdk-path {}: {e}: give the module-sdk directory of an Anima source tree",
            path.display()
        )
    })?;
    let is_package = |dir: &Path, name: &str| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|text| text.contains(&format!("name = \"{name}\"")))
    };
    let in_tree = sdk
        .parent()
        .is_some_and(|root| is_package(root, "anima-protocol"));
    if !is_package(&sdk, "anima-module-sdk") || !in_tree {
        return Err(format!(
            "--sdk-path {} is not the module-sdk directory of an Anima source tree \
             (anima-module-sdk, with anima-protocol in its parent): give that directory",
            path.display()
        ));
    }
    Ok(sdk)
}

/// The crate's directory must be new or empty: nothing is overwritten.
fn check_empty(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(format!(
                "{} exists and is not empty: give --dir a new or empty directory",
                dir.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "{}: {e}: give --dir a new or empty directory",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use anima_protocol::contract::{Contract, InitMode, ModuleType};

    use super::*;

    fn vars(name: &str, kind: Kind) -> Vars {
        Vars {
            name: name.into(),
            kind,
            sdk: PathBuf::from("/src/anima/module-sdk"),
            protocol: PathBuf::from("/src/anima"),
        }
    }

    #[test]
    fn every_placeholder_is_replaced() {
        for kind in [Kind::Ephemeral, Kind::Private, Kind::Shared] {
            let v = vars("my-counter", kind);
            for (path, template) in FILES {
                let text = v.render(template);
                assert!(!text.contains("{{"), "{path}: {text}");
            }
        }
    }

    #[test]
    fn each_type_writes_a_contract_of_that_type() {
        for (kind, expected) in [
            (Kind::Ephemeral, ModuleType::Ephemeral),
            (
                Kind::Private,
                ModuleType::ResidentPrivate(InitMode::CoreStarted),
            ),
            (Kind::Shared, ModuleType::ResidentShared),
        ] {
            let text = vars("my-counter", kind).render(include_str!("new/module.toml.tmpl"));
            let contract = Contract::from_toml(&text).unwrap();
            assert_eq!(contract.module_type, expected, "{text}");
            assert_eq!(contract.urn.as_str(), "urn:anima:module:my-counter");
            assert!(
                contract
                    .methods
                    .iter()
                    .any(|m| m == "/my_counter.v1.Counter/Increment"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_manifest_names_the_sdk_by_path() {
        let text = vars("demo", Kind::Shared).render(include_str!("new/Cargo.toml.tmpl"));
        let manifest: toml::Table = text.parse().unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("demo"));
        assert!(manifest["workspace"].as_table().unwrap().is_empty());
        let deps = &manifest["dependencies"];
        assert_eq!(
            deps["anima-module-sdk"]["path"].as_str(),
            Some("/src/anima/module-sdk")
        );
        assert_eq!(deps["anima-protocol"]["path"].as_str(), Some("/src/anima"));
        assert_eq!(
            manifest["package"]["rust-version"].as_str(),
            Some(env!("CARGO_PKG_RUST_VERSION"))
        );
    }

    #[test]
    fn names_that_cannot_name_a_crate_are_refused() {
        for good in ["demo", "my-counter", "a1", "x"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "Demo",
            "1demo",
            "-demo",
            "my_counter",
            "my.counter",
            "fn",
            "test",
            "std",
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("choose one like"), "{bad}: {e}");
        }
        assert!(check_name(&"a".repeat(64)).is_err());
    }
}
