//! The routing table: which modules declare each method, learned from
//! contracts (at start) and from leases (their scope). A method declared by
//! several modules (the conformance probe, say) is not routed: the gateway
//! cannot tell which one is meant.

use std::collections::HashMap;
use std::sync::Mutex;

use anima_protocol::Urn;

/// Which modules declare each method.
#[derive(Debug, Default)]
pub(crate) struct Routes(Mutex<HashMap<String, Vec<Urn>>>);

impl Routes {
    /// Records that `module` declares each of `methods`.
    pub(crate) fn learn<'a>(&self, module: &Urn, methods: impl IntoIterator<Item = &'a str>) {
        let mut routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for method in methods {
            let declared = routes.entry(method.to_owned()).or_default();
            if !declared.contains(module) {
                declared.push(module.clone());
            }
        }
    }

    /// Every method `module` declares, sorted.
    pub(crate) fn declared_by(&self, module: &Urn) -> Vec<String> {
        let routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut methods: Vec<String> = routes
            .iter()
            .filter(|(_, modules)| modules.contains(module))
            .map(|(method, _)| method.clone())
            .collect();
        methods.sort();
        methods
    }

    /// Every module declaring `method`.
    pub(crate) fn declaring(&self, method: &str) -> Vec<Urn> {
        let routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        routes.get(method).cloned().unwrap_or_default()
    }

    /// The one module declaring `method`: none when no module or several do.
    pub(crate) fn route(&self, method: &str) -> Option<Urn> {
        let routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match routes.get(method).map(Vec::as_slice) {
            Some([only]) => Some(only.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o1_a_method_declared_by_several_modules_is_not_routed() {
        let a: Urn = "urn:anima:module:a".parse().unwrap();
        let b: Urn = "urn:anima:module:b".parse().unwrap();
        let routes = Routes::default();
        routes.learn(&a, ["/x.v1.X/Only", "/anima.v1.Probe/Read"]);
        routes.learn(&b, ["/anima.v1.Probe/Read"]);
        routes.learn(&b, ["/anima.v1.Probe/Read"]);
        assert_eq!(routes.route("/x.v1.X/Only"), Some(a));
        assert_eq!(routes.route("/anima.v1.Probe/Read"), None);
        assert_eq!(routes.route("/nobody.v1.X/Y"), None);
    }

    #[test]
    fn learning_a_method_again_from_the_same_module_keeps_it_routed() {
        let a: Urn = "urn:anima:module:a".parse().unwrap();
        let routes = Routes::default();
        routes.learn(&a, ["/x.v1.X/Do"]);
        routes.learn(&a, ["/x.v1.X/Do"]);
        assert_eq!(routes.route("/x.v1.X/Do"), Some(a));
    }
}
