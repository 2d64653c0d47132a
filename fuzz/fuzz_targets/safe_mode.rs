//! Safe mode: `EncryptedEnvelope::from_fields`, `AesKey::decrypt` with the
//! test vectors' fixed key, then `Message::parse` of the plaintext.
//!
//! The first byte picks what the rest is:
//! - 0: a POST body (`<xml><ToUserName/><Encrypt/></xml>`): parse, take the
//!   envelope, decrypt it, parse the message;
//! - 1: an `Encrypt` value (UTF-8, lossy): decrypt, parse the message;
//! - 2: a plaintext message: `encrypt` it and `decrypt` it back (must give
//!   the same message, appid and random bytes), then parse it;
//! - 3: raw plaintext blocks (zero-filled to a multiple of 16), encrypted
//!   with no padding added, so the fuzzer steers the pad byte and the length
//!   field that `decrypt` checks; what it accepts must match the layout.
#![no_main]

use std::sync::OnceLock;

use aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use libfuzzer_sys::fuzz_target;
use protocol::wechat::crypto::{AesKey, CryptoError, Decrypted, MAX_ENCRYPTED_B64};
use protocol::wechat::xml::Fields;
use wechat_scan_login_fuzz::{APPID, ENCODING_AES_KEY, check_callback_body, check_envelope};

fn key() -> &'static AesKey {
    static KEY: OnceLock<AesKey> = OnceLock::new();
    KEY.get_or_init(|| AesKey::from_encoding_aes_key(ENCODING_AES_KEY).expect("test key"))
}

/// The raw AES key bytes (base64 of the EncodingAESKey plus `=`), for mode 3.
fn raw_key() -> &'static [u8; 32] {
    static RAW: OnceLock<[u8; 32]> = OnceLock::new();
    RAW.get_or_init(|| {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let bytes = engine
            .decode(format!("{ENCODING_AES_KEY}="))
            .expect("test key is base64");
        bytes.try_into().expect("32 bytes")
    })
}

fn decrypt_and_parse(encrypt: &str) -> Result<Decrypted, CryptoError> {
    let d = key().decrypt(encrypt)?;
    // The callback refuses another appid first; parse it anyway, for reach.
    let _ = check_callback_body(&d.message);
    Ok(d)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(fields) = Fields::parse(rest)
                && let Some(env) = check_envelope(&fields)
            {
                let _ = decrypt_and_parse(&env.encrypt);
            }
        }
        1 => {
            let s = String::from_utf8_lossy(rest);
            let got = decrypt_and_parse(&s);
            if s.len() > MAX_ENCRYPTED_B64 {
                assert_eq!(got, Err(CryptoError::BadLength));
            }
        }
        2 => {
            let random = *b"d43123b161a4ba84";
            let enc = key().encrypt(rest, APPID, &random);
            let d = decrypt_and_parse(&enc).expect("own ciphertext decrypts");
            assert_eq!(d.message, rest);
            assert_eq!(d.appid, APPID);
            assert_eq!(d.random, random);
            // WeChat pads to 32 bytes: the ciphertext is whole 32-byte blocks.
            let raw = STANDARD.decode(&enc).expect("base64");
            assert_eq!(raw.len() % 32, 0);
            assert!(raw.len() > 16 + 4 + rest.len() + APPID.len());
        }
        _ => {
            let mut plain = rest.to_vec();
            let blocks = plain.len().div_ceil(16).max(1);
            plain.resize(blocks * 16, 0);
            let key = raw_key();
            let iv: [u8; 16] = key[..16].try_into().expect("16 bytes");
            let cipher = cbc::Encryptor::<Aes256>::new(key.into(), &iv.into())
                .encrypt_padded_vec_mut::<NoPadding>(&plain);
            match decrypt_and_parse(&STANDARD.encode(cipher)) {
                Ok(d) => {
                    // The layout: random ‖ BE u32 length ‖ message ‖ appid ‖ pad.
                    let pad = usize::from(*plain.last().expect("non-empty"));
                    assert!((1..=32).contains(&pad), "pad {pad}");
                    assert_eq!(&d.random[..], &plain[..16]);
                    let len = u32::from_be_bytes(plain[16..20].try_into().expect("4 bytes"));
                    assert_eq!(d.message.len() as u64, u64::from(len));
                    assert_eq!(&d.message[..], &plain[20..20 + d.message.len()]);
                    assert_eq!(20 + d.message.len() + d.appid.len() + pad, plain.len());
                    assert_eq!(
                        d.appid.as_bytes(),
                        &plain[20 + d.message.len()..plain.len() - pad]
                    );
                }
                Err(CryptoError::BadBase64 | CryptoError::BadLength) => {
                    panic!("whole blocks were refused before the padding check")
                }
                Err(_) => {}
            }
        }
    }
});
