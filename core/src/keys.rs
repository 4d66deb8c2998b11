//! Sluice API keys: format, checksum, hashing and comparison.
//!
//! A key is `sk-sluice-` + 32 base62 characters (≈190 bits from a CSPRNG) + 6 base62 characters
//! of CRC32 over the random part (GitHub's token scheme). The prefix lets secret scanners find
//! leaked keys; the checksum lets the filter reject a mistyped or forged key before any lookup.
//! Keys are stored and compared only as SHA-256 digests: they are high-entropy, so a slow KDF
//! would add latency and no protection.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "sk-sluice-";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
pub const KEY_LEN: usize = KEY_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented credential is not a well-formed Sluice key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormatError {
    WrongPrefix,
    WrongLength,
    BadCharacter,
    BadChecksum,
}

/// Builds a key from CSPRNG output. Bytes are mapped to base62 by rejection sampling (bytes
/// ≥ 248 are skipped) so every character is uniform; returns None if `random` runs out first,
/// which 64 bytes make practically impossible (needs > 32 rejections).
pub fn key_from_random(random: &[u8]) -> Option<String> {
    let mut body = String::with_capacity(KEY_LEN);
    body.push_str(KEY_PREFIX);
    let chars = random.iter().filter(|b| **b < 248).map(|b| char::from(BASE62[usize::from(*b % 62)])).take(RANDOM_LEN);
    body.extend(chars);
    if body.len() != KEY_PREFIX.len() + RANDOM_LEN {
        return None;
    }
    let checksum = checksum_chars(body.as_bytes().get(KEY_PREFIX.len()..)?);
    body.extend(checksum.iter().map(|c| char::from(*c)));
    Some(body)
}

fn checksum_chars(random_part: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut crc = u64::from(crc32fast::hash(random_part));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

/// Checks format and checksum of a presented key (raw header bytes, possibly hostile).
pub fn check_format(key: &[u8]) -> Result<(), KeyFormatError> {
    let rest = key.strip_prefix(KEY_PREFIX.as_bytes()).ok_or(KeyFormatError::WrongPrefix)?;
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN {
        return Err(KeyFormatError::WrongLength);
    }
    if !rest.iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::BadCharacter);
    }
    let (random, checksum) = rest.split_at(RANDOM_LEN);
    if checksum_chars(random) != checksum {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(())
}

/// The shortest LiteLLM key accepted: LiteLLM makes `sk-` and 22 URL-safe characters.
pub const MIN_LITELLM_KEY_LEN: usize = 20;

/// Whether `token` has the shape of a LiteLLM virtual key (`sk-` and URL-safe characters, not
/// Sluice's prefix): a key a team brings from LiteLLM, which stores SHA-256 of its keys, so the
/// same digest finds it here (configured as `key_hash`, or looked up). Its shape has no
/// checksum, so an unknown one costs a lookup (within the lookup budget) or a map probe.
pub fn is_litellm_shaped(token: &[u8]) -> bool {
    token.len() >= MIN_LITELLM_KEY_LEN
        && token.starts_with(b"sk-")
        && !token.starts_with(KEY_PREFIX.as_bytes())
        && token.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The shortest master key accepted: it opens the admin API, so it must not be guessable
/// (LiteLLM's docs' `sk-1234` is an example, not a key). Sluice's own keys have 48 characters.
pub const MIN_MASTER_KEY_LEN: usize = 32;

/// Why a master key is too weak to start a gateway with, if it is: shorter than
/// [`MIN_MASTER_KEY_LEN`], or with fewer than 8 distinct characters (`sk-aaaa…`). Never echoes it.
pub fn check_master_key(key: &str) -> Result<(), String> {
    let distinct = key.bytes().collect::<std::collections::BTreeSet<u8>>().len();
    if key.len() < MIN_MASTER_KEY_LEN {
        return Err(format!(
            "the master key has {} characters; at least {MIN_MASTER_KEY_LEN} are required (e.g. `sluice key new` or `openssl rand -hex 24`)",
            key.len()
        ));
    }
    if distinct < 8 {
        return Err("the master key repeats too few characters to be secret; use a random one".into());
    }
    Ok(())
}

/// SHA-256 digest of a key: the only form in which keys are stored, configured or logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let hi = hex_val(*pair.first()?)?;
            let lo = hex_val(*pair.get(1)?)?;
            *slot = (hi << 4) | lo;
        }
        Some(Self(out))
    }

    /// Short, non-secret identifier for logs and usage records (first 12 hex digits of the hash).
    pub fn short_id(&self) -> String {
        let mut hex = self.to_hex();
        hex.truncate(12);
        hex
    }

    /// Compares two digests in constant time (no early exit on the first differing byte).
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({})", self.short_id())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Serialize for KeyHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("sha256:{}", self.to_hex()))
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::from_hex(&s).ok_or_else(|| {
            serde::de::Error::custom(
                "invalid key hash: expected sha256:<64 hex digits> (run `sluice key new` to make one; never put a plaintext key in the config)",
            )
        })
    }
}

