//! Who may call what through the gateway: `[[policy]]` entries, default
//! deny.

use anima_protocol::Urn;

use crate::config::{Policy, PolicyTarget};

/// The configured policies.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policies(Vec<Policy>);

impl Policies {
    pub(crate) fn new(policies: Vec<Policy>) -> Self {
        Policies(policies)
    }

    /// Whether `user` may call `method` of `module`: some entry for `user`
    /// allows the module (every declared method) or that method.
    pub(crate) fn allows(&self, user: &Urn, module: &Urn, method: &str) -> bool {
        self.0.iter().filter(|p| &p.user == user).any(|p| {
            p.allow.iter().any(|t| match t {
                PolicyTarget::Module(m) => m == module,
                PolicyTarget::Method(m) => m == method,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use anima_protocol::UrnKind;

    use super::*;

    fn user(name: &str) -> Urn {
        Urn::new(UrnKind::User, name).unwrap()
    }

    fn module(name: &str) -> Urn {
        Urn::new(UrnKind::Module, name).unwrap()
    }

    #[test]
    fn default_deny_and_what_each_target_allows() {
        let (alice, bob) = (user("alice"), user("bob"));
        let (m, n) = (module("m"), module("n"));
        let policies = Policies::new(vec![
            Policy {
                user: alice.clone(),
                allow: vec![PolicyTarget::Module(m.clone())],
            },
            Policy {
                user: bob.clone(),
                allow: vec![PolicyTarget::Method("/n.v1.N/Read".into())],
            },
        ]);
        assert!(policies.allows(&alice, &m, "/m.v1.M/Anything"));
        assert!(!policies.allows(&alice, &n, "/n.v1.N/Read"));
        assert!(policies.allows(&bob, &n, "/n.v1.N/Read"));
        assert!(!policies.allows(&bob, &n, "/n.v1.N/Write"));
        let nobody = user("nobody");
        assert!(!policies.allows(&nobody, &m, "/m.v1.M/Anything"));
        assert!(!Policies::default().allows(&alice, &m, "/m.v1.M/Anything"));
    }
}
