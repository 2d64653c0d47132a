//! More than one host, for real: network namespaces made by the test (a
//! bridge, one veth pair per "host"), two gateway nodes, three callback
//! instances on two hosts, PostgreSQL on a third host (set up with
//! deploy/postgres/scan-login.sql, so the callbacks run as its
//! least-privilege role), the simulator in front as WeChat with its
//! deliveries and retries spread over the three callback URLs.
//!
//! Logins go through both gateways; then a burst of scans during which one
//! callback host is killed (SIGKILL): every page still gets its own user's
//! login and every login is counted exactly once in PostgreSQL.
//!
//! Without the rights to make namespaces, the "hosts" become distinct
//! loopback addresses in one namespace, and the test says so.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use e2e::Daemon;
use e2e::postgres::Cluster;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::stack::{APPID, Browser, JWT_SECRET, SECRET, TOKEN, fd_of, s, sim_post, start_sim};

const BUS_SECRET: &str = "multi-host-bus-secret-0123456789abcdef";
const DB_PASSWORD: &str = "multihostdbpassword0123";
const GATEWAY_PORT: u16 = 8080;
const BUS_PORT: u16 = 9999;

/// One "host": a namespace (or none, in the fallback) and its address.
struct Host {
    ns: Option<String>,
    ip: String,
}

impl Host {
    /// Starts `bin` on this host.
    fn spawn(&self, bin: &str, args: &[String], env: &[(&str, &str)]) -> Daemon {
        let path = e2e::bin_path(bin);
        match &self.ns {
            Some(ns) => {
                let mut all = vec!["netns".to_string(), "exec".into(), ns.clone()];
                all.push(path.display().to_string());
                all.extend(args.iter().cloned());
                Daemon::spawn(std::path::Path::new("ip"), &all, env)
            }
            None => Daemon::spawn(&path, args, env),
        }
    }
}

/// The namespaces and bridge, removed on drop.
struct Net {
    hosts: Vec<Host>,
    /// Our side's address on the bridge (where the simulator listens).
    gateway_ip: String,
    cleanup: Vec<Vec<String>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// `n` hosts on a fresh /24 behind a bridge, or the loopback fallback.
    fn make(n: usize) -> Net {
        let tag = format!("{:04x}", rand::random::<u16>());
        let subnet = format!("10.231.{}", rand::random::<u8>());
        let mut net = Net {
            hosts: Vec::new(),
            gateway_ip: format!("{subnet}.1"),
            cleanup: Vec::new(),
        };
        match net.namespaces(&tag, &subnet, n) {
            Ok(()) => {
                println!("multi-host: {n} network namespaces on {subnet}.0/24");
                net
            }
            Err(why) => {
                drop(net);
                println!(
                    "multi-host: network namespaces unavailable ({why}); \
                     FALLING BACK to distinct loopback addresses in one namespace"
                );
                let octet = 10 + rand::random::<u8>() % 200;
                Net {
                    hosts: (0..n)
                        .map(|i| Host {
                            ns: None,
                            ip: format!("127.{octet}.0.{}", 11 + i),
                        })
                        .collect(),
                    gateway_ip: format!("127.{octet}.0.1"),
                    cleanup: Vec::new(),
                }
            }
        }
    }

    fn namespaces(&mut self, tag: &str, subnet: &str, n: usize) -> Result<(), String> {
        let bridge = format!("wslbr{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.cleanup
            .push(vec!["link".into(), "del".into(), bridge.clone()]);
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = format!("wsl-{tag}-h{i}");
            let (outer, inner) = (format!("wsl{tag}{i}a"), format!("wsl{tag}{i}b"));
            ip(&["netns", "add", &ns])?;
            self.cleanup
                .push(vec!["netns".into(), "del".into(), ns.clone()]);
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            self.cleanup
                .push(vec!["link".into(), "del".into(), outer.clone()]);
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            let addr = format!("{subnet}.{}", 11 + i);
            for cmd in [
                vec!["addr", "add", &format!("{addr}/24"), "dev", &inner],
                vec!["link", "set", &inner, "up"],
                vec!["link", "set", "lo", "up"],
            ] {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend(cmd.iter().map(|s| &**s));
                ip(&all)?;
            }
            self.hosts.push(Host {
                ns: Some(ns),
                ip: addr,
            });
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for args in self.cleanup.iter().rev() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = ip(&args);
        }
    }
}

/// Browsers on a gateway, each with the openid that will scan it.
async fn open_pages(gateway: &str, n: usize, prefix: &str) -> Vec<(Browser, String)> {
    let mut pages = Vec::new();
    for i in 0..n {
        let b = Browser::connect_to(gateway, None).await;
        pages.push((b, format!("o-{prefix}-{i}")));
    }
    pages
}

/// Every page gets `scan_success` for its own openid.
async fn expect_logins(pages: &mut [(Browser, String)]) {
    for (b, openid) in pages.iter_mut() {
        let f = b.wait_for("scan_success", Duration::from_secs(40)).await;
        assert_eq!(f["openid"], openid.as_str(), "{f}");
    }
}

