//! Start-up against the (simulated) WeChat API: wrong credentials end the
//! process at once, saying what to fix; a passing fault holds `/healthz`
//! at 503 with the reason until a token is had.

use std::time::Duration;

use e2e::Daemon;

use crate::stack::{APPID, SECRET, TOKEN, start_sim};

/// A simulator with the stack's credentials, and its URL.
async fn sim() -> (Daemon, String) {
    let port = e2e::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let d = start_sim(&format!("127.0.0.1:{port}"), &[]).await;
    (d, url)
}

fn gateway(sim: &str, app_id: &str, secret: &str) -> Daemon {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--notify-listen",
        "127.0.0.1:0",
        "--app-id",
        app_id,
        "--wechat-api-base",
        sim,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Daemon::spawn(
        &e2e::bin_path("ws-gateway"),
        &args,
        &[("WECHAT_APP_SECRET", secret)],
    )
}

fn callback(sim: &str, app_id: &str, secret: &str, port: u16) -> Daemon {
    let db = e2e::process::temp_dir("startup").join("x.db");
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--app-id",
        app_id,
        "--wechat-api-base",
        sim,
        "--db",
        db.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Daemon::spawn(
        &e2e::bin_path("wechat-callback"),
        &args,
        &[("WECHAT_APP_SECRET", secret), ("WECHAT_TOKEN", TOKEN)],
    )
}

