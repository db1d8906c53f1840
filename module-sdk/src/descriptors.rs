//! Checking the served methods against the contract (ADR-0003 §4, I2).
//!
//! The SDK reads the module's protobuf descriptor set (produced at build time)
//! to list the methods of every service the module serves, and refuses to
//! start when they differ from the contract's declared methods in any way.

use anima_protocol::lease::Scope;
use prost::Message;
use prost_types::FileDescriptorSet;

use crate::error::SdkError;

/// The methods (`/package.Service/Method`) of `services`, each described in
/// one of `descriptor_sets` (encoded `FileDescriptorSet`s: the module's own,
/// and the protocol's for the services the SDK adds, such as the probe).
/// The first set describing a service wins, so a module whose own set also
/// holds `anima/v1` files does not count their methods twice.
pub(crate) fn served_methods(
    descriptor_sets: &[&[u8]],
    services: &[&str],
) -> Result<Scope, SdkError> {
    let sets = descriptor_sets
        .iter()
        .filter(|bytes| !bytes.is_empty())
        .map(|bytes| {
            FileDescriptorSet::decode(*bytes).map_err(|e| {
                SdkError::Descriptors(format!("the file descriptor set does not decode: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut methods = Vec::new();
    for wanted in services {
        let service = sets
            .iter()
            .flat_map(|set| &set.file)
            .flat_map(|file| {
                let package = file.package.as_deref().unwrap_or("");
                file.service.iter().map(move |service| (package, service))
            })
            .find_map(|(package, service)| {
                let name = service.name.as_deref().unwrap_or("");
                let full = if package.is_empty() {
                    name.to_owned()
                } else {
                    format!("{package}.{name}")
                };
                (full == *wanted).then_some((full, service))
            });
        let Some((full, service)) = service else {
            return Err(SdkError::MethodMismatch(format!(
                "service {wanted} is served but not described in the file descriptor set"
            )));
        };
        for method in &service.method {
            methods.push(format!("/{full}/{}", method.name.as_deref().unwrap_or("")));
        }
    }
    Scope::new(methods).map_err(|e| SdkError::Descriptors(e.to_string()))
}

/// Refuses any difference between what is served and what is declared.
pub(crate) fn check(served: &Scope, declared: &Scope) -> Result<(), SdkError> {
    let extra: Vec<&str> = served.difference(declared).collect();
    let missing: Vec<&str> = declared.difference(served).collect();
    let mut problems = Vec::new();
    if !extra.is_empty() {
        problems.push(format!("served but not declared: {}", extra.join(", ")));
    }
    if !missing.is_empty() {
        problems.push(format!("declared but not served: {}", missing.join(", ")));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SdkError::MethodMismatch(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i2_differences_are_named() {
        let declared = Scope::new(["/a.S/X", "/a.S/Y"]).unwrap();
        let served = Scope::new(["/a.S/X", "/a.S/Z"]).unwrap();
        let err = check(&served, &declared).unwrap_err().to_string();
        assert!(err.contains("served but not declared: /a.S/Z"), "{err}");
        assert!(err.contains("declared but not served: /a.S/Y"), "{err}");
        assert!(check(&declared, &declared).is_ok());
    }

    #[test]
    fn i2_probe_methods_come_from_the_protocol_descriptors() {
        use anima_protocol::pb::FILE_DESCRIPTOR_SET;
        let served = served_methods(&[&[], FILE_DESCRIPTOR_SET], &["anima.v1.Probe"]).unwrap();
        let want = Scope::new([
            "/anima.v1.Probe/Touch",
            "/anima.v1.Probe/Read",
            "/anima.v1.Probe/Watch",
        ])
        .unwrap();
        assert!(check(&served, &want).is_ok(), "{served}");
        // Described twice (the module's own set holds anima/v1 too): once.
        let twice = served_methods(
            &[FILE_DESCRIPTOR_SET, FILE_DESCRIPTOR_SET],
            &["anima.v1.Probe"],
        )
        .unwrap();
        assert!(check(&twice, &want).is_ok(), "{twice}");
        let err = served_methods(&[FILE_DESCRIPTOR_SET], &["x.Nope"]).unwrap_err();
        assert!(err.to_string().contains("x.Nope"), "{err}");
    }
}
