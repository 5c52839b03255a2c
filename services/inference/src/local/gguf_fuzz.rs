//! GGUF validation is what stands between a bad file and llama.cpp aborting
//! the process: arbitrary bytes, and a valid header with arbitrary bytes
//! after it, are refused with an error, never a panic.

use proptest::prelude::*;

use super::inspect;

fn check(bytes: &[u8]) {
    let dir = std::env::temp_dir().join(format!("rungate-gguf-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(format!("{:016x}.gguf", rand_name(bytes)));
    std::fs::write(&path, bytes).expect("write");
    let _ = inspect(&path);
    let _ = std::fs::remove_file(&path);
}

fn rand_name(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    std::thread::current().id().hash(&mut hasher);
    hasher.finish()
}

/// A GGUF v3 header (magic, version, counts), then anything.
fn header_then(rest: &[u8], tensors: u64, kvs: u64) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&tensors.to_le_bytes());
    bytes.extend_from_slice(&kvs.to_le_bytes());
    bytes.extend_from_slice(rest);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn a_header_followed_by_anything_is_refused_cleanly(
        rest in prop::collection::vec(any::<u8>(), 0..1024),
        tensors in 0u64..8,
        kvs in 0u64..8,
    ) {
        check(&header_then(&rest, tensors, kvs));
    }
}

#[test]
fn the_regression_corpus_is_refused_cleanly() {
    // Huge counts, a string longer than the file, a nested array bomb.
    check(&header_then(&[], u64::MAX, u64::MAX));
    let mut long_key = 8u64.to_le_bytes().to_vec();
    long_key[7] = 0x7f;
    check(&header_then(&long_key, 0, 1));
    let mut nested = Vec::new();
    nested.extend_from_slice(&1u64.to_le_bytes());
    nested.push(b'k');
    for _ in 0..64 {
        nested.extend_from_slice(&9u32.to_le_bytes()); // array
        nested.extend_from_slice(&9u32.to_le_bytes()); // of arrays
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    check(&header_then(&nested, 0, 1));
}
