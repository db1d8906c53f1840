//! Scopes: the exact fully-qualified gRPC methods a lease permits.

use std::collections::BTreeSet;
use std::fmt;

use super::error::LeaseError;

/// The most methods one scope may name.
pub const MAX_METHODS: usize = 1024;
/// The longest method path accepted.
pub const MAX_METHOD_LEN: usize = 256;

/// A set of gRPC method paths, each `/package.Service/Method`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope(BTreeSet<String>);

impl Scope {
    /// Builds a scope, checking every method path.
    pub fn new<I, S>(methods: I) -> Result<Self, LeaseError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = BTreeSet::new();
        for method in methods {
            let method = method.into();
            check_method(&method)?;
            set.insert(method);
            if set.len() > MAX_METHODS {
                return Err(LeaseError::BadToken(format!(
                    "scope names more than {MAX_METHODS} methods"
                )));
            }
        }
        Ok(Scope(set))
    }

    /// Whether `method` is permitted.
    pub fn contains(&self, method: &str) -> bool {
        self.0.contains(method)
    }

    /// Whether every method here is also in `other`.
    pub fn is_subset(&self, other: &Scope) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The methods here that are not in `other`.
    pub fn difference<'a>(&'a self, other: &'a Scope) -> impl Iterator<Item = &'a str> {
        self.0.difference(&other.0).map(String::as_str)
    }

    /// The methods, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many methods.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the scope permits nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.iter().cloned().collect::<Vec<_>>().join(","))
    }
}

/// Checks that `method` is `/package.Service/Method`.
pub fn check_method(method: &str) -> Result<(), LeaseError> {
    let bad = || {
        LeaseError::BadToken(format!(
            "{:.80?} is not a /package.Service/Method path",
            method
        ))
    };
    if method.len() > MAX_METHOD_LEN {
        return Err(bad());
    }
    let rest = method.strip_prefix('/').ok_or_else(bad)?;
    let (service, name) = rest.split_once('/').ok_or_else(bad)?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    };
    if ident(service) && ident(name) && !name.contains('.') {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_paths() {
        for ok in ["/a.B/C", "/pkg.v1.Service/Method_2", "/S/M"] {
            assert!(check_method(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/", "a.B/C", "/a.B/", "//C", "/a.B/C/D", "/a..B/C", "/a.B/C.D", "/a-b/C",
        ] {
            assert!(check_method(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subset_and_difference() {
        let all = Scope::new(["/a.S/X", "/a.S/Y"]).unwrap();
        let one = Scope::new(["/a.S/X"]).unwrap();
        assert!(one.is_subset(&all));
        assert!(!all.is_subset(&one));
        assert_eq!(all.difference(&one).collect::<Vec<_>>(), ["/a.S/Y"]);
    }
}
