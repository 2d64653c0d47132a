//! Safe-mode message crypto, as WeChat specifies it:
//! key = base64(EncodingAESKey + "="), AES-256-CBC with IV = key[..16],
//! plaintext = 16 random bytes ‖ 4-byte big-endian length ‖ message ‖ appid,
//! PKCS#7 padding to a 32-byte block, base64 on the wire.

use aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

/// WeChat pads to 32 bytes, not to the AES block size.
const PAD_BLOCK: usize = 32;
/// Length of an EncodingAESKey as the WeChat console shows it.
pub const ENCODING_AES_KEY_LEN: usize = 43;
/// Longest `Encrypt` value accepted (base64 of a callback body).
pub const MAX_ENCRYPTED_B64: usize = 2 * 1024 * 1024;

/// The console's keys are 43 random base64 characters, so the last one may
/// carry bits a strict decoder rejects.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Why a key could not be used or a message could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("EncodingAESKey must be 43 base64 characters")]
    BadKey,
    #[error("Encrypt is not valid base64")]
    BadBase64,
    #[error("ciphertext length is not a positive multiple of 16")]
    BadLength,
    #[error("bad padding")]
    BadPadding,
    #[error("plaintext layout is invalid")]
    BadLayout,
    #[error("appid in the message is not valid UTF-8")]
    BadAppId,
}

/// A decrypted safe-mode message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The 16 random bytes the sender put in front.
    pub random: [u8; 16],
    /// The message itself (callback XML).
    pub message: Vec<u8>,
    /// The appid the sender appended; the caller checks it.
    pub appid: String,
}

/// An AES key derived from an EncodingAESKey. The `Debug` form hides it.
#[derive(Clone)]
pub struct AesKey {
    key: [u8; 32],
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl AesKey {
    /// Derives the key from the console's 43-character EncodingAESKey.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<AesKey, CryptoError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        let bytes = LENIENT
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(AesKey { key })
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }

    /// Encrypts `message` for `appid` with the given random prefix, returning
    /// the base64 `Encrypt` value.
    pub fn encrypt(&self, message: &[u8], appid: &str, random: &[u8; 16]) -> String {
        let body_len = 16 + 4 + message.len() + appid.len();
        let pad = PAD_BLOCK - body_len % PAD_BLOCK;
        let mut plain = Vec::with_capacity(body_len + pad);
        plain.extend_from_slice(random);
        // A callback body is bounded far below 4 GiB.
        plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
        plain.extend_from_slice(message);
        plain.extend_from_slice(appid.as_bytes());
        plain.resize(body_len + pad, pad as u8);
        let cipher = cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .encrypt_padded_vec_mut::<NoPadding>(&plain);
        STANDARD.encode(cipher)
    }

    /// Decrypts a base64 `Encrypt` value. The caller checks `appid`.
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<Decrypted, CryptoError> {
        if encrypt_b64.len() > MAX_ENCRYPTED_B64 {
            return Err(CryptoError::BadLength);
        }
        let mut buf = STANDARD
            .decode(encrypt_b64.trim())
            .map_err(|_| CryptoError::BadBase64)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CryptoError::BadLength);
        }
        let plain = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::BadPadding)?;
        let pad = usize::from(*plain.last().ok_or(CryptoError::BadPadding)?);
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(CryptoError::BadPadding);
        }
        let content = &plain[..plain.len() - pad];
        if content.len() < 20 {
            return Err(CryptoError::BadLayout);
        }
        let mut random = [0u8; 16];
        random.copy_from_slice(&content[..16]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&content[16..20]);
        let msg_len = u32::from_be_bytes(len) as usize;
        let rest = &content[20..];
        if msg_len > rest.len() {
            return Err(CryptoError::BadLayout);
        }
        let (message, appid) = rest.split_at(msg_len);
        let appid = std::str::from_utf8(appid).map_err(|_| CryptoError::BadAppId)?;
        Ok(Decrypted {
            random,
            message: message.to_vec(),
            appid: appid.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APPID: &str = "wxb11529c136998cb6";

    #[test]
    fn vector_v1_encrypt() {
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        let out = key.encrypt("我是中文abcd123".as_bytes(), APPID, b"aaaabbbbccccdddd");
        assert_eq!(
            out,
            "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
        );
        let back = key.decrypt(&out).unwrap();
        assert_eq!(back.message, "我是中文abcd123".as_bytes());
        assert_eq!(back.appid, APPID);
        assert_eq!(&back.random, b"aaaabbbbccccdddd");
    }

    #[test]
    fn vector_v2_decrypt() {
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        let encrypt = include_str!("testdata/v2_encrypt.txt").trim();
        let d = key.decrypt(encrypt).unwrap();
        assert_eq!(&d.random, b"d43123b161a4ba84");
        assert_eq!(d.appid, APPID);
        assert_eq!(
            std::str::from_utf8(&d.message).unwrap(),
            "<xml><URL><![CDATA[http://wechat.laravel.so/server]]></URL><ToUserName><![CDATA[asdasdasd]]></ToUserName><FromUserName><![CDATA[asdasdasdsadasd]]></FromUserName><CreateTime>1234567898</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>12345</MsgId></xml>"
        );
    }

    #[test]
    fn full_block_gets_a_whole_pad_block() {
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        // 16 + 4 + 8 + 4 = 32: exactly one block, so 32 bytes of padding.
        let out = key.encrypt(b"12345678", "abcd", &[1; 16]);
        let raw = STANDARD.decode(&out).unwrap();
        assert_eq!(raw.len(), 64);
        assert_eq!(key.decrypt(&out).unwrap().message, b"12345678");
    }

    #[test]
    fn rejects_bad_keys_and_garbage() {
        assert_eq!(
            AesKey::from_encoding_aes_key("short").unwrap_err(),
            CryptoError::BadKey
        );
        assert!(AesKey::from_encoding_aes_key(&"!".repeat(43)).is_err());
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        assert_eq!(key.decrypt("not base64!"), Err(CryptoError::BadBase64));
        assert_eq!(key.decrypt("AAAA"), Err(CryptoError::BadLength));
        assert_eq!(key.decrypt(""), Err(CryptoError::BadLength));
        // Decrypting with another key gives garbage that must be rejected, not panic.
        let other =
            AesKey::from_encoding_aes_key("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg").unwrap();
        let enc = other.encrypt(b"<xml/>", APPID, &[7; 16]);
        match key.decrypt(&enc) {
            Err(_) => {}
            Ok(d) => assert_ne!(d.appid, APPID),
        }
    }

    #[test]
    fn key_with_trailing_bits_is_accepted() {
        // 'H' as the last character leaves non-zero trailing bits.
        assert!(
            AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFH").is_ok()
        );
    }

    proptest! {
        #[test]
        fn encrypt_decrypt_round_trip(msg in proptest::collection::vec(any::<u8>(), 0..600),
                                      appid in "[a-z0-9]{0,24}",
                                      random in any::<[u8; 16]>()) {
            let key = AesKey::from_encoding_aes_key(KEY).unwrap();
            let enc = key.encrypt(&msg, &appid, &random);
            let d = key.decrypt(&enc).unwrap();
            prop_assert_eq!(d.message, msg);
            prop_assert_eq!(d.appid, appid);
            prop_assert_eq!(d.random, random);
        }

        #[test]
        fn decrypt_never_panics(s in "[A-Za-z0-9+/=]{0,200}") {
            let key = AesKey::from_encoding_aes_key(KEY).unwrap();
            let _ = key.decrypt(&s);
        }
    }
}
