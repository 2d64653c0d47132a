//! `login`: full logins as WeChat delivers them. Signed (plain) or
//! encrypted (safe mode, shared EncodingAESKey) `subscribe` callbacks are
//! POSTed straight to wechat-callback's `/wechat`, which looks the user up
//! at the simulator, records the login in SQLite and notifies the gateway,
//! which pushes `scan_success` to the page. Latency runs from sending the
//! POST to that frame arriving.
//!
//! Each login uses its own page and carries that page's real QR `Ticket`,
//! as WeChat's events do, so the gateway's ticket check and spend are
//! measured too (a ticket is spent by its push: one login per page). Pages
//! are opened before the timed part and closed after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use base64::Engine;
use bytes::Bytes;
use hyper::Method;
use protocol::wechat::crypto::AesKey;
use protocol::wechat::reply::{encrypted_post, event_body};
use protocol::wechat::signature::{msg_signature, signature};
use protocol::wechat::xml::Fields;
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::cli::{LoginArgs, LoginMode};
use crate::http;
use crate::procs::{APP_ID, Env, Stack, StackOptions, TOKEN};
use crate::report::{Report, at_least, at_most};
use crate::stats::{Latency, stamped};
use crate::ws_clients::{KeyBy, Recorder, lookup_fds, open_fleet};

/// How long `scan_success` frames may keep arriving after the last answer.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// HTTP connections the paced runs draw from.
const PACED_POOL: usize = 64;
/// The reply text the callback's default template starts its success with.
const SUCCESS_MARK: &str = "login successful";

/// Resolved `login` settings.
#[derive(Debug, Clone)]
pub struct LoginParams {
    pub paced: usize,
    pub rate: f64,
    pub saturated: usize,
    pub concurrency: usize,
    pub modes: Vec<LoginMode>,
    pub dbs: Vec<String>,
}

impl LoginParams {
    pub fn new(args: &LoginArgs, tiny: bool) -> LoginParams {
        LoginParams {
            paced: args.logins_paced.unwrap_or(if tiny { 200 } else { 5_000 }),
            rate: args.login_rate,
            saturated: args
                .logins_saturated
                .unwrap_or(if tiny { 200 } else { 10_000 }),
            concurrency: args.login_concurrency.max(1),
            modes: args.login_modes.clone(),
            dbs: args.db.clone(),
        }
    }
}

/// How requests are issued.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Request `i` is sent `i / rate` seconds after the start.
    Paced(f64),
    /// `k` requests in flight, each sent when the previous one answered.
    Closed(usize),
}

/// One run's outcome.
#[derive(Debug, Clone)]
struct LoginResult {
    latency: Latency,
    reply_latency: Latency,
    logins_per_s: f64,
}

/// Everything signing and encrypting needs.
struct Keys {
    aes: AesKey,
    encoding_aes_key: String,
}

impl Keys {
    fn random() -> anyhow::Result<Keys> {
        let bytes: [u8; 32] = rand::random();
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        let encoding_aes_key = encoded.trim_end_matches('=').to_string();
        let aes = AesKey::from_encoding_aes_key(&encoding_aes_key)
            .map_err(|e| anyhow::anyhow!("generated EncodingAESKey rejected: {e}"))?;
        Ok(Keys {
            aes,
            encoding_aes_key,
        })
    }
}

