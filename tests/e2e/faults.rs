//! Faults of the WeChat API, injected at the simulator while the three
//! real daemons run: whatever the API does, every callback is answered
//! within WeChat's 5 s (one attempt, no retry needed), and the gateway
//! serves codes again as soon as the API is back, without a restart.

use std::time::Duration;

use serde_json::{Value, json};

use crate::stack::{Options, Stack};

const WAIT: Duration = Duration::from_secs(20);

async fn faults(stack: &Stack, body: Value) {
    let r = stack
        .http
        .post(format!("{}/sim/faults", stack.sim_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{body}");
}

async fn clear(stack: &Stack) {
    let r = stack
        .http
        .delete(format!("{}/sim/faults", stack.sim_url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// A scan of `page` answered within WeChat's 5 s at the first attempt,
/// and what the user was told matches what the page got.
async fn scan_in_time(stack: &Stack, page: &mut crate::stack::Browser, openid: &str) {
    let answer = stack.scan(&page.ticket, openid, false).await;
    assert_eq!(answer["http_status"], 200, "{answer}");
    assert_eq!(answer["attempts"], 1, "answered past 5 s: {answer}");
    let reply = answer["reply"].as_str().unwrap_or_default().to_string();
    assert!(reply.contains("login successful"), "{answer}");
    let ok = page.wait_for("scan_success", WAIT).await;
    assert_eq!(ok["openid"], openid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_never_break_the_five_second_promise() {
    let stack = Stack::start(Options::default()).await;

    // The page minted its code before the API broke.
    let mut page = stack.browser().await;
    // The token endpoint down, with every token expired: user/info cannot
    // be asked, so the fallback name is used, in time.
    faults(
        &stack,
        json!({"fail_next": 100000, "errcode": -1, "path": "/cgi-bin/stable_token", "expire_tokens": true}),
    )
    .await;
    let openid = "oFault0000000000000000000Ft01";
    let answer = stack.scan(&page.ticket, openid, false).await;
    assert_eq!(
        (answer["http_status"].clone(), answer["attempts"].clone()),
        (json!(200), json!(1)),
        "{answer}"
    );
    assert_eq!(
        answer["reply"], "WeChat user Ft01, login successful! This is your 1st login.",
        "{answer}"
    );
    page.wait_for("scan_success", WAIT).await;

    // A new page cannot get a code while the token endpoint is down...
    let url = format!("ws://127.0.0.1:{}/ws", stack.gateway_port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = next_json(&mut ws).await;
    assert_eq!(first["error"], "wechat_unavailable", "{first}");
    // ...and gets one, unasked, once it is back.
    clear(&stack).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = tokio::time::timeout_at(deadline, next_json(&mut ws))
            .await
            .expect("no code after the API came back");
        if v["message_type"] == "qrcode_url" {
            break;
        }
        assert_eq!(v["error"], "wechat_unavailable", "{v}");
    }

    // A 40001 storm (every token "invalid" for a while): refreshed once,
    // retried once, never a retry storm; scans still answered in time.
    let mut page = stack.browser().await;
    faults(&stack, json!({"fail_next": 20, "errcode": 40001})).await;
    scan_in_time(&stack, &mut page, "oFault0000000000000000000Ft02").await;
    clear(&stack).await;

    // Three seconds of latency on every API call: user/info is given up
    // on (fallback name), the reply still comes in time.
    let mut page = stack.browser().await;
    faults(&stack, json!({"latency_ms": 3000})).await;
    scan_in_time(&stack, &mut page, "oFault0000000000000000000Ft03").await;
    clear(&stack).await;
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    use futures_util::StreamExt;
    loop {
        match ws.next().await.expect("closed").expect("ws error") {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                return serde_json::from_str(&t).unwrap();
            }
            _ => continue,
        }
    }
}