/// Scans every page at once through the simulator; returns its answers.
async fn scan_all(http: &reqwest::Client, sim: &str, pages: &[(Browser, String)]) -> Vec<Value> {
    join_all(pages.iter().map(|(b, openid)| {
        let body = json!({"ticket": b.ticket, "openid": openid, "subscribed": true});
        let url = format!("{sim}/sim/scan");
        async move { sim_post(http, &url, &body).await }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_three_callbacks_postgres_and_a_callback_host_killed() {
    let net = Net::make(3);
    let (h1, h2, dbh) = (&net.hosts[0], &net.hosts[1], &net.hosts[2]);

    // PostgreSQL on the third host, set up by the deploy script.
    let (ns, listen) = (dbh.ns.clone(), dbh.ip.clone());
    let pg = tokio::task::spawn_blocking(move || Cluster::start_in(ns.as_deref(), &listen, false))
        .await
        .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/postgres/scan-login.sql"
    );
    pg.psql_with(
        "postgres",
        &["-v", &format!("password={DB_PASSWORD}"), "-f", script],
    );
    let db_url = format!(
        "postgres://scan_login:{DB_PASSWORD}@{}:{}/scan_login?sslmode=disable",
        pg.host, pg.port
    );

    // The simulator (WeChat), on our side of the bridge.
    let sim_port = e2e::free_port();
    let sim_url = format!("http://{}:{sim_port}", net.gateway_ip);
    let callbacks = [(h1, 8081u16), (h1, 8082), (h2, 8081)];
    let callback_urls: Vec<String> = callbacks
        .iter()
        .map(|(h, p)| format!("http://{}:{p}/wechat", h.ip))
        .collect();
    let mut sim = start_sim(
        &format!("{}:{sim_port}", net.gateway_ip),
        &[s("--callback-url"), callback_urls.join(",")],
    )
    .await;

    // A gateway node on each app host.
    let mut gateways = Vec::new();
    for (node, h) in [h1, h2].into_iter().enumerate() {
        let mut gw = h.spawn(
            "ws-gateway",
            &[
                s("--listen"),
                format!("{}:{GATEWAY_PORT}", h.ip),
                s("--notify-listen"),
                format!("{}:{BUS_PORT}", h.ip),
                s("--node-id"),
                node.to_string(),
                s("--notify-require-ticket"),
                s("--app-id"),
                s(APPID),
                s("--wechat-api-base"),
                sim_url.clone(),
            ],
            &[("WECHAT_APP_SECRET", SECRET), ("NOTIFY_SECRET", BUS_SECRET)],
        );
        gw.wait_healthy(&format!("http://{}:{GATEWAY_PORT}/healthz", h.ip))
            .await;
        gateways.push(gw);
    }

    // Three callback instances on the two app hosts, one database.
    let notify = format!("0={}:{BUS_PORT},1={}:{BUS_PORT}", h1.ip, h2.ip);
    let mut cbs = Vec::new();
    for (h, port) in callbacks {
        let mut cb = h.spawn(
            "wechat-callback",
            &[
                s("--listen"),
                format!("{}:{port}", h.ip),
                s("--app-id"),
                s(APPID),
                s("--wechat-api-base"),
                sim_url.clone(),
                s("--notify-addr"),
                notify.clone(),
                s("--message-mode"),
                s("plain"),
            ],
            &[
                ("WECHAT_TOKEN", TOKEN),
                ("WECHAT_APP_SECRET", SECRET),
                ("NOTIFY_SECRET", BUS_SECRET),
                ("LOGIN_TOKEN_SECRET", JWT_SECRET),
                ("SCAN_LOGIN_DB", &db_url),
            ],
        );
        cb.wait_healthy(&format!("http://{}:{port}/healthz", h.ip))
            .await;
        cbs.push(cb);
    }
    let http = reqwest::Client::new();
    let gw = |h: &Host| format!("{}:{GATEWAY_PORT}", h.ip);

    // Logins through both gateways; each fd names its node.
    let mut pages = open_pages(&gw(h1), 6, "a").await;
    pages.extend(open_pages(&gw(h2), 6, "b").await);
    for (i, (b, _)) in pages.iter().enumerate() {
        let fd = u64::from(fd_of(&http, &sim_url, &b.ticket).await);
        assert_eq!(
            fd >> 27,
            (i / 6) as u64,
            "page {i} fd {fd} is on its gateway's node"
        );
    }
    let answers = scan_all(&http, &sim_url, &pages).await;
    for a in &answers {
        assert_eq!(a["http_status"], 200, "{a}");
    }
    expect_logins(&mut pages).await;

    // A burst, and the second app host's callback dies in the middle of it.
    let mut burst = open_pages(&gw(h1), 12, "c").await;
    burst.extend(open_pages(&gw(h2), 12, "d").await);
    let victim = cbs[2].pid();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status();
    });
    let answers = scan_all(&http, &sim_url, &burst).await;
    killer.await.unwrap();
    assert!(cbs[2].try_wait().is_some(), "the killed callback is gone");
    expect_logins(&mut burst).await;
    let retried = answers
        .iter()
        .filter(|a| a["attempts"].as_u64().unwrap_or(0) > 1)
        .count();
    println!(
        "burst: {} scans, {retried} delivered after a retry",
        answers.len()
    );
    // A third of the deliveries start at the killed instance.
    assert!(
        retried > 0,
        "some deliveries were retried elsewhere: {answers:?}"
    );

    // Exactly once, per user, in PostgreSQL.
    let rows = pg.psql(
        "scan_login",
        "SELECT openid || '=' || login_count FROM scan_login.users ORDER BY openid",
    );
    let counts: HashMap<&str, &str> = rows.lines().filter_map(|l| l.split_once('=')).collect();
    for (_, openid) in pages.iter().chain(burst.iter()) {
        assert_eq!(
            counts.get(openid.as_str()).copied(),
            Some("1"),
            "{openid} counted once: {rows}"
        );
    }
    assert_eq!(counts.len(), pages.len() + burst.len(), "{rows}");

    for mut cb in cbs {
        cb.kill();
    }
    for mut g in gateways {
        g.kill();
    }
    sim.kill();
    drop(pg);
    drop(net);
}
