//! What WeChat's servers send and expect.
//!
//! - [`signature`]: `sha1(sort(token, timestamp, nonce[, encrypt]))`;
//! - [`crypto`]: safe-mode AES-256-CBC with the EncodingAESKey;
//! - [`xml`]: callback bodies parsed into typed messages, with hard limits;
//! - [`reply`]: passive replies and the encrypted reply envelope.

pub mod crypto;
pub mod reply;
pub mod signature;
pub mod xml;

/// The longest callback body accepted (WeChat's are a few KiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Seconds since the Unix epoch: WeChat's `CreateTime` and `timestamp`.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Turns an `EventKey` into the QR scene id it carries: `qrscene_42` (a
/// `subscribe` through a parametrized code) and `42` (a `SCAN` by a follower)
/// both give 42. Empty, zero, non-numeric (a `QR_STR_SCENE` string) or out
/// of u32 range is `None`: not a login.
pub fn scene_from_event_key(event_key: &str) -> Option<u32> {
    let digits = event_key.strip_prefix("qrscene_").unwrap_or(event_key);
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u32>().ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::scene_from_event_key;

    #[test]
    fn event_keys() {
        assert_eq!(scene_from_event_key("qrscene_123123"), Some(123123));
        assert_eq!(scene_from_event_key("123123"), Some(123123));
        assert_eq!(scene_from_event_key("4294967295"), Some(u32::MAX));
        assert_eq!(scene_from_event_key("4294967296"), None);
        assert_eq!(scene_from_event_key(""), None);
        assert_eq!(scene_from_event_key("qrscene_"), None);
        assert_eq!(scene_from_event_key("0"), None);
        assert_eq!(scene_from_event_key("qrscene_abc"), None);
        assert_eq!(scene_from_event_key("+12"), None);
        assert_eq!(scene_from_event_key("12 "), None);
        assert_eq!(scene_from_event_key("MENU_KEY"), None);
    }
}