pub async fn run(env: &Env, p: &LoginParams, report: &mut Report) -> anyhow::Result<()> {
    report.param(
        "login",
        json!({
            "paced_logins": p.paced,
            "paced_rate": p.rate,
            "saturated_logins": p.saturated,
            "saturated_concurrency": p.concurrency,
            "modes": p.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "stores": p.dbs,
            "ticket": "each login has its own page and carries its real QR ticket",
        }),
    );
    // One page per login, all open at once, in this process and in the
    // gateway: both must fit the open-file limit.
    let limit = usize::try_from(crate::procs::nofile_limit()).unwrap_or(usize::MAX);
    let fit = limit.saturating_sub(1_000).max(1);
    let mut p = p.clone();
    for (what, n) in [("paced", &mut p.paced), ("saturated", &mut p.saturated)] {
        if *n > fit {
            report.note(format!(
                "login: {what} runs use {fit} logins, not {n}: one page per login must fit the open-file limit {limit}"
            ));
            *n = fit;
        }
    }
    let p = &p;
    for db in &p.dbs {
        // A throwaway cluster lives as long as its stack.
        let (url, cluster, prefix) = match db.as_str() {
            "sqlite" => (None, None, String::new()),
            "postgres" => {
                let c = tokio::task::spawn_blocking(|| {
                    e2e::postgres::Cluster::start("127.0.0.1", true)
                })
                .await?;
                let url = c.fresh_database("bench");
                (Some(url), Some(c), "postgres.".to_string())
            }
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (Some(url.to_string()), None, "postgres.".to_string())
            }
            other => bail!("--db {other}: expected sqlite, postgres or a postgres:// URL"),
        };
        let keys = Keys::random()?;
        let stack = Stack::start(
            env,
            &StackOptions {
                max_connections: p.paced.max(p.saturated) + 64,
                encoding_aes_key: Some(keys.encoding_aes_key.clone()),
                db: url,
                ..StackOptions::default()
            },
        )
        .await?;
        println!("login: store {db}");
        let result = measure(env, &stack, &keys, p, &prefix, report).await;
        for w in stack.stop().await {
            report.note(w);
        }
        drop(cluster);
        result?;
    }
    Ok(())
}

/// Runs every mode's variants; labels are `login.{prefix}{mode}.…`.
async fn measure(
    env: &Env,
    stack: &Stack,
    keys: &Keys,
    p: &LoginParams,
    prefix: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "login: paced {} at {}/s, saturated {} with {} concurrent, modes {:?}, {} run(s)",
        p.paced,
        p.rate,
        p.saturated,
        p.concurrency,
        p.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        env.runs
    );
    let mut tag = 0usize;
    // Warm-up: access token, SQLite pages, connections.
    for &mode in &p.modes {
        tag += 1;
        login_run(
            stack,
            keys,
            mode,
            50,
            Load::Closed(8),
            tag,
            report,
            "warm-up",
        )
        .await?;
    }
    for &mode in &p.modes {
        let m = mode.name();
        // Paced: the p99 latency has a target (plain mode). Saturated: the
        // rate has one (plain mode).
        let plain = mode == LoginMode::Plain;
        let mut variants = Vec::new();
        if p.paced > 0 && p.rate > 0.0 {
            let p99 = if plain { at_most(10.0) } else { None };
            variants.push((
                format!("login.{prefix}{m}.paced_{}", p.rate),
                p.paced,
                Load::Paced(p.rate),
                None,
                p99,
            ));
        }
        if p.saturated > 0 {
            let rate = if plain { at_least(5_000.0) } else { None };
            variants.push((
                format!("login.{prefix}{m}.saturated_{}", p.concurrency),
                p.saturated,
                Load::Closed(p.concurrency),
                rate,
                None,
            ));
        }
        for (label, count, load, rate_target, p99_target) in variants {
            for run in 0..env.runs {
                tag += 1;
                let r = login_run(stack, keys, mode, count, load, tag, report, &label).await?;
                print_run(&label, run, &r);
                report.add(
                    &format!("{label}.logins_per_s"),
                    "logins/s",
                    r.logins_per_s,
                    rate_target,
                );
                add_latency(report, &label, &r, p99_target);
            }
        }
    }
    Ok(())
}

fn print_run(label: &str, run: usize, r: &LoginResult) {
    println!(
        "  {label} run {}: {:.0} logins/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (HTTP reply p99 {:.2} ms)",
        run + 1,
        r.logins_per_s,
        r.latency.p50 / 1000.0,
        r.latency.p99 / 1000.0,
        r.latency.p999 / 1000.0,
        r.latency.max / 1000.0,
        r.reply_latency.p99 / 1000.0
    );
}