async fn fault(sim: &str, body: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{sim}/sim/faults"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// Each credential error, on each daemon: non-zero exit within seconds,
/// the errcode and what to do about it on stderr.
#[tokio::test]
async fn wrong_credentials_stop_both_daemons_with_the_fix() {
    let (_sim, url) = sim().await;
    let cases = [
        (APPID, "not-the-secret", "40125", "AppSecret"),
        ("wxnotthisaccount", SECRET, "40013", "AppID"),
    ];
    for (app_id, secret, code, fix) in cases {
        for mut daemon in [
            gateway(&url, app_id, secret),
            callback(&url, app_id, secret, 0),
        ] {
            let status = daemon.wait(Duration::from_secs(20));
            let err = daemon.stderr();
            assert!(
                !status.success(),
                "{} started with bad credentials",
                daemon.name
            );
            assert!(
                err.contains(code) && err.contains(fix),
                "{}:\n{err}",
                daemon.name
            );
        }
    }
    // An address off the IP whitelist (40164), as WeChat answers it.
    for start in [gateway, |u: &str, a: &str, s: &str| callback(u, a, s, 0)] {
        fault(
            &url,
            serde_json::json!({"fail_next": 100, "errcode": 40164, "path": "/cgi-bin/stable_token"}),
        )
        .await;
        let mut daemon = start(&url, APPID, SECRET);
        let status = daemon.wait(Duration::from_secs(20));
        let err = daemon.stderr();
        assert!(!status.success(), "{err}");
        assert!(
            err.contains("40164") && err.contains("IP whitelist"),
            "{err}"
        );
    }
    fault(&url, serde_json::json!({"fail_next": 0})).await;
}

/// A passing fault (WeChat's -1) does not stop the start: `/healthz` says
/// 503 and why, then 200 once a token is had, without a restart.
#[tokio::test]
async fn a_passing_fault_holds_healthz_at_503_until_a_token_is_had() {
    let (_sim, url) = sim().await;
    fault(
        &url,
        serde_json::json!({"fail_next": 2, "errcode": -1, "path": "/cgi-bin/stable_token"}),
    )
    .await;
    let port = e2e::free_port();
    let mut cb = callback(&url, APPID, SECRET, port);
    let http = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    let mut saw_503 = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy:\n{}",
            cb.stderr()
        );
        if let Some(status) = cb.try_wait() {
            panic!("callback exited ({status}):\n{}", cb.stderr());
        }
        if let Ok(r) = http.get(&health).send().await {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            match status {
                503 => saw_503 = Some(body),
                200 => break,
                other => panic!("unexpected {other}: {body}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = saw_503.expect("/healthz was 503 while no token could be had");
    assert!(reason.contains("access token"), "{reason}");
}

/// The three daemons share one lifecycle: the same exit codes and shape
/// for a mistake, `--check-config` without side effects, `--log-format
/// json`, and mistakes named where they were made.
#[tokio::test]
async fn one_lifecycle_for_every_daemon() {
    use e2e::process::run_to_end;
    let dir = e2e::process::temp_dir("lifecycle");
    let db = dir.join("never-created.db");
    let (_sim, url) = sim().await;
    let valid: [(&str, Vec<String>); 3] = [
        (
            "ws-gateway",
            vec![
                "--app-id".into(),
                APPID.into(),
                "--app-secret".into(),
                SECRET.into(),
                "--wechat-api-base".into(),
                url.clone(),
            ],
        ),
        (
            "wechat-callback",
            vec![
                "--token".into(),
                TOKEN.into(),
                "--db".into(),
                db.display().to_string(),
            ],
        ),
        (
            "wechat-sim",
            vec![
                "--app-id".into(),
                APPID.into(),
                "--app-secret".into(),
                SECRET.into(),
                "--token".into(),
                TOKEN.into(),
            ],
        ),
    ];
    for (bin, args) in &valid {
        let path = e2e::bin_path(bin);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // --check-config: exit 0, the same first line, settings with
        // secrets shown only as set.
        let mut check = args.clone();
        check.push("--check-config");
        let (status, out, err) = run_to_end(&path, &check, &[]);
        assert!(status.success(), "{bin}: {err}");
        assert!(
            out.starts_with(&format!("# {bin}: configuration ok\n")),
            "{bin}: {out}"
        );
        assert!(
            !out.contains(SECRET) && !out.contains(TOKEN),
            "{bin}: {out}"
        );
        // A missing required setting: exit 2, `error: ...`, all of them.
        let (status, _, err) = run_to_end(&path, &["--check-config"], &[]);
        assert_eq!(status.code(), Some(2), "{bin}: {err}");
        assert!(err.starts_with("error: "), "{bin}: {err}");
        // A bad value in the file is named by key and file.
        let file = dir.join(format!("{bin}.toml"));
        std::fs::write(&file, "max_connections = -1\n").unwrap();
        let mut with_file = args.clone();
        let file_arg = file.display().to_string();
        with_file.extend(["--config", &file_arg]);
        let (status, _, err) = run_to_end(&path, &with_file, &[]);
        assert_eq!(status.code(), Some(2), "{bin}: {err}");
        assert!(
            err.contains("key `max_connections` in") && err.contains(&file_arg),
            "{bin}: {err}"
        );
        // A number written as a string, and check_config as a key or env.
        std::fs::write(&file, "max_connections = \"5\"\n").unwrap();
        let (status, _, err) = run_to_end(&path, &with_file, &[]);
        assert_eq!(status.code(), Some(2), "{bin}: {err}");
        assert!(err.contains("must be a number"), "{bin}: {err}");
        std::fs::write(&file, "check_config = true\n").unwrap();
        let (status, _, err) = run_to_end(&path, &with_file, &[]);
        assert_eq!(status.code(), Some(2), "{bin}: {err}");
        assert!(err.contains("action"), "{bin}: {err}");
        let (status, _, err) = run_to_end(&path, &args, &[("SCAN_LOGIN_CHECK_CONFIG", "true")]);
        assert_eq!(status.code(), Some(2), "{bin}: {err}");
    }
    assert!(!db.exists(), "--check-config created the database");

    // --log-format json: every line one JSON object; under systemd
    // (JOURNAL_STREAM) without the timestamp the journal adds itself.
    for journal in [false, true] {
        let port = e2e::free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = valid[1].1.clone();
        args.extend([
            "--listen".into(),
            listen.clone(),
            "--log-format".into(),
            "json".into(),
        ]);
        let mut env = vec![];
        if journal {
            env.push(("JOURNAL_STREAM", "8:12345"));
        }
        let mut cb = Daemon::spawn(&e2e::bin_path("wechat-callback"), &args, &env);
        cb.wait_healthy(&format!("http://{listen}/healthz")).await;
        assert!(cb.terminate().success());
        let log = cb.stderr();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let listening = lines
            .iter()
            .find(|l| l["fields"]["message"] == "wechat-callback listening")
            .unwrap_or_else(|| panic!("no start line:\n{log}"));
        assert_eq!(listening["level"], "INFO");
        assert_eq!(listening["fields"]["listen"], listen);
        assert!(listening["fields"]["version"].is_string(), "{listening}");
        assert_eq!(
            listening.get("timestamp").is_some(),
            !journal,
            "{listening}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A host booting before its database: the callback waits for an
/// unreachable PostgreSQL (and `--check-config` only warns about it), then
/// serves once the server is up. A wrong password is not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_waits_for_a_database_that_is_still_starting() {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = e2e::postgres::Cluster::start("127.0.0.1", false);
        c.psql("postgres", "CREATE ROLE cb LOGIN PASSWORD 'right-password'");
        c.psql("postgres", "CREATE DATABASE cbdb OWNER cb");
        c.stop();
        c.hba_first("host cbdb cb all scram-sha-256");
        c
    })
    .await
    .unwrap();
    let pg_port = cluster.port;
    let url = |pw: &str| format!("postgres://cb:{pw}@127.0.0.1:{pg_port}/cbdb?sslmode=disable");
    let env = [("WECHAT_TOKEN", TOKEN)];
    let bin = e2e::bin_path("wechat-callback");
    // --check-config: a valid URL to a server that is down is a warning.
    let good = url("right-password");
    let (status, _, err) = e2e::process::run_to_end(&bin, &["--db", &good, "--check-config"], &env);
    assert!(status.success(), "{err}");
    assert!(err.contains("cannot be reached now"), "{err}");
    assert!(
        !err.contains("right-password"),
        "the password stays out: {err}"
    );
    let (status, _, err) = e2e::process::run_to_end(
        &bin,
        &["--db", "postgres://cb@h/d?sslmode=nope", "--check-config"],
        &env,
    );
    assert_eq!(status.code(), Some(2), "{err}");

    let port = e2e::free_port();
    let args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--db".into(),
        good.clone(),
    ];
    let mut cb = Daemon::spawn(&bin, &args, &env);
    // It says it waits, and does (wait_for_log fails if it exits).
    cb.wait_for_log(Duration::from_secs(20), |log| {
        log.contains("database unreachable; waiting for it")
            .then_some(())
    })
    .await;
    assert!(cb.try_wait().is_none(), "still waiting:\n{}", cb.stderr());
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.run();
        cluster
    })
    .await
    .unwrap();
    cb.wait_healthy(&format!("http://127.0.0.1:{port}/healthz"))
        .await;
    assert!(!cb.stderr().contains("right-password"), "{}", cb.stderr());
    cb.terminate();

    // The URL, password included, as a systemd credential (`db`).
    let creds = e2e::process::temp_dir("db-credential");
    std::fs::write(creds.join("db"), format!("{good}\n")).unwrap();
    let port = e2e::free_port();
    let args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
    let creds_dir = creds.display().to_string();
    let mut cb = Daemon::spawn(
        &bin,
        &args,
        &[
            ("WECHAT_TOKEN", TOKEN),
            ("CREDENTIALS_DIRECTORY", &creds_dir),
        ],
    );
    cb.wait_healthy(&format!("http://127.0.0.1:{port}/healthz"))
        .await;
    assert!(
        cb.stderr().contains("store=\"postgres\""),
        "{}",
        cb.stderr()
    );
    assert!(!cb.stderr().contains("right-password"), "{}", cb.stderr());
    cb.terminate();

    // A wrong password ends the start at once.
    let args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{}", e2e::free_port()),
        "--db".into(),
        url("wrong-password"),
    ];
    let mut cb = Daemon::spawn(&bin, &args, &env);
    let status = cb.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{}", cb.stderr());
    assert!(cb.stderr().contains("password"), "{}", cb.stderr());
    drop(cluster);
}
