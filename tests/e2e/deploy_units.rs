//! The daemons started exactly as `deploy/`'s systemd units start them: the
//! units' `ExecStartPre=`/`ExecStart=` lines and the shipped example
//! configs, with secrets from `$CREDENTIALS_DIRECTORY` named by their
//! `LoadCredential=` lines. Only the filesystem roots (`/usr/local/bin`,
//! `/etc/wechat-scan-login`, `/var/lib/wechat-scan-login`) are mapped into
//! a scratch directory, and the settings an operator must add (app id, API
//! base, ports) are appended to the config files as an operator would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::Daemon;
use e2e::process::{run_to_end, temp_dir};
use e2e::wechat::{now, post_safe, reply_content, scan_event};
use protocol::wechat::crypto::AesKey;

use crate::stack::{AES_KEY, APPID, Browser, SECRET, TOKEN, fd_of, start_sim};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// `(ExecStartPre, ExecStart, credential names)` of a unit file.
fn unit(name: &str) -> (String, String, Vec<String>) {
    let text = std::fs::read_to_string(Path::new(UNITS).join(name)).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{name} has no {key}"))
            .to_string()
    };
    let creds = text
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|c| c.split(':').next().unwrap().to_string())
        .collect();
    (value("ExecStartPre="), value("ExecStart="), creds)
}

/// Maps a unit's command line into the scratch root; returns (program, args).
fn command(line: &str, root: &Path, instance: &str) -> (PathBuf, Vec<String>) {
    let mapped = line.replace("%i", instance).replace(
        "/etc/wechat-scan-login/",
        &format!("{}/etc/", root.display()),
    );
    let mut words = mapped.split_whitespace().map(str::to_string);
    let program = words.next().unwrap();
    let bin = program
        .strip_prefix("/usr/local/bin/")
        .expect("units run /usr/local/bin binaries");
    (e2e::bin_path(bin), words.collect())
}

#[tokio::test]
async fn units_exec_lines_and_example_configs_log_users_in() {
    let root = temp_dir("units");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("state")).unwrap();
    let (sim_port, gw_port, notify_port) = (e2e::free_port(), e2e::free_port(), e2e::free_port());
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let state = format!("{}/state/", root.display());

    // The shipped example configs plus what an operator fills in.
    let example =
        |name: &str| std::fs::read_to_string(Path::new(UNITS).join("config").join(name)).unwrap();
    let gateway_toml = format!(
        "{}\napp_id = \"{APPID}\"\nwechat_api_base = \"{sim_url}\"\nqrcode_image_base = \"{sim_url}/cgi-bin/showqrcode?ticket=\"\nlisten = \"127.0.0.1:{gw_port}\"\nnotify_listen = \"127.0.0.1:{notify_port}\"\n",
        example("gateway.toml")
    );
    let callback_toml = format!(
        "{}\napp_id = \"{APPID}\"\nwechat_api_base = \"{sim_url}\"\nnotify_addr = \"127.0.0.1:{notify_port}\"\n",
        example("callback.toml").replace("/var/lib/wechat-scan-login/", &state)
    );
    std::fs::write(root.join("etc/gateway.toml"), gateway_toml).unwrap();
    std::fs::write(root.join("etc/callback.toml"), callback_toml).unwrap();

    // Credentials, as LoadCredential= provides them.
    let creds = root.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let values = [
        ("token", TOKEN),
        ("encoding_aes_key", AES_KEY),
        ("app_secret", SECRET),
        ("notify_secret", "units-notify-secret-0123456789abcdef"),
        ("login_token_secret", "units-jwt-secret-0123456789abcdef012"),
    ];
    let (gw_pre, gw_start, gw_creds) = unit("ws-gateway.service");
    let (cb_pre, cb_start, cb_creds) = unit("wechat-callback@.service");
    for name in gw_creds.iter().chain(&cb_creds) {
        let value = values
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("unknown credential {name}"))
            .1;
        std::fs::write(creds.join(name), format!("{value}\n")).unwrap();
    }
    let env = [("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())];

    let _sim = start_sim(&format!("127.0.0.1:{sim_port}"), &[]).await;

    // ExecStartPre= must accept the configuration, then ExecStart= runs.
    let (program, args) = command(&gw_pre, &root, "");
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out, err) = run_to_end(&program, &args_ref, &env);
    assert!(status.success(), "gateway ExecStartPre failed: {out}{err}");
    let (program, args) = command(&gw_start, &root, "");
    let mut gateway = Daemon::spawn(&program, &args, &env);
    gateway
        .wait_healthy(&format!("http://127.0.0.1:{gw_port}/healthz"))
        .await;

    let mut instances = Vec::new();
    for _ in 0..2 {
        let port = e2e::free_port().to_string();
        let (program, args) = command(&cb_pre, &root, &port);
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, out, err) = run_to_end(&program, &args_ref, &env);
        assert!(status.success(), "callback ExecStartPre failed: {out}{err}");
        let (program, args) = command(&cb_start, &root, &port);
        let mut d = Daemon::spawn(&program, &args, &env);
        d.wait_healthy(&format!("http://127.0.0.1:{port}/healthz"))
            .await;
        instances.push((port, d));
    }

    // A login through each instance, as the load balancer would send it; the
    // second counts on the shared database.
    let http = reqwest::Client::new();
    let openid = "oUnits00000000000000000Un01";
    for (i, (port, _)) in instances.iter().enumerate() {
        let mut browser = Browser::connect(gw_port).await;
        let ticket = browser.ticket.clone();
        let fd = fd_of(&http, &sim_url, &ticket).await;
        let body = scan_event(openid, fd, &ticket, i > 0, now() + i as i64);
        // The credentials hold an EncodingAESKey, so the callback runs in
        // safe mode, as the console's 安全 setting has WeChat post.
        let key = AesKey::from_encoding_aes_key(AES_KEY).unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let raw = post_safe(&http, &base, TOKEN, &key, APPID, &body).await;
        let reply = reply_content(&raw).unwrap_or(raw);
        let ordinal = if i == 0 { "1st" } else { "2nd" };
        assert_eq!(
            reply,
            format!("WeChat user Un01, login successful! This is your {ordinal} login.")
        );
        let ok = browser
            .wait_for("scan_success", Duration::from_secs(10))
            .await;
        assert_eq!(ok["openid"], openid);
        assert!(
            ok["token"]
                .as_str()
                .is_some_and(|t| t.split('.').count() == 3),
            "a JWT: {ok}"
        );
    }
    for (_, d) in instances.iter_mut() {
        assert!(d.terminate().success());
    }
    assert!(gateway.terminate().success());
}
