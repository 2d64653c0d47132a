//! A small fake of the WeChat API on a real socket: `stable_token`,
//! `user/info` (nicknames only where set, as WeChat since 2021),
//! `qrcode/create` (tickets with `+`, `/`, `=`), with latency and failures
//! on demand, a count of calls per path and the AppSecrets it was given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    nicknames: HashMap<String, String>,
    latency: Duration,
    fail_next: Vec<(String, i64)>,
    calls: HashMap<String, usize>,
    secrets: Vec<String>,
    tickets: usize,
}

/// The fake API; stops when dropped.
pub struct FakeApi {
    pub base: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let Some((path, query, body)) = read_request(&mut s).await else {
                        return;
                    };
                    let (latency, fail) = {
                        let mut g = st.lock().unwrap();
                        *g.calls.entry(path.clone()).or_default() += 1;
                        if path == "/cgi-bin/stable_token" {
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let secret = v["secret"].as_str().unwrap_or_default();
                            g.secrets.push(secret.to_string());
                        }
                        let fail = g
                            .fail_next
                            .iter()
                            .position(|(p, _)| p == &path)
                            .map(|i| g.fail_next.remove(i).1);
                        (g.latency, fail)
                    };
                    if !latency.is_zero() && path != "/cgi-bin/stable_token" {
                        tokio::time::sleep(latency).await;
                    }
                    let body = match fail {
                        Some(code) => format!("{{\"errcode\":{code},\"errmsg\":\"injected\"}}"),
                        None => answer(&st, &path, &query),
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        FakeApi { base, state, task }
    }

    /// `user/info` returns this nickname for `openid`.
    pub fn set_nickname(&self, openid: &str, nickname: &str) {
        self.state
            .lock()
            .unwrap()
            .nicknames
            .insert(openid.into(), nickname.into());
    }

    /// Delay added to every call but `stable_token`.
    pub fn set_latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }

    /// The next call to `path` answers `errcode`.
    pub fn fail_next(&self, path: &str, errcode: i64) {
        self.state
            .lock()
            .unwrap()
            .fail_next
            .push((path.into(), errcode));
    }

    /// The AppSecret each `stable_token` call carried, in order.
    pub fn secrets(&self) -> Vec<String> {
        self.state.lock().unwrap().secrets.clone()
    }

    /// Calls made to `path`.
    pub fn calls(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(st: &Mutex<State>, path: &str, query: &str) -> String {
    let mut g = st.lock().unwrap();
    match path {
        "/cgi-bin/stable_token" => r#"{"access_token":"FAKE_TOKEN","expires_in":7200}"#.into(),
        "/cgi-bin/user/info" => {
            let openid = query
                .split('&')
                .find_map(|p| p.strip_prefix("openid="))
                .unwrap_or_default()
                .to_string();
            let mut v =
                serde_json::json!({"subscribe":1,"openid":openid,"language":"zh_CN","remark":""});
            if let Some(n) = g.nicknames.get(&openid) {
                v["nickname"] = serde_json::Value::String(n.clone());
            }
            v.to_string()
        }
        "/cgi-bin/qrcode/create" => {
            g.tickets += 1;
            let ticket = format!("gQH{}+a/b==", g.tickets);
            serde_json::json!({"ticket":ticket,"expire_seconds":120,"url":format!("http://weixin.qq.com/q/{}", g.tickets)}).to_string()
        }
        _ => r#"{"errcode":40004,"errmsg":"not found"}"#.into(),
    }
}

/// Reads one request; returns (path, query, body).
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let target = head.split_whitespace().nth(1)?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let body = buf.get(head_end..).unwrap_or_default().to_vec();
    Some((path.to_string(), query.to_string(), body))
}
