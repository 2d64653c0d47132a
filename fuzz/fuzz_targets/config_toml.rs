//! Config layering: `daemon_kit::config::load_from` with a settings struct
//! of the daemons' shape (a string, a u32 with a default, a boolean flag, a
//! list) and the input as the TOML file given with `--config` (one temp
//! file per process, rewritten for every input: see `path`). Any `Err` is
//! fine; a panic is a bug. When it loads, each key the file sets is what
//! the setting holds (the file's value as `flag_value` reads it: scalars
//! as written, lists joined with `,`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{ArgAction, Parser};
use daemon_kit::config::{bool_flag, flag_value, load_from};
use libfuzzer_sys::fuzz_target;

#[derive(Parser, Debug)]
struct Settings {
    #[arg(long, env = "FUZZ_SCAN_LOGIN_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "FUZZ_SCAN_LOGIN_NAME", default_value = "gateway")]
    name: String,
    #[arg(long, env = "FUZZ_SCAN_LOGIN_RATE", default_value_t = 5)]
    rate: u32,
    #[arg(long, env = "FUZZ_SCAN_LOGIN_STRICT", action = ArgAction::SetTrue, value_parser = bool_flag())]
    strict: bool,
    #[arg(long, env = "FUZZ_SCAN_LOGIN_PROXY", value_delimiter = ',')]
    proxy: Vec<String>,
}

/// The file, in `$FUZZ_CONFIG_DIR` (scripts/fuzz.sh sets it), else in
/// /dev/shm where there is one (a write per input to a disk-backed /tmp
/// costs five times the executions per second), else in the temp dir.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::var_os("FUZZ_CONFIG_DIR")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|d| d.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        dir.join(format!(
            "scan-login-fuzz-config-{}.toml",
            std::process::id()
        ))
    })
}

fn boolish(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Some(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write the temp config file");
    let args = [
        "fuzz".into(),
        "--config".into(),
        path.clone().into_os_string(),
    ];
    let Ok(s) = load_from::<Settings, _>(args, |_| None) else {
        return;
    };
    // It loaded, so the file is UTF-8 TOML with only known keys.
    let text = std::str::from_utf8(data).expect("a loaded file is UTF-8");
    let table: toml::Table = text.parse().expect("a loaded file is TOML");
    for (key, value) in &table {
        let v = flag_value(value).expect("a loaded key has a flag value");
        match key.as_str() {
            "name" => assert_eq!(s.name, v, "name"),
            "rate" => assert_eq!(
                v.parse::<i64>().ok(),
                Some(i64::from(s.rate)),
                "rate from {v:?}"
            ),
            "strict" => assert_eq!(Some(s.strict), boolish(&v), "strict from {v:?}"),
            "proxy" if v.is_empty() => assert!(
                s.proxy.is_empty() || s.proxy == [""],
                "proxy from an empty value: {:?}",
                s.proxy
            ),
            "proxy" => assert_eq!(s.proxy, v.split(',').collect::<Vec<_>>(), "proxy"),
            other => panic!("loaded with the key {other:?}"),
        }
    }
});