fn add_latency(
    report: &mut Report,
    label: &str,
    r: &LoginResult,
    p99_target: Option<crate::report::Target>,
) {
    let ms = |us: f64| us / 1000.0;
    report.add(&format!("{label}.p50"), "ms", ms(r.latency.p50), None);
    report.add(&format!("{label}.p90"), "ms", ms(r.latency.p90), None);
    report.add(&format!("{label}.p99"), "ms", ms(r.latency.p99), p99_target);
    report.add(&format!("{label}.p99.9"), "ms", ms(r.latency.p999), None);
    report.add(&format!("{label}.max"), "ms", ms(r.latency.max), None);
    report.add(
        &format!("{label}.reply_p99"),
        "ms",
        ms(r.reply_latency.p99),
        None,
    );
}

/// A prepared callback: path with signed query, and body.
struct Prepared {
    path: String,
    body: Bytes,
}

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

fn prepare(
    keys: &Keys,
    mode: LoginMode,
    openid: &str,
    fd: u32,
    ticket: &str,
    create_time: i64,
) -> Prepared {
    let xml = event_body(
        "gh_bench",
        openid,
        create_time,
        "subscribe",
        &format!("qrscene_{fd}"),
        Some(ticket),
    );
    let ts = unix_secs().to_string();
    let nonce = rand::random::<u32>().to_string();
    let sig = signature(TOKEN, &ts, &nonce);
    match mode {
        LoginMode::Plain => Prepared {
            path: format!("/wechat?signature={sig}&timestamp={ts}&nonce={nonce}&openid={openid}"),
            body: Bytes::from(xml),
        },
        LoginMode::Safe => {
            let random: [u8; 16] = rand::random::<[u8; 16]>()
                .map(|b| b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(b) % 36]);
            let encrypt = keys.aes.encrypt(xml.as_bytes(), APP_ID, &random);
            let msig = msg_signature(TOKEN, &ts, &nonce, &encrypt);
            Prepared {
                path: format!(
                    "/wechat?signature={sig}&timestamp={ts}&nonce={nonce}&openid={openid}&encrypt_type=aes&msg_signature={msig}"
                ),
                body: Bytes::from(encrypted_post("gh_bench", &encrypt)),
            }
        }
    }
}

/// Whether a reply says the login succeeded (opening it in safe mode).
fn reply_ok(keys: &Keys, mode: LoginMode, body: &[u8]) -> Result<(), String> {
    let fields = Fields::parse(body).map_err(|e| format!("reply is not XML: {e}"))?;
    let content = match mode {
        LoginMode::Plain => fields.get("Content").map(str::to_string),
        LoginMode::Safe => {
            let encrypt = fields
                .get("Encrypt")
                .ok_or("encrypted reply without Encrypt")?;
            let d = keys
                .aes
                .decrypt(encrypt)
                .map_err(|e| format!("cannot decrypt the reply: {e}"))?;
            Fields::parse(&d.message)
                .ok()
                .and_then(|f| f.get("Content").map(str::to_string))
        }
    }
    .ok_or("reply without Content")?;
    if content.contains(SUCCESS_MARK) {
        Ok(())
    } else {
        Err(format!("reply says: {content}"))
    }
}

/// Per-request outcome slots shared by the senders.
struct Slots {
    sent: Vec<AtomicU64>,
    replied: Vec<AtomicU64>,
    bad: AtomicUsize,
    first_bad: std::sync::Mutex<Option<String>>,
}

impl Slots {
    fn bad(&self, what: String) {
        self.bad.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_bad.lock()
            && f.is_none()
        {
            *f = Some(what);
        }
    }
}

