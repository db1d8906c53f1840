//! Type III tenants: S3 (several Cores hold leases at once), S4 (state
//! scoped to the lease, deleted when it ends), S5 (one lease's end leaves
//! the others unaffected), S8 (behaviour independent of other tenants) and
//! S9 (no instance data beyond the lease).

use std::net::SocketAddr;

use super::Run;
use crate::report::Report;
use crate::session::{Actor, Session};

impl Run<'_> {
    /// Type III: a second Core leases concurrently; tenants are isolated.
    pub(crate) async fn tenants(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        a: &mut Session,
        core_b: &Actor,
    ) {
        let mut b = match self
            .open(core_b, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(b) => {
                r.pass(
                    "S3",
                    format!(
                        "{} and {} hold leases at once",
                        self.ids().core_a.identity.urn(),
                        core_b.identity.urn()
                    ),
                );
                b
            }
            Err(e) => {
                r.fail("S3", format!("a second Core could not lease: {e}"));
                return;
            }
        };
        if !self.probe {
            b.revoke("conformance").await;
            return;
        }
        self.isolation(r, a, &mut b).await;
        self.new_tenant_lease(r, addr, core_b).await;
    }

    /// With the probe: A's and B's touches stay apart (S4, S8), and B's
    /// lease ends leaving A's count as it was (S5).
    async fn isolation(&mut self, r: &mut Report, a: &mut Session, b: &mut Session) {
        for _ in 0..3 {
            self.touch(r, a, "A touches").await;
        }
        let b_sees = self
            .check_touches(
                r,
                b,
                "B reads",
                "S4",
                0,
                "after A's 3 touches, B's lease reads",
            )
            .await;
        r.check(
            "S8",
            b_sees == Some(0),
            format!("B's answers do not depend on A's activity ({b_sees:?})"),
        );
        self.touch(r, b, "B touches").await;
        self.check_touches(r, a, "A reads", "S4", 3, "after B's touch, A's lease reads")
            .await;
        // B's lease ends; B leases again and finds nothing of the old one.
        b.revoke_and_wait("conformance: tenant ends").await;
        match self.read(r, a, "A after B's lease ended").await {
            Some(n) => r.check(
                "S5",
                n == 3,
                format!("B's lease ended; A still reads {n} (want 3)"),
            ),
            None => r.fail("S5", "B's lease ended and A's calls failed"),
        }
    }

    /// B leases again and finds nothing of its old lease (S9, S4).
    async fn new_tenant_lease(&mut self, r: &mut Report, addr: SocketAddr, core_b: &Actor) {
        match self
            .open(core_b, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(mut b2) => {
                let seen = self.read(r, &mut b2, "B's new lease").await;
                r.check("S9", seen == Some(0), format!("B's new lease reads {seen:?} touches (want 0: the old lease's state is deleted)"));
                r.check(
                    "S4",
                    seen == Some(0),
                    format!("state deleted with its lease ({seen:?})"),
                );
                b2.revoke_and_wait("conformance").await;
            }
            Err(e) => r.fail("S3", format!("the second Core could not lease again: {e}")),
        }
    }
}
