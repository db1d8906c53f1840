//! Checking the served methods against the contract (ADR-0003 §4, I2).
//!
//! The SDK reads the module's protobuf descriptor set (produced at build time)
//! to list the methods of every service the module serves, and refuses to
//! start when they differ from the contract's declared methods in any way.

use anima_protocol::lease::Scope;
use prost::Message;
use prost_types::FileDescriptorSet;

use crate::error::SdkError;

/// The methods (`/package.Service/Method`) of `services` in `descriptor_set`.
pub(crate) fn served_methods(descriptor_set: &[u8], services: &[&str]) -> Result<Scope, SdkError> {
    let set = FileDescriptorSet::decode(descriptor_set)
        .map_err(|e| SdkError::Contract(format!("the file descriptor set does not decode: {e}")))?;
    let mut methods = Vec::new();
    for wanted in services {
        let mut found = false;
        for file in &set.file {
            let package = file.package.as_deref().unwrap_or("");
            for service in &file.service {
                let name = service.name.as_deref().unwrap_or("");
                let full = if package.is_empty() {
                    name.to_owned()
                } else {
                    format!("{package}.{name}")
                };
                if full == *wanted {
                    found = true;
                    for method in &service.method {
                        methods.push(format!("/{full}/{}", method.name.as_deref().unwrap_or("")));
                    }
                }
            }
        }
        if !found {
            return Err(SdkError::MethodMismatch(format!(
                "service {wanted} is served but not described in the file descriptor set"
            )));
        }
    }
    Scope::new(methods).map_err(|e| SdkError::Contract(e.to_string()))
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
}
