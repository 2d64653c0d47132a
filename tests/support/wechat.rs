//! Callbacks exactly as WeChat sends them: signed query strings, event
//! bodies, safe-mode envelopes; and reading the replies back.

use protocol::wechat::crypto::AesKey;
use protocol::wechat::reply::{encrypted_post, event_body};
use protocol::wechat::signature::{msg_signature, signature};
use protocol::wechat::xml::Fields;

/// Percent-encodes everything but RFC 3986 unreserved characters, as the
/// gateway encodes a ticket into the QR image URL.
pub fn percent_encode(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Percent-decodes (no `+` → space: tickets contain `+`).
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Seconds since the epoch (as the daemons count them).
pub fn now() -> i64 {
    protocol::wechat::unix_now()
}

/// `signature=..&timestamp=..&nonce=..` for `token`.
pub fn signed_query(token: &str, timestamp: i64) -> String {
    let ts = timestamp.to_string();
    let nonce = rand::random::<u32>().to_string();
    format!(
        "signature={}&timestamp={ts}&nonce={nonce}",
        signature(token, &ts, &nonce)
    )
}

/// POSTs `body` to `{base}/wechat?{query}`; returns the raw answer body.
async fn post_raw(http: &reqwest::Client, base: &str, query: &str, body: String) -> String {
    http.post(format!("{base}/wechat?{query}"))
        .body(body)
        .send()
        .await
        .expect("callback reachable")
        .text()
        .await
        .expect("answer body")
}

/// POSTs `body` to `{base}/wechat` signed with `token` as WeChat signs it;
/// returns the raw answer body.
pub async fn post_signed(http: &reqwest::Client, base: &str, token: &str, body: String) -> String {
    post_raw(http, base, &signed_query(token, now()), body).await
}

/// POSTs `xml` to `{base}/wechat` in safe mode (encrypted with `key` for
/// `appid`, signed with `token`), as WeChat does for an account in 安全
/// mode; returns the decrypted reply XML, or the raw answer when it is not
/// an encrypted reply (`success`, an error text).
pub async fn post_safe(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    key: &AesKey,
    appid: &str,
    xml: &str,
) -> String {
    let (query, body) = encrypt_post(token, key, appid, xml, now());
    let raw = post_raw(http, base, &query, body).await;
    match open_encrypted_reply(token, key, &raw) {
        Ok((_, inner)) => inner,
        Err(_) => raw,
    }
}

/// A QR login event: `subscribe` (`qrscene_<fd>`) for a new user, `SCAN`
/// (`<fd>`) for a follower.
pub fn scan_event(
    openid: &str,
    fd: u32,
    ticket: &str,
    subscribed: bool,
    create_time: i64,
) -> String {
    if subscribed {
        event_body(
            "gh_test",
            openid,
            create_time,
            "SCAN",
            &fd.to_string(),
            Some(ticket),
        )
    } else {
        event_body(
            "gh_test",
            openid,
            create_time,
            "subscribe",
            &format!("qrscene_{fd}"),
            Some(ticket),
        )
    }
}

/// Encrypts `xml` as a safe-mode POST: (query string, body).
pub fn encrypt_post(
    token: &str,
    key: &AesKey,
    appid: &str,
    xml: &str,
    timestamp: i64,
) -> (String, String) {
    let random: [u8; 16] = *b"0123456789abcdef";
    let encrypt = key.encrypt(xml.as_bytes(), appid, &random);
    let ts = timestamp.to_string();
    let nonce = rand::random::<u32>().to_string();
    let query = format!(
        "signature={}&timestamp={ts}&nonce={nonce}&openid=o&encrypt_type=aes&msg_signature={}",
        signature(token, &ts, &nonce),
        msg_signature(token, &ts, &nonce, &encrypt)
    );
    (query, encrypted_post("gh_test", &encrypt))
}

/// The `Content` of a plain passive reply.
pub fn reply_content(xml: &str) -> Option<String> {
    Fields::parse(xml.as_bytes())
        .ok()?
        .get("Content")
        .map(str::to_string)
}

/// Opens an encrypted reply: checks its `MsgSignature` and returns
/// (appid, inner reply XML).
pub fn open_encrypted_reply(
    token: &str,
    key: &AesKey,
    xml: &str,
) -> Result<(String, String), String> {
    let f = Fields::parse(xml.as_bytes()).map_err(|e| e.to_string())?;
    let encrypt = f.get("Encrypt").ok_or("no Encrypt")?;
    let ts = f.get("TimeStamp").ok_or("no TimeStamp")?;
    let nonce = f.get("Nonce").ok_or("no Nonce")?;
    let sig = f.get("MsgSignature").ok_or("no MsgSignature")?;
    if msg_signature(token, ts, nonce, encrypt) != sig {
        return Err("bad MsgSignature".into());
    }
    let d = key.decrypt(encrypt).map_err(|e| e.to_string())?;
    Ok((
        d.appid,
        String::from_utf8(d.message).map_err(|e| e.to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_through_percent_encoding() {
        let t = "gQH47joAAAAAAAAAASxodHRw+Oi8/d2V==";
        let e = percent_encode(t);
        assert_eq!(e, "gQH47joAAAAAAAAAASxodHRw%2BOi8%2Fd2V%3D%3D");
        assert_eq!(percent_decode(&e), t);
    }
}
