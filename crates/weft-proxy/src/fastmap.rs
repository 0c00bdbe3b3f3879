//! Maps looked up on every request by keys that configuration chose: the cluster a route names,
//! the connection pool of the endpoint a balancer picked.
//!
//! The standard `HashMap` hashes with SipHash-1-3, built to resist collision floods from keys an
//! attacker picks; these maps hold only keys from configuration (a request can at most *look
//! up* a name it chose, which cannot slow the table), and SipHash cost ~200 instructions per
//! lookup on the request path. [`KeyHasher`] is a multiply-and-fold hash over eight bytes at a
//! time: a few instructions per word.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` for keys that come from configuration (see the module docs).
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// Odd 64-bit constant with well-spread bits (2^64 / the golden ratio).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hasher behind [`FastMap`]: not for keys an attacker controls.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl KeyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(K);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and its tag from the top seven: fold the
        // well-mixed high half down so both see every input bit.
        let h = self.0;
        h ^ (h >> 32) ^ (h << 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    use std::net::SocketAddr;

    fn hash<T: std::hash::Hash>(v: &T) -> u64 {
        BuildHasherDefault::<KeyHasher>::default().hash_one(v)
    }

    #[test]
    fn similar_keys_spread_over_buckets_and_tags() {
        // Endpoints differing only in port or last octet, names differing in one character:
        // the shapes configuration produces. Both the low bits (bucket) and the top seven
        // (tag) must tell them apart.
        let addrs: Vec<SocketAddr> = (0..256)
            .map(|i| format!("10.0.0.{i}:8080").parse().unwrap())
            .chain((0..256).map(|p| format!("10.0.0.1:{}", 9000 + p).parse().unwrap()))
            .collect();
        let names: Vec<String> = (0..512)
            .map(|i| format!("outbound|80||svc-{i}.ns"))
            .collect();
        for hashes in [
            addrs.iter().map(hash).collect::<Vec<_>>(),
            names.iter().map(hash).collect::<Vec<_>>(),
        ] {
            let low: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
            let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            assert!(low.len() > 300, "{} distinct buckets of 1024", low.len());
            assert!(tags.len() > 100, "{} distinct tags of 128", tags.len());
        }
    }

    #[test]
    fn lookups_find_what_was_inserted() {
        let mut m: FastMap<String, usize> = FastMap::default();
        for i in 0..1000 {
            m.insert(format!("cluster-{i}"), i);
        }
        assert!((0..1000).all(|i| m[&format!("cluster-{i}")] == i));
        assert!(!m.contains_key("cluster-1000") && !m.contains_key(""));
    }
}
