//! Interface rows: I1 (a strict gRPC service: `ModuleAdmin/Status` names
//! the module), I2 (the methods served are exactly the declared ones), I4
//! (no reflection, undeclared methods refused), O1 (the health service) and
//! P1 (the interfaces the contract provides and requires, as `Status`
//! reports them).
//! `Status` also decides the declared type (E7 for Type I by default, R1,
//! S1) and, when it reports another maximum lease than the contract's, A9.

use anima_protocol::Connection;
use anima_protocol::contract::ModuleType;
use anima_protocol::lease::Reason;

use super::{REFLECTION, Run, UNDECLARED};
use crate::report::Report;
use crate::session::{self, call_empty, describe, has_reason};

impl Run<'_> {
    /// Status: type and methods as declared (I1, I2, R1, S1, E7).
    pub(crate) async fn status_checks(&self, r: &mut Report, conn: &Connection) {
        match session::status(conn).await {
            Err(status) => r.fail(
                "I1",
                format!("ModuleAdmin/Status failed: {}", describe(&status)),
            ),
            Ok(st) => {
                let served: Vec<&str> = st.methods.iter().map(String::as_str).collect();
                let mut declared: Vec<&str> = self.declared.iter().collect();
                let mut listed = served.clone();
                listed.sort_unstable();
                declared.sort_unstable();
                r.check(
                    "I2",
                    listed == declared,
                    format!("Status lists {listed:?}; the contract declares {declared:?}"),
                );
                r.check(
                    "I1",
                    st.urn == self.module.as_str(),
                    format!("Status names {}", st.urn),
                );
                let expected = match self.plan.contract.module_type {
                    ModuleType::Ephemeral => "ephemeral",
                    ModuleType::ResidentPrivate(_) => "resident-private",
                    ModuleType::ResidentShared => "resident-shared",
                };
                let row = match self.plan.contract.module_type {
                    ModuleType::Ephemeral if !self.plan.type_declared => "E7",
                    ModuleType::Ephemeral => "I1",
                    ModuleType::ResidentPrivate(_) => "R1",
                    ModuleType::ResidentShared => "S1",
                };
                r.check(
                    row,
                    st.module_type == expected,
                    format!(
                        "the module reports type {:?}; its contract is {expected}",
                        st.module_type
                    ),
                );
                self.interfaces_check(r, &st.provides, &st.requires);
                if st.max_lease_ms != self.plan.contract.max_lease.as_millis() as u64 {
                    r.fail(
                        "A9",
                        format!(
                            "the module reports max_lease {} ms; the contract says {} ms",
                            st.max_lease_ms,
                            self.plan.contract.max_lease.as_millis()
                        ),
                    );
                }
            }
        }
    }
}

impl Run<'_> {
    /// P1: the interfaces `Status` reports are the contract's (the contract
    /// itself was parsed, so its declarations are well-formed); `n/a` when
    /// the contract declares none and the module reports none.
    fn interfaces_check(&self, r: &mut Report, provides: &[String], requires: &[String]) {
        let contract = &self.plan.contract;
        let sorted = |items: Vec<String>| {
            let mut items = items;
            items.sort_unstable();
            items
        };
        let declared = (
            sorted(contract.provides.iter().map(ToString::to_string).collect()),
            sorted(contract.requires.iter().map(ToString::to_string).collect()),
        );
        let reported = (sorted(provides.to_vec()), sorted(requires.to_vec()));
        if declared.0.is_empty() && declared.1.is_empty() && reported == declared {
            r.not_applicable("P1", "the contract provides and requires no interface");
            return;
        }
        r.check(
            "P1",
            reported == declared,
            format!(
                "Status reports provides {:?} and requires {:?}; the contract declares {:?} and {:?}",
                reported.0, reported.1, declared.0, declared.1
            ),
        );
    }
}

/// I4: no reflection, undeclared methods refused (and I2: with the
/// `UNKNOWN_METHOD` reason).
pub(crate) async fn undeclared_checks(r: &mut Report, conn: &Connection) {
    for path in REFLECTION.iter().chain(std::iter::once(&UNDECLARED)) {
        match call_empty(conn, path, &[]).await {
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                r.pass("I4", format!("{path}: UNIMPLEMENTED"));
            }
            Err(s) => r.fail(
                "I4",
                format!("{path}: {} (want UNIMPLEMENTED)", describe(&s)),
            ),
            Ok(()) => r.fail("I4", format!("{path}: answered")),
        }
    }
    match call_empty(conn, UNDECLARED, &[]).await {
        Err(s) if has_reason(&s, Reason::UnknownMethod) => {
            r.pass("I2", "an undeclared method is refused UNKNOWN_METHOD");
        }
        Err(s) => r.fail(
            "I2",
            format!(
                "an undeclared method: {} (want the UNKNOWN_METHOD reason, PROTOCOL.md §4)",
                describe(&s)
            ),
        ),
        Ok(()) => r.fail("I2", "an undeclared method was answered"),
    }
}

/// O1: the health service answers without a lease.
pub(crate) async fn health_check(r: &mut Report, conn: &Connection) {
    match call_empty(conn, "/grpc.health.v1.Health/Check", &[]).await {
        Ok(()) => r.pass("O1", "grpc.health.v1 answers without a lease"),
        Err(s) => r.not_applicable("O1", format!("no grpc.health.v1 ({})", describe(&s))),
    }
}
