//! API keys. The config holds only SHA-256 digests (`sha256:<64 hex digits>`); a presented
//! key is hashed and compared with every digest in constant time, so neither the answer's
//! timing nor the config reveals a key. Keys are never logged.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

pub type KeyDigest = [u8; 32];

const PREFIX: &str = "sha256:";

/// SHA-256 of a key.
pub fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// `sha256:<hex>` of a key, as the config wants it (`switchyard key hash`).
pub fn format(d: &KeyDigest) -> String {
    let mut s = String::with_capacity(PREFIX.len() + 64);
    s.push_str(PREFIX);
    for b in d {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse(text: &str) -> Result<KeyDigest, String> {
    let Some(hex) = text.strip_prefix(PREFIX) else {
        return Err(
            "must be \"sha256:<64 hex digits>\" (a digest, never the key itself; see `switchyard key hash`)"
                .to_owned(),
        );
    };
    if hex.len() != 64 {
        return Err(format!(
            "a SHA-256 digest has 64 hex digits, not {}",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| "not hex".to_owned())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| format!("{s:?} is not hex"))?;
    }
    Ok(out)
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer "))
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Digest → tenant index, searched in constant time.
#[derive(Debug, Default, Clone)]
pub struct KeyTable {
    entries: Vec<(KeyDigest, usize)>,
}

impl KeyTable {
    pub fn insert(&mut self, digest: KeyDigest, tenant: usize) {
        self.entries.push((digest, tenant));
    }

    /// The tenant owning `key`. Every entry is compared, whichever matches.
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let d = digest(key);
        let mut found = None;
        for (candidate, tenant) in &self.entries {
            if bool::from(candidate.ct_eq(&d)) {
                found = Some(*tenant);
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_and_match_sha256_of_the_key() {
        let d = digest(b"sk-test");
        let text = format(&d);
        assert_eq!(
            text,
            "sha256:f3abf2a6cc4f00987743db5f544ba345b4899ae31f326d8ee9c4816de153c9e0"
        );
        assert_eq!(parse(&text).unwrap(), d);
        assert!(parse("sk-test")
            .unwrap_err()
            .contains("never the key itself"));
        assert!(parse("sha256:abc").unwrap_err().contains("64 hex digits"));
        assert!(parse(&format!("sha256:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_trimmed() {
        assert_eq!(bearer(b"Bearer sk-1"), Some(&b"sk-1"[..]));
        assert_eq!(bearer(b"bearer  sk-1 "), Some(&b"sk-1"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn lookup_finds_the_owner_and_nothing_else() {
        let mut t = KeyTable::default();
        t.insert(digest(b"a"), 0);
        t.insert(digest(b"b"), 1);
        assert_eq!(t.find(b"b"), Some(1));
        assert_eq!(t.find(b"a"), Some(0));
        assert_eq!(t.find(b"c"), None);
    }
}
