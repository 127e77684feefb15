//! Which partition queue a key goes to.
//!
//! The key is the `Display` string of the payload's `partition_by` field.
//! Its UTF-8 bytes are hashed with 64-bit FNV-1a (offset basis
//! `0xcbf29ce484222325`, prime `0x100000001b3`), and the partition is the
//! hash modulo the number of partitions. This is fixed forever: producers
//! and workers built with different compilers or qjob versions agree.
//! (`std`'s `DefaultHasher` makes no such promise.)

/// FNV-1a's 64-bit offset basis.
pub(crate) const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a's 64-bit prime.
pub(crate) const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64 bits, of `bytes`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The partition (`0..partitions`) of `key`.
///
/// # Panics
///
/// If `partitions` is 0 (`#[job]` rejects it at compile time).
pub(crate) fn partition_for(key: &str, partitions: u16) -> u16 {
    assert!(partitions > 0, "at least one partition");
    (fnv1a64(key.as_bytes()) % u64::from(partitions)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Pinned: changing these would misroute every deployed producer.
        assert_eq!(
            partition_for("customer-42", 30),
            (fnv1a64(b"customer-42") % 30) as u16
        );
        assert_eq!(
            partition_for("a", 30),
            (0xaf63_dc4c_8601_ec8c_u64 % 30) as u16
        );
        let mut counts = [0u32; 30];
        for n in 0..30_000 {
            counts[usize::from(partition_for(&format!("key-{n}"), 30))] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
    }
}
