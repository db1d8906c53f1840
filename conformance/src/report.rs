//! The verdicts: one per CONFORMANCE.md row, with the evidence behind it.
//! Every row id is explained, with what the tool does to decide it, in the
//! repository's `docs/conformance.md` ([`ROWS_DOC`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Every row of the conformance matrix, in its order.
pub const ROWS: &[(&str, &str)] = &[
    ("T1", "gRPC over mutual TLS only; no other listener"),
    ("T2", "plaintext refused, on localhost too"),
    (
        "T3",
        "no cert, other CA, expired cert, wrong identity refused",
    ),
    ("A1", "no static secrets"),
    (
        "A2",
        "lease holds id, scope, both identities, bounded expiry, revocation conditions",
    ),
    (
        "A3",
        "both sides issue and validate a lease before any request",
    ),
    (
        "A4",
        "after the handshake only proofs, renewals and scope changes",
    ),
    (
        "A5",
        "a side that sees the lease end stops communicating for it",
    ),
    (
        "A6",
        "expired or revoked lease: further requests refused at once",
    ),
    ("A7", "explicit refusal revokes on the other side"),
    ("A8", "renewed lease keeps serving without interruption"),
    ("A9", "lease never longer than the contract's maximum"),
    ("I1", "strict gRPC service interface"),
    ("I2", "exposed methods are exactly the declared ones"),
    ("I3", "only the declared interface and the lease context"),
    ("I4", "no reflection; undeclared methods refused"),
    (
        "Z1",
        "zero-lease on expiry, revocation, connection loss, startup grace",
    ),
    ("Z2", "no valid lease, no handler execution"),
    (
        "Z3",
        "zero-lease: Type I terminates, Type II/III stay and refuse",
    ),
    (
        "E1",
        "Type I: no connection within the startup grace, it terminates",
    ),
    ("E2", "Type I: leases from its launching Core only"),
    ("E3", "Type I: expired grace re-lease by the same Core only"),
    (
        "E4",
        "Type I: zero-lease opens the termination window (cleanup)",
    ),
    ("E5", "Type I: terminates by itself"),
    (
        "E6",
        "Type I: expiry mid-execution halts, no side effect, LEASE_EXPIRED",
    ),
    ("E7", "Type I is the default type"),
    ("R1", "Type II declared with its init mode"),
    ("R2", "Type II: one Core only"),
    ("R3", "Type II: zero-lease is standby, process stays"),
    (
        "R4",
        "Type II: standby refuses every call, waits for the same Core",
    ),
    ("R5", "Type II: never terminated by lease expiry"),
    (
        "R6",
        "Type II: expiry mid-execution halts, no side effect, LEASE_EXPIRED",
    ),
    ("S1", "Type III declared explicitly"),
    ("S2", "Type III: runs independent of any Core"),
    ("S3", "Type III: several Cores concurrently"),
    (
        "S4",
        "Type III: state scoped to the lease, deleted when it ends",
    ),
    (
        "S5",
        "Type III: one Core's expiry leaves the others unaffected",
    ),
    ("S6", "Type III: global zero-lease is standby"),
    (
        "S7",
        "Type III: terminated only by infrastructure or an administrator",
    ),
    ("S8", "Type III: behaviour independent of other tenants"),
    ("S9", "Type III: no instance data beyond the lease"),
    ("S10", "Type III: a Core can blacklist a leaking module"),
    ("O1", "observability works for every type"),
    (
        "P1",
        "interfaces provided and required are declared and reported",
    ),
    ("P6", "another module's identity is refused"),
    (
        "P12",
        "a proxy sidecar answers Inspect with a well-formed verdict, only under a lease",
    ),
];

/// Where every row id is explained (what the rule means and what the tool
/// does to check it), relative to the repository's root; the human table
/// ends by pointing there.
pub const ROWS_DOC: &str = "docs/conformance.md";

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every check of the row held.
    Pass,
    /// A check failed: the module breaks the rule.
    Fail,
    /// The row does not apply to this module (type, mode, no probe, or a
    /// Core-side rule).
    #[serde(rename = "n/a")]
    NotApplicable,
}

/// One row's result.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    /// The row id (`T1`, `E5`, …).
    pub id: &'static str,
    /// What the row requires.
    pub rule: &'static str,
    /// Pass, fail or n/a.
    pub verdict: Verdict,
    /// What was observed: every failure, or what passed, or why n/a.
    pub evidence: Vec<String>,
}

/// Collects verdicts: a row fails if any check failed, passes if a check
/// passed and none failed, and is n/a otherwise.
#[derive(Debug, Default)]
pub struct Report {
    passes: BTreeMap<&'static str, Vec<String>>,
    fails: BTreeMap<&'static str, Vec<String>>,
    na: BTreeMap<&'static str, String>,
}

impl Report {
    /// Records a check of `id` that held.
    pub fn pass(&mut self, id: &'static str, evidence: impl Into<String>) {
        self.passes.entry(id).or_default().push(evidence.into());
    }

    /// Records a check of `id` that failed.
    pub fn fail(&mut self, id: &'static str, evidence: impl Into<String>) {
        let evidence = evidence.into();
        tracing::warn!(row = id, "{evidence}");
        self.fails.entry(id).or_default().push(evidence);
    }

