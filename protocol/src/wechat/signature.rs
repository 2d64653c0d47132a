//! WeChat's query-string signatures: the lowercase hex SHA-1 of the sorted,
//! concatenated parts. `signature` signs token/timestamp/nonce;
//! `msg_signature` (safe mode) adds the `Encrypt` field.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// SHA-1 over the parts sorted bytewise and concatenated, as lowercase hex.
pub fn sorted_sha1_hex(parts: &mut [&str]) -> String {
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for p in parts.iter() {
        hasher.update(p.as_bytes());
    }
    hex(&hasher.finalize())
}

/// The `signature` WeChat puts on every callback (and on the URL check).
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sorted_sha1_hex(&mut [token, timestamp, nonce])
}

/// The `msg_signature` of a safe-mode message or reply.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sorted_sha1_hex(&mut [token, timestamp, nonce, encrypt])
}

/// Compares a received signature with the expected one in constant time
/// (ASCII case ignored).
pub fn matches(expected: &str, received: &str) -> bool {
    if expected.len() != received.len() {
        return false;
    }
    let received = received.to_ascii_lowercase();
    expected.as_bytes().ct_eq(received.as_bytes()).into()
}

/// Checks `signature` for token/timestamp/nonce.
pub fn verify(token: &str, timestamp: &str, nonce: &str, received: &str) -> bool {
    matches(&signature(token, timestamp, nonce), received)
}

/// Checks `msg_signature` for token/timestamp/nonce/Encrypt.
pub fn verify_msg(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    received: &str,
) -> bool {
    matches(&msg_signature(token, timestamp, nonce, encrypt), received)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_vectors() {
        assert_eq!(
            signature("AAAAA", "1714037059", "486452656"),
            "899cf89e464efb63f54ddac96b0a0a235f53aa78"
        );
        assert_eq!(
            signature("test", "1410685589", "test"),
            "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
        );
        assert!(verify(
            "test",
            "1410685589",
            "test",
            "F21891DE399B4E33A1A93C9A7B8A8FFFB5A443FF"
        ));
        assert!(!verify(
            "test",
            "1410685589",
            "test",
            "f21891de399b4e33a1a93c9a7b8a8fffb5a443fe"
        ));
        assert!(!verify("test", "1410685589", "test", ""));
    }

    #[test]
    fn msg_signature_vector() {
        let encrypt = include_str!("testdata/v2_encrypt.txt").trim();
        assert_eq!(
            msg_signature("pamtest", "1458300676", "260774613", encrypt),
            "4f3ad57b6989f09f4eb392acce4f9e93942ed890"
        );
    }
}