/// Extracts the credential from the three header spellings clients use, first match wins:
/// `Authorization: Bearer <key>` (OpenAI), `x-api-key` (Anthropic), `api-key` (Azure).
pub fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = authorization.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {

    #[test]
    fn weak_master_keys_are_named_without_echoing_them() {
        for weak in ["sk-1234", "", "sk-master-1234", &"sk-".repeat(20)] {
            let e = check_master_key(weak).unwrap_err();
            assert!(weak.is_empty() || !e.contains(weak), "{e}");
        }
        check_master_key("sk-master-0123456789abcdef0123456789ab").unwrap();
    }
    use super::*;

    #[test]
    fn litellm_keys_are_told_apart_from_sluices_and_from_noise() {
        assert!(is_litellm_shaped(b"sk-q3Vb8fZc1Ykd0J2mWfN4aA"), "LiteLLM's own shape: sk- and 22 characters");
        assert!(is_litellm_shaped(b"sk-team-search-prod-key-01"), "a custom key");
        let sluice = key_from_random(&[7u8; 64]).unwrap();
        assert!(!is_litellm_shaped(sluice.as_bytes()), "Sluice's own keys are checked by their checksum");
        for not in [
            &b"sk-short"[..],
            b"Bearer-sk-aaaaaaaaaaaaaaaaaaaa",
            b"sk-aaaaaaaaaa aaaaaaaaaaa",
            b"sk-aaaaaaaaaaaaaaaaaaa\xff",
        ] {
            assert!(!is_litellm_shaped(not), "{}", String::from_utf8_lossy(not));
        }
    }

    fn key(seed: u8) -> String {
        let random: Vec<u8> = (0..64u16).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)).collect();
        key_from_random(&random).unwrap()
    }

    #[test]
    fn generated_keys_have_the_format_and_pass_the_check() {
        let k = key(1);
        assert!(k.starts_with(KEY_PREFIX));
        assert_eq!(k.len(), KEY_LEN);
        assert_eq!(check_format(k.as_bytes()), Ok(()));
        assert_ne!(key(1), key(2));
    }

    #[test]
    fn any_single_character_change_fails_the_check() {
        let k = key(9);
        for i in KEY_PREFIX.len()..k.len() {
            let mut bytes = k.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            assert!(check_format(&bytes).is_err(), "mutation at {i} passed");
        }
    }

    #[test]
    fn hostile_inputs_are_rejected_without_panicking() {
        let long = vec![b'a'; 65_536];
        let cases: [&[u8]; 7] = [
            b"",
            b"sk-1234",
            b"sk-sluice-",
            &long,
            b"sk-sluice-\0\0\0",
            b"sk-sluice-' OR 1=1 --aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            &[0xff, 0xfe, 0x00],
        ];
        for c in cases {
            assert!(check_format(c).is_err());
        }
        let mut utf8 = key(3).into_bytes();
        utf8[12] = 0xc3;
        assert_eq!(check_format(&utf8), Err(KeyFormatError::BadCharacter));
    }

    #[test]
    fn rejection_sampling_runs_out_cleanly() {
        assert_eq!(key_from_random(&[255u8; 64]), None);
        assert_eq!(key_from_random(&[1u8; 10]), None);
    }

    #[test]
    fn hashes_round_trip_through_hex_and_serde() {
        let h = KeyHash::of(b"sk-sluice-abc");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.starts_with("\"sha256:"));
        assert_eq!(serde_json::from_str::<KeyHash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<KeyHash>("\"sk-sluice-plaintext\"").is_err());
        // The well-known SHA-256 of the empty string.
        assert_eq!(KeyHash::of(b"").to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn constant_time_eq() {
        let a = KeyHash::of(b"a");
        let mut b = a;
        assert!(a.ct_eq(&b));
        b.0[31] ^= 1;
        assert!(!a.ct_eq(&b));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bear"), None);
    }
}
