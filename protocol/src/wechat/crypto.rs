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

    fn key() -> AesKey {
        AesKey::from_encoding_aes_key(KEY).unwrap()
    }

    /// The plaintext layout from WeChat's spec, built here independently of
    /// `encrypt`: random ‖ BE u32 length ‖ message ‖ appid ‖ PKCS#7 to 32.
    fn layout(message: &[u8], appid: &[u8], random: &[u8; 16]) -> Vec<u8> {
        let mut plain = random.to_vec();
        plain.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        plain.extend_from_slice(message);
        plain.extend_from_slice(appid);
        let pad = 32 - plain.len() % 32;
        plain.resize(plain.len() + pad, u8::try_from(pad).unwrap());
        plain
    }

    /// AES-256-CBC of whole blocks with the key's IV, no padding added:
    /// lets a test put any bytes (bad padding, bad lengths) in a ciphertext.
    fn raw_encrypt(key: &AesKey, plain: &[u8]) -> String {
        assert_eq!(plain.len() % 16, 0, "whole blocks only");
        let cipher = cbc::Encryptor::<Aes256>::new(&key.key.into(), &key.iv().into())
            .encrypt_padded_vec_mut::<NoPadding>(plain);
        STANDARD.encode(cipher)
    }

    /// The inverse of [`raw_encrypt`]: the plaintext blocks, unchecked.
    fn raw_decrypt(key: &AesKey, cipher: &[u8]) -> Vec<u8> {
        let mut buf = cipher.to_vec();
        cbc::Decryptor::<Aes256>::new(&key.key.into(), &key.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .unwrap()
            .to_vec()
    }

    /// What decrypting whole blocks must give, straight from the spec: the
    /// last byte is the pad length (1..=32, within the plaintext); what is
    /// left holds 16 random bytes, a length that fits, and a UTF-8 appid.
    fn expected(plain: &[u8]) -> Result<Decrypted, CryptoError> {
        let pad = usize::from(*plain.last().unwrap());
        if !(1..=32).contains(&pad) || pad > plain.len() {
            return Err(CryptoError::BadPadding);
        }
        let content = &plain[..plain.len() - pad];
        if content.len() < 20 {
            return Err(CryptoError::BadLayout);
        }
        let len = u32::from_be_bytes(content[16..20].try_into().unwrap());
        let rest = &content[20..];
        let Some(appid) = usize::try_from(len).ok().and_then(|n| rest.get(n..)) else {
            return Err(CryptoError::BadLayout);
        };
        let appid = String::from_utf8(appid.to_vec()).map_err(|_| CryptoError::BadAppId)?;
        Ok(Decrypted {
            random: content[..16].try_into().unwrap(),
            message: rest[..rest.len() - appid.len()].to_vec(),
            appid,
        })
    }

    #[test]
    fn vector_v1_encrypt() {
        let key = key();
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
        let key = key();
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
        let key = key();
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
        assert_eq!(
            AesKey::from_encoding_aes_key(&"!".repeat(43)).unwrap_err(),
            CryptoError::BadKey
        );
        let key = key();
        assert_eq!(key.decrypt("not base64!"), Err(CryptoError::BadBase64));
        assert_eq!(key.decrypt("AAAA"), Err(CryptoError::BadLength));
        assert_eq!(key.decrypt(""), Err(CryptoError::BadLength));
        assert_eq!(
            key.decrypt(&"A".repeat(MAX_ENCRYPTED_B64 + 4)),
            Err(CryptoError::BadLength)
        );
    }

    #[test]
    fn another_keys_message_is_rejected() {
        // Decrypting with another key gives garbage blocks. For this input
        // the garbage ends in a byte that is no pad length, so it is
        // refused as bad padding (not accepted, not a panic).
        let key = key();
        let other =
            AesKey::from_encoding_aes_key("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg").unwrap();
        let enc = other.encrypt(b"<xml/>", APPID, &[7; 16]);
        let garbage = raw_decrypt(&key, &STANDARD.decode(&enc).unwrap());
        assert_eq!(garbage.len(), 64);
        assert!(*garbage.last().unwrap() > 32, "{garbage:?}");
        assert_eq!(key.decrypt(&enc), Err(CryptoError::BadPadding));
        // And with the right key it is the message.
        assert_eq!(other.decrypt(&enc).unwrap().appid, APPID);
    }

    #[test]
    fn padding_and_layout_errors() {
        let key = key();
        let good = layout(b"<xml/>", APPID.as_bytes(), &[3; 16]);
        assert_eq!(good.len(), 64);
        assert_eq!(
            raw_encrypt(&key, &good),
            key.encrypt(b"<xml/>", APPID, &[3; 16])
        );
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            key.decrypt(&raw_encrypt(&key, &p))
        };
        // Pad length 0, over 32, or longer than the plaintext.
        assert_eq!(
            with(&|p| *p.last_mut().unwrap() = 0),
            Err(CryptoError::BadPadding)
        );
        assert_eq!(
            with(&|p| *p.last_mut().unwrap() = 33),
            Err(CryptoError::BadPadding)
        );
        assert_eq!(
            with(&|p| *p.last_mut().unwrap() = 255),
            Err(CryptoError::BadPadding)
        );
        let mut one_block = [0u8; 16];
        one_block[15] = 17;
        assert_eq!(
            key.decrypt(&raw_encrypt(&key, &one_block)),
            Err(CryptoError::BadPadding)
        );
        // Under 20 bytes left once the pad is off: no room for the header.
        one_block[15] = 16;
        assert_eq!(
            key.decrypt(&raw_encrypt(&key, &one_block)),
            Err(CryptoError::BadLayout)
        );
        let mut short = [1u8; 32];
        short[31] = 13;
        assert_eq!(
            key.decrypt(&raw_encrypt(&key, &short)),
            Err(CryptoError::BadLayout)
        );
        // A message length past the end, by one and by the most.
        let too_long = u32::try_from(6 + APPID.len() + 1).unwrap();
        assert_eq!(
            with(&|p| p[16..20].copy_from_slice(&too_long.to_be_bytes())),
            Err(CryptoError::BadLayout)
        );
        assert_eq!(
            with(&|p| p[16..20].copy_from_slice(&u32::MAX.to_be_bytes())),
            Err(CryptoError::BadLayout)
        );
        // The whole rest as message: an empty appid, for the caller to refuse.
        let whole = u32::try_from(6 + APPID.len()).unwrap();
        let d = with(&|p| p[16..20].copy_from_slice(&whole.to_be_bytes())).unwrap();
        assert_eq!(d.appid, "");
        assert_eq!(d.message, [b"<xml/>".as_slice(), APPID.as_bytes()].concat());
        // An appid that is not UTF-8.
        assert_eq!(with(&|p| p[26] = 0xff), Err(CryptoError::BadAppId));
    }

    #[test]
    fn key_with_trailing_bits_is_accepted() {
        // 'H' as the last character leaves non-zero trailing bits.
        assert!(
            AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFH").is_ok()
        );
    }

    /// How a test corrupts a well-formed plaintext before encrypting it.
    #[derive(Debug, Clone)]
    enum Corruption {
        /// The last byte (the pad length) becomes this.
        Pad(u8),
        /// The message length field becomes this.
        Length(u32),
        /// The length field becomes the true room for message and appid
        /// plus this (so the off-by-ones at the edge come up often).
        LengthNear(i64),
        /// This byte of the appid (modulo its length) becomes 0xff.
        AppId(usize),
    }

    fn corruption() -> impl Strategy<Value = Corruption> {
        prop_oneof![
            any::<u8>().prop_map(Corruption::Pad),
            prop_oneof![Just(0u8), 33u8..=255].prop_map(Corruption::Pad),
            any::<u32>().prop_map(Corruption::Length),
            (0u32..700).prop_map(Corruption::Length),
            (-3i64..=3).prop_map(Corruption::LengthNear),
            any::<usize>().prop_map(Corruption::AppId),
        ]
    }

    proptest! {
        #[test]
        fn encrypt_decrypt_round_trip(msg in proptest::collection::vec(any::<u8>(), 0..600),
                                      appid in "[a-z0-9]{0,24}",
                                      random in any::<[u8; 16]>()) {
            let key = key();
            let enc = key.encrypt(&msg, &appid, &random);
            prop_assert_eq!(&enc, &raw_encrypt(&key, &layout(&msg, appid.as_bytes(), &random)));
            let d = key.decrypt(&enc).unwrap();
            prop_assert_eq!(d.message, msg);
            prop_assert_eq!(d.appid, appid);
            prop_assert_eq!(d.random, random);
        }

        /// Any string: never a panic; the base64 and length checks say
        /// exactly what is wrong, and whole blocks get past them.
        #[test]
        fn decrypt_never_panics(s in "[A-Za-z0-9+/=]{0,200}") {
            let key = key();
            let got = key.decrypt(&s);
            match STANDARD.decode(&s) {
                Err(_) => prop_assert_eq!(got, Err(CryptoError::BadBase64)),
                Ok(b) if b.is_empty() || b.len() % 16 != 0 => {
                    prop_assert_eq!(got, Err(CryptoError::BadLength));
                }
                Ok(b) => prop_assert_eq!(got, expected(&raw_decrypt(&key, &b))),
            }
        }

        /// Random whole AES blocks: past the block check every time, into
        /// the padding and layout checks, with the exact outcome the spec
        /// gives for the plaintext they decrypt to.
        #[test]
        fn decrypt_random_blocks(blocks in (1usize..=16).prop_flat_map(|n| {
            proptest::collection::vec(any::<u8>(), n * 16)
        })) {
            let key = key();
            let got = key.decrypt(&STANDARD.encode(&blocks));
            prop_assert_ne!(&got, &Err(CryptoError::BadBase64));
            prop_assert_ne!(&got, &Err(CryptoError::BadLength));
            prop_assert_eq!(got, expected(&raw_decrypt(&key, &blocks)));
        }

        /// Random plaintexts of every length whose last byte is set: the
        /// padding check on its own, with known results.
        #[test]
        fn decrypt_any_pad_byte(blocks in 1usize..=6,
                                fill in any::<u8>(),
                                pad in any::<u8>()) {
            let key = key();
            let mut plain = vec![fill; blocks * 16];
            *plain.last_mut().unwrap() = pad;
            let got = key.decrypt(&raw_encrypt(&key, &plain));
            let p = usize::from(pad);
            if p == 0 || p > 32 || p > plain.len() {
                prop_assert_eq!(got, Err(CryptoError::BadPadding));
            } else if plain.len() - p < 20 {
                prop_assert_eq!(got, Err(CryptoError::BadLayout));
            } else {
                prop_assert_eq!(got, expected(&plain));
            }
        }

        /// A real message with its padding, length or appid bytes corrupted
        /// before encryption: the error each corruption must give.
        #[test]
        fn decrypt_corrupted_messages(msg in proptest::collection::vec(any::<u8>(), 0..300),
                                      appid in "[a-z0-9]{1,24}",
                                      random in any::<[u8; 16]>(),
                                      how in corruption()) {
            let key = key();
            let mut plain = layout(&msg, appid.as_bytes(), &random);
            let true_pad = usize::from(*plain.last().unwrap());
            let rest = msg.len() + appid.len();
            let how = match how {
                Corruption::LengthNear(d) => {
                    let n = (i64::try_from(rest).unwrap() + d).max(0);
                    Corruption::Length(u32::try_from(n).unwrap())
                }
                other => other,
            };
            match how {
                Corruption::Pad(b) => *plain.last_mut().unwrap() = b,
                Corruption::Length(n) => plain[16..20].copy_from_slice(&n.to_be_bytes()),
                Corruption::AppId(i) => plain[20 + msg.len() + i % appid.len()] = 0xff,
                Corruption::LengthNear(_) => unreachable!("resolved above"),
            }
            let got = key.decrypt(&raw_encrypt(&key, &plain));
            match how {
                Corruption::Pad(b) if b == 0 || b > 32 => {
                    prop_assert_eq!(got, Err(CryptoError::BadPadding));
                }
                Corruption::Pad(b) if usize::from(b) == true_pad => {
                    let d = got.unwrap();
                    prop_assert_eq!(d.message, msg);
                    prop_assert_eq!(d.appid, appid);
                }
                // A wrong pad length (1..=32) moves the end of the appid:
                // cut into the message, or pad bytes kept as appid.
                Corruption::Pad(_) => {
                    let same_appid = got.as_ref().is_ok_and(|d| d.appid == appid);
                    prop_assert!(!same_appid, "a wrong pad length kept the appid: {:?}", got);
                    prop_assert_eq!(got, expected(&plain));
                }
                Corruption::Length(n) if usize::try_from(n).unwrap() > rest => {
                    prop_assert_eq!(got, Err(CryptoError::BadLayout));
                }
                Corruption::Length(n) => {
                    // The length decides where the message ends.
                    let n = usize::try_from(n).unwrap();
                    let mut tail = msg.get(n..).unwrap_or_default().to_vec();
                    tail.extend_from_slice(appid.as_bytes());
                    let tail_start = n.saturating_sub(msg.len());
                    match String::from_utf8(tail[tail_start..].to_vec()) {
                        Ok(a) => {
                            let d = got.unwrap();
                            prop_assert_eq!(d.message.len(), n);
                            prop_assert_eq!(d.appid, a);
                            prop_assert_eq!(d.random, random);
                        }
                        Err(_) => prop_assert_eq!(got, Err(CryptoError::BadAppId)),
                    }
                }
                Corruption::AppId(_) => prop_assert_eq!(got, Err(CryptoError::BadAppId)),
                Corruption::LengthNear(_) => unreachable!("resolved above"),
            }
        }
    }
}