async fn send_one(
    conn: &mut http::Conn,
    i: usize,
    req: &Prepared,
    recorder: &Recorder,
    slots: &Slots,
    keys: &Keys,
    mode: LoginMode,
) {
    slots.sent[i].store(recorder.now_ns().max(1), Ordering::Relaxed);
    let answer = conn
        .request(Method::POST, &req.path, Some("text/xml"), req.body.clone())
        .await;
    slots.replied[i].store(recorder.now_ns().max(1), Ordering::Relaxed);
    match answer {
        Ok((status, body)) if status.is_success() => {
            if let Err(e) = reply_ok(keys, mode, &body) {
                slots.bad(e);
            }
        }
        Ok((status, body)) => slots.bad(format!(
            "callback answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => slots.bad(format!("{e:#}")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn login_run(
    stack: &Stack,
    keys: &Keys,
    mode: LoginMode,
    n: usize,
    load: Load,
    tag: usize,
    report: &mut Report,
    label: &str,
) -> anyhow::Result<LoginResult> {
    let recorder = Recorder::new(n);
    let fleet = open_fleet(
        stack.gateway_addr,
        n,
        256,
        tag * 50_000,
        recorder.clone(),
        KeyBy::Connection,
    )
    .await;
    if fleet.failures > 0 {
        bail!(
            "{label}: {} of {n} pages got no QR code (first error: {})",
            fleet.failures,
            fleet.first_error.unwrap_or_default()
        );
    }
    let tickets: Vec<String> = fleet.conns.iter().map(|c| c.ticket.clone()).collect();
    let fds = lookup_fds(stack.sim_addr, tickets.clone(), 16).await?;
    let now = unix_secs();
    let prepared: Arc<Vec<Prepared>> = Arc::new(
        (0..n)
            .map(|i| {
                let openid = format!("obench{tag}x{i}");
                prepare(keys, mode, &openid, fds[i], &tickets[i], now + i as i64)
            })
            .collect(),
    );
    let slots = Arc::new(Slots {
        sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
        replied: (0..n).map(|_| AtomicU64::new(0)).collect(),
        bad: AtomicUsize::new(0),
        first_bad: std::sync::Mutex::new(None),
    });
    let keys = Arc::new(Keys {
        aes: keys.aes.clone(),
        encoding_aes_key: keys.encoding_aes_key.clone(),
    });

    let target = stack.callback_addr;
    let cpu = stack.cpu();
    match load {
        Load::Closed(k) => closed_loop(target, k, &prepared, &recorder, &slots, &keys, mode).await,
        Load::Paced(rate) => paced(target, rate, &prepared, &recorder, &slots, &keys, mode).await,
    }
    let delivered = recorder.wait_for(n, DRAIN_LIMIT).await;
    if label != "warm-up" {
        cpu.report_since(stack, n, label, report);
    }
    fleet.close().await;

    let bad = slots.bad.load(Ordering::Relaxed);
    if bad > 0 {
        report.fail(format!(
            "{label}: {bad} of {n} logins failed (first: {})",
            slots
                .first_bad
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default()
        ));
    }
    if delivered < n {
        report.fail(format!(
            "{label}: only {delivered} of {n} pages got scan_success"
        ));
    }
    let unexpected = recorder.unexpected.load(Ordering::Relaxed);
    if unexpected > 0 {
        report.fail(format!(
            "{label}: {unexpected} unexpected frames (first: {})",
            recorder.unexpected_sample().unwrap_or_default()
        ));
    }
    let st = stamped(
        (0..n).map(|i| {
            (
                slots.sent[i].load(Ordering::Relaxed),
                recorder.arrived[i].load(Ordering::Relaxed),
                slots.replied[i].load(Ordering::Relaxed),
            )
        }),
        delivered,
    );
    Ok(LoginResult {
        latency: st.arrival,
        reply_latency: st.answer,
        logins_per_s: st.per_s,
    })
}

async fn closed_loop(
    target: SocketAddr,
    k: usize,
    prepared: &Arc<Vec<Prepared>>,
    recorder: &Arc<Recorder>,
    slots: &Arc<Slots>,
    keys: &Arc<Keys>,
    mode: LoginMode,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..k.clamp(1, prepared.len().max(1)) {
        let (next, prepared, recorder, slots, keys) = (
            next.clone(),
            prepared.clone(),
            recorder.clone(),
            slots.clone(),
            keys.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Conn::new(target);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = prepared.get(i) else { break };
                send_one(&mut conn, i, req, &recorder, &slots, &keys, mode).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn paced(
    target: SocketAddr,
    rate: f64,
    prepared: &Arc<Vec<Prepared>>,
    recorder: &Arc<Recorder>,
    slots: &Arc<Slots>,
    keys: &Arc<Keys>,
    mode: LoginMode,
) {
    let pool: Arc<Mutex<Vec<http::Conn>>> = Arc::new(Mutex::new(
        (0..PACED_POOL).map(|_| http::Conn::new(target)).collect(),
    ));
    let permits = Arc::new(Semaphore::new(PACED_POOL));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(prepared.len());
    for i in 0..prepared.len() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let (pool, permits, prepared, recorder, slots, keys) = (
            pool.clone(),
            permits.clone(),
            prepared.clone(),
            recorder.clone(),
            slots.clone(),
            keys.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let mut conn = pool
                .lock()
                .await
                .pop()
                .unwrap_or_else(|| http::Conn::new(target));
            send_one(&mut conn, i, &prepared[i], &recorder, &slots, &keys, mode).await;
            pool.lock().await.push(conn);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::wechat::xml::Message;

    #[test]
    fn prepared_callbacks_verify_and_decrypt() {
        let keys = Keys::random().unwrap();
        let p = prepare(&keys, LoginMode::Plain, "o1", 42, "t+/=", 7);
        let q = url::Url::parse(&format!("http://x{}", p.path)).unwrap();
        let get = |k: &str| {
            q.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        assert!(protocol::wechat::signature::verify(
            TOKEN,
            &get("timestamp"),
            &get("nonce"),
            &get("signature")
        ));
        let m = Message::parse(&p.body).unwrap();
        assert_eq!(m.qr_scan().unwrap().scene, 42);

        let s = prepare(&keys, LoginMode::Safe, "o1", 42, "t+/=", 7);
        let q = url::Url::parse(&format!("http://x{}", s.path)).unwrap();
        let f = Fields::parse(&s.body).unwrap();
        let encrypt = f.get("Encrypt").unwrap();
        let msig = q
            .query_pairs()
            .find(|(n, _)| n == "msg_signature")
            .unwrap()
            .1
            .into_owned();
        let ts = q
            .query_pairs()
            .find(|(n, _)| n == "timestamp")
            .unwrap()
            .1
            .into_owned();
        let nonce = q
            .query_pairs()
            .find(|(n, _)| n == "nonce")
            .unwrap()
            .1
            .into_owned();
        assert_eq!(msg_signature(TOKEN, &ts, &nonce, encrypt), msig);
        let d = keys.aes.decrypt(encrypt).unwrap();
        assert_eq!(d.appid, APP_ID);
        let m = Message::parse(&d.message).unwrap();
        assert_eq!(m.qr_scan().unwrap().ticket.as_deref(), Some("t+/="));
    }

    #[test]
    fn replies_are_checked() {
        let keys = Keys::random().unwrap();
        let ok = protocol::wechat::reply::text_reply("o", "gh", 1, "Bob, login successful! 1st");
        assert!(reply_ok(&keys, LoginMode::Plain, ok.as_bytes()).is_ok());
        let no = protocol::wechat::reply::text_reply("o", "gh", 1, "please refresh");
        assert!(reply_ok(&keys, LoginMode::Plain, no.as_bytes()).is_err());
        let enc = keys.aes.encrypt(ok.as_bytes(), APP_ID, b"0123456789abcdef");
        let env = protocol::wechat::reply::encrypted_envelope(&enc, "sig", "1", "n");
        assert!(reply_ok(&keys, LoginMode::Safe, env.as_bytes()).is_ok());
    }
}
