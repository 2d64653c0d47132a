//! `wechat-sim scan`: the phone as a command. POSTs `/sim/scan` to a running
//! simulator and prints the reply WeChat would show the user.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::ScanArgs;

/// How long to wait for the simulator (it may retry the callback 3 times,
/// 5 s each).
const SCAN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the subcommand; the process exit code.
pub async fn scan(args: ScanArgs) -> i32 {
    match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wechat-sim scan: {e}");
            1
        }
    }
}

/// The JSON body sent to `/sim/scan`.
pub fn request_body(args: &ScanArgs) -> Value {
    let mut body = json!({ "ticket": args.ticket });
    if let Some(o) = &args.openid {
        body["openid"] = json!(o);
    }
    if args.subscribed {
        body["subscribed"] = json!(true);
    }
    if let Some(n) = &args.nickname {
        body["nickname"] = json!(n);
    }
    body
}

async fn run(args: &ScanArgs) -> Result<i32, String> {
    let url = format!("{}/sim/scan", args.sim.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(SCAN_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .post(&url)
        .json(&request_body(args))
        .send()
        .await
        .map_err(|e| format!("cannot reach the simulator at {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if args.json {
        println!("{text}");
    }
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let field = |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or_default();
    if !status.is_success() {
        let mut msg = format!("scan failed: HTTP {}", status.as_u16());
        for k in ["error", "message"] {
            if !field(k).is_empty() {
                msg.push_str(": ");
                msg.push_str(field(k));
            }
        }
        if answer.is_null() && !text.is_empty() {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        eprintln!("wechat-sim scan: {msg}");
        return Ok(1);
    }
    if !args.json {
        let reply = field("reply");
        if reply.is_empty() {
            eprintln!("(no reply: the callback answered {:?})", field("raw"));
        } else {
            println!("{reply}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_only_what_was_given() {
        let mut args = ScanArgs {
            ticket: "gQ+/=".into(),
            openid: None,
            subscribed: false,
            nickname: None,
            sim: "http://x".into(),
            json: false,
        };
        assert_eq!(request_body(&args), json!({"ticket": "gQ+/="}));
        args.openid = Some("o1".into());
        args.subscribed = true;
        args.nickname = Some("Alice".into());
        assert_eq!(
            request_body(&args),
            json!({"ticket": "gQ+/=", "openid": "o1", "subscribed": true, "nickname": "Alice"})
        );
    }
}
