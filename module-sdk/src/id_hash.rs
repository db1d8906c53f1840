//! A hasher for the SDK's per-call maps, whose keys are not chosen by a
//! peer: connection ids (a process-wide counter) and `TypeId`s (fixed at
//! compile time). Neither can be steered into collisions from the network,
//! so the keyed SipHash that std's maps use by default buys nothing there
//! and costs a few hundred instructions a lookup, on every call.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by connection id or `TypeId`.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Multiplies the key by an odd constant (Fibonacci hashing), which spreads
/// consecutive ids over both the low bits that pick a bucket and the high
/// bits the table keeps as tags.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    use super::*;

    fn hash<T: Hash>(value: T) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(value)
    }

    #[test]
    fn consecutive_ids_spread_over_buckets_and_tags() {
        let hashes: Vec<u64> = (1..=4096u64).map(hash).collect();
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(buckets.len(), 4096, "ids 1..=4096 fill 4096 buckets");
        assert_eq!(tags.len(), 128, "every 7-bit tag is used");
    }

    #[test]
    fn type_ids_and_maps_work() {
        assert_ne!(hash(TypeId::of::<u64>()), hash(TypeId::of::<String>()));
        let mut map: IdMap<TypeId, &str> = IdMap::default();
        map.insert(TypeId::of::<u64>(), "u64");
        map.insert(TypeId::of::<String>(), "string");
        assert_eq!(map.get(&TypeId::of::<u64>()), Some(&"u64"));
        assert_eq!(map.get(&TypeId::of::<String>()), Some(&"string"));
        assert_eq!(map.get(&TypeId::of::<u8>()), None);
    }
}
