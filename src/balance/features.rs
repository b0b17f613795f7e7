//! Request features that policies read: prompt-prefix block hashes and the session key.

use std::hash::{Hash, Hasher};

/// Bytes per prefix block: about 64 tokens at 4 bytes per token, the granularity at which
/// engines cache prefixes (vLLM's blocks are 16 tokens; a coarser block keeps the chain short).
pub const PREFIX_BLOCK_BYTES: usize = 256;

/// Longest chain computed: 1 MiB of prompt. Beyond it, a longer shared prefix changes nothing.
const MAX_BLOCKS: usize = 4096;

/// Chained hashes of `prompt` in whole blocks: entry k covers blocks 0..=k, so two prompts
/// share a leading run of entries exactly as long as their shared prefix of whole blocks.
pub fn prefix_hashes(prompt: &[u8]) -> Vec<u64> {
    let mut out = Vec::with_capacity((prompt.len() / PREFIX_BLOCK_BYTES).min(MAX_BLOCKS));
    let mut prev = 0u64;
    for block in prompt.chunks_exact(PREFIX_BLOCK_BYTES).take(MAX_BLOCKS) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        prev.hash(&mut h);
        block.hash(&mut h);
        prev = h.finish();
        out.push(prev);
    }
    out
}

/// A hash of a session key: the same in every process of the same build (fixed keys).
pub fn session_hash(key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_share_leading_hashes() {
        let a = vec![b'a'; PREFIX_BLOCK_BYTES * 3 + 10];
        let mut b = a.clone();
        b[PREFIX_BLOCK_BYTES * 2 + 5] = b'b';
        let (ha, hb) = (prefix_hashes(&a), prefix_hashes(&b));
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        // Equal blocks at different depths hash differently: the chain carries the position.
        assert_ne!(ha[0], ha[1]);
        assert!(prefix_hashes(b"short").is_empty());
    }

    #[test]
    fn session_hashes_are_stable() {
        assert_eq!(session_hash(b"user-1"), session_hash(b"user-1"));
        assert_ne!(session_hash(b"user-1"), session_hash(b"user-2"));
    }
}