    /// Records `ok` as a pass or a failure of `id`.
    pub fn check(&mut self, id: &'static str, ok: bool, evidence: impl Into<String>) {
        if ok {
            self.pass(id, evidence);
        } else {
            self.fail(id, evidence);
        }
    }

    /// Marks `id` not applicable (unless something checked it).
    pub fn not_applicable(&mut self, id: &'static str, why: impl Into<String>) {
        self.na.entry(id).or_insert_with(|| why.into());
    }

    /// The rows, in matrix order.
    pub fn rows(&self) -> Vec<RowResult> {
        ROWS.iter()
            .map(|&(id, rule)| {
                let (verdict, evidence) = if let Some(f) = self.fails.get(id) {
                    (Verdict::Fail, f.clone())
                } else if let Some(p) = self.passes.get(id) {
                    (Verdict::Pass, p.clone())
                } else {
                    let why = self
                        .na
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| "not checked for this module".into());
                    (Verdict::NotApplicable, vec![why])
                };
                RowResult {
                    id,
                    rule,
                    verdict,
                    evidence,
                }
            })
            .collect()
    }

    /// Whether any row failed.
    pub fn failed(&self) -> bool {
        !self.fails.is_empty()
    }

    /// The human table: one line per row, failures with their evidence.
    pub fn table(&self, module: &str, verbose: bool) -> String {
        let rows = self.rows();
        let mut out = format!("anima conformance: {module}\n");
        for row in &rows {
            let mark = match row.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::NotApplicable => "n/a ",
            };
            let _ = writeln!(out, "{:<4} {mark}  {}", row.id, row.rule);
            let show = match row.verdict {
                Verdict::Fail => row.evidence.len(),
                Verdict::NotApplicable => 1,
                Verdict::Pass if verbose => row.evidence.len(),
                Verdict::Pass => 0,
            };
            for line in row.evidence.iter().take(show) {
                let _ = writeln!(out, "            {line}");
            }
        }
        let count = |v: Verdict| rows.iter().filter(|r| r.verdict == v).count();
        let _ = writeln!(
            out,
            "{} passed, {} failed, {} not applicable",
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::NotApplicable)
        );
        let _ = writeln!(out, "rows explained: {ROWS_DOC} (in the Anima repository)");
        out
    }

    /// The JSON report.
    pub fn json(&self, module: &str) -> serde_json::Value {
        serde_json::json!({
            "module": module,
            "failed": self.failed(),
            "rows": self.rows(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// The repository's row reference.
    fn rows_doc() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(ROWS_DOC);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// The ids of the doc's table rows (`| T1 | … |`).
    fn documented_ids(doc: &str) -> BTreeSet<String> {
        doc.lines()
            .filter_map(|line| line.strip_prefix("| "))
            .filter_map(|rest| rest.split(" |").next())
            .filter(|id| is_row_id(id))
            .map(str::to_owned)
            .collect()
    }

    /// A row id's shape: a capital letter and a number (`T1`, `S10`).
    fn is_row_id(text: &str) -> bool {
        let mut chars = text.chars();
        chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && !chars.as_str().is_empty()
            && chars.all(|c| c.is_ascii_digit())
    }

    /// Every quoted row id (`"A6"`) in the checks' sources.
    fn ids_in_checks() -> BTreeSet<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/checks");
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("src/checks") {
            let path = entry.expect("dir entry").path();
            let text = std::fs::read_to_string(&path).expect("a check's source");
            for quoted in text.split('"').skip(1).step_by(2) {
                if is_row_id(quoted) {
                    ids.insert(quoted.to_owned());
                }
            }
        }
        ids
    }

    /// The row ids the report shows.
    fn reported() -> BTreeSet<String> {
        ROWS.iter().map(|(id, _)| (*id).to_owned()).collect()
    }

    /// Fails, saying `what` and naming them, when there are `ids`.
    fn assert_none(ids: Vec<&String>, what: &str) {
        assert!(ids.is_empty(), "{what}: {ids:?}");
    }

    #[test]
    fn every_row_the_tool_reports_is_documented_in_the_repository() {
        let (documented, reported) = (documented_ids(&rows_doc()), reported());
        let missing = reported.difference(&documented).collect();
        assert_none(missing, &format!("rows missing from {ROWS_DOC}"));
        let stale = documented.difference(&reported).collect();
        let what = format!("{ROWS_DOC} documents rows the tool never reports");
        assert_none(stale, &what);
    }

    #[test]
    fn every_row_a_check_decides_is_a_reported_row() {
        let checked = ids_in_checks();
        assert!(
            checked.len() > 30,
            "row ids found in src/checks: {checked:?}"
        );
        let reported = reported();
        let unknown = checked.difference(&reported).collect();
        assert_none(unknown, "checks decide rows the report never shows");
    }

    #[test]
    fn the_table_points_to_the_row_reference_and_the_json_does_not_change() {
        let mut report = Report::default();
        report.pass("T1", "mutual TLS");
        report.fail("T2", "plaintext answered");
        let table = report.table("urn:anima:module:x", false);
        assert!(
            table.lines().last().is_some_and(|l| l.contains(ROWS_DOC)),
            "{table}"
        );
        let json = report.json("urn:anima:module:x");
        let mut keys: Vec<&String> = json.as_object().expect("an object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["failed", "module", "rows"]);
        assert_eq!(json["rows"].as_array().map(Vec::len), Some(ROWS.len()));
    }
}
