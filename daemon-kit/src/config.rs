//! Layered configuration: command-line flag > environment variable >
//! systemd credential > TOML file (`--config FILE`, or `SCAN_LOGIN_CONFIG`)
//! > built-in default.
//!
//! Each daemon declares its settings once, as a clap `Parser` with
//! `env = "..."` on every flag. [`load`] reads the TOML file and turns each
//! key into that flag's default, so clap's own precedence does the rest and
//! `--help` stays the single list of settings. An unknown key in the file is
//! an error (a typo must not be silently ignored).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

/// Names of settings that may come from `$CREDENTIALS_DIRECTORY/<name>`
/// (systemd `LoadCredential=`): the secrets, and the callback's `db` (a
/// PostgreSQL URL carries its password).
pub const CREDENTIAL_NAMES: [&str; 7] = [
    "db",
    "app_secret",
    "token",
    "encoding_aes_key",
    "encoding_aes_key_previous",
    "notify_secret",
    "login_token_secret",
];

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "SCAN_LOGIN_CONFIG";

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("config file {path}: unknown key `{key}` (see --help for the settings)")]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: key `{key}` must be a string, number, boolean or list")]
    BadValue { path: PathBuf, key: String },
    #[error("config file {path}: key `{key}` must be a number, not the string {value:?}")]
    NotANumber {
        path: PathBuf,
        key: String,
        value: String,
    },
    #[error(
        "{origin} sets `check_config`, which is an action, not a setting: pass --check-config on the command line"
    )]
    ActionAsSetting { origin: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("cannot read credential {path}: {source}")]
    Credential {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

impl ConfigError {
    /// Prints the error the way clap does (help and version go to stdout
    /// with exit 0) and exits.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Clap(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses the process's arguments with the layering described above.
pub fn load<T: Parser>() -> Result<T, ConfigError> {
    load_from(std::env::args_os(), |k| std::env::var_os(k))
}

/// [`load`] over given arguments and environment (for tests).
pub fn load_from<T, I>(args: I, env: impl Fn(&str) -> Option<OsString>) -> Result<T, ConfigError>
where
    T: Parser,
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = T::command();
    let known: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();

    if env(CHECK_CONFIG_ENV).is_some() {
        return Err(ConfigError::ActionAsSetting {
            origin: format!("the environment variable {CHECK_CONFIG_ENV}"),
        });
    }
    // Where each value that is not a flag came from, to name it in errors.
    let mut sources: Vec<(String, String)> = Vec::new();
    if let Some(path) = config_path(&args).or_else(|| env(CONFIG_ENV).map(PathBuf::from)) {
        for (key, value, is_string) in read_toml(&path)? {
            if key == "check_config" {
                return Err(ConfigError::ActionAsSetting {
                    origin: format!("config file {}", path.display()),
                });
            }
            if key == "config" || !known.contains(&key) {
                return Err(ConfigError::UnknownKey { path, key });
            }
            let numeric = cmd
                .get_arguments()
                .find(|a| a.get_id() == key.as_str())
                .and_then(|a| a.get_default_values().first())
                .is_some_and(|d| d.to_string_lossy().parse::<f64>().is_ok());
            if numeric && is_string {
                return Err(ConfigError::NotANumber { path, key, value });
            }
            sources.push((key.clone(), format!("key `{key}` in {}", path.display())));
            // A value from the file may be a secret: never show it in --help.
            cmd = cmd.mut_arg(key.as_str(), |a| hide_default(a.default_value(value)));
        }
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
        let dir = PathBuf::from(dir);
        for name in CREDENTIAL_NAMES {
            if !known.iter().any(|k| k == name) {
                continue;
            }
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\r', '\n']).to_string();
                    sources.retain(|(k, _)| k != name);
                    sources.push((name.to_string(), format!("credential {}", path.display())));
                    cmd = cmd.mut_arg(name, |a| hide_default(a.default_value(v)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::Credential { path, source }),
            }
        }
    }
    let flags = cmd.clone();
    let matches = cmd
        .try_get_matches_from(&args)
        .map_err(|e| name_the_source(e, &flags, &args, &sources, &env))?;
    Ok(T::from_arg_matches(&matches)?)
}

/// A bad value that did not come from the command line is reported with
/// where it came from (`key listen in /etc/…/gateway.toml`, an environment
/// variable, a credential file), not as the flag the user never typed.
fn name_the_source(
    e: clap::Error,
    cmd: &clap::Command,
    args: &[OsString],
    sources: &[(String, String)],
    env: &impl Fn(&str) -> Option<OsString>,
) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return ConfigError::Clap(e);
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return ConfigError::Clap(e);
    };
    let Some(long) = arg
        .strip_prefix("--")
        .and_then(|a| a.split([' ', '=', '<']).next())
    else {
        return ConfigError::Clap(e);
    };
    let on_command_line = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    if on_command_line {
        return ConfigError::Clap(e);
    }
    let key = long.replace('-', "_");
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => format!(" {v:?}"),
        _ => String::new(),
    };
    let why = e
        .to_string()
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .and_then(|l| l.split_once(": ").map(|(_, why)| why.to_string()))
        .unwrap_or_default();
    let env_var = cmd
        .get_arguments()
        .find(|a| a.get_id() == key.as_str())
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned());
    let origin = match env_var.filter(|v| env(v).is_some()) {
        Some(var) => format!("the environment variable {var}"),
        None => match sources.iter().find(|(k, _)| *k == key) {
            Some((_, s)) => s.clone(),
            None => return ConfigError::Clap(e),
        },
    };
    let message = if why.is_empty() {
        format!("invalid value{value}")
    } else {
        format!("invalid value{value}: {why}")
    };
    ConfigError::Invalid { origin, message }
}

/// `--check-config`'s environment variable: an action, refused as a setting.
pub const CHECK_CONFIG_ENV: &str = "SCAN_LOGIN_CHECK_CONFIG";

/// Keeps a default that came from a file out of `--help` (it may be a
/// secret). Bare boolean flags show no default anyway.
fn hide_default(arg: clap::Arg) -> clap::Arg {
    if arg.get_action().takes_values() {
        arg.hide_default_value(true)
    } else {
        arg
    }
}

/// Finds `--config FILE` or `--config=FILE` among the arguments.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Reads the TOML file into (key, flag value, was a TOML string) triples.
fn read_toml(path: &Path) -> Result<Vec<(String, String, bool)>, ConfigError> {
    use std::io::Read;
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let flag_value = flag_value(&value);
        let is_string = matches!(value, toml::Value::String(_));
        match flag_value {
            Some(v) => out.push((key, v, is_string)),
            None => {
                return Err(ConfigError::BadValue {
                    path: path.to_path_buf(),
                    key,
                });
            }
        }
    }
    Ok(out)
}

/// A TOML value as the flag value it stands for: scalars as written, a
/// list of scalars joined with `,`; `None` for tables, dates and nested
/// lists (the file is refused).
pub fn flag_value(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        other => scalar(other),
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value parser every boolean flag uses: bare `--flag` on the command
/// line; `true`/`false`/`1`/`0` (and yes/no, on/off) in env and TOML.
pub fn bool_flag() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use clap::ArgAction;
    use std::collections::HashMap;

    #[derive(Parser, Debug)]
    struct Demo {
        #[arg(long, env = "SCAN_LOGIN_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "SCAN_LOGIN_LISTEN", default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long, env = "SCAN_LOGIN_RATE", default_value_t = 5)]
        rate: u32,
        #[arg(long, env = "SCAN_LOGIN_STRICT", action = ArgAction::SetTrue, value_parser = bool_flag())]
        strict: bool,
        #[arg(long, env = "WECHAT_TOKEN")]
        token: Option<Secret>,
        #[arg(long, env = "SCAN_LOGIN_PROXY", value_delimiter = ',')]
        proxy: Vec<String>,
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).map(OsString::from)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("daemon-kit-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mistakes_name_where_they_were_made() {
        let dir = tmpdir("mistakes");
        let load = |text: &str, env: &[(&str, &str)]| {
            let f = write(&dir, "m.toml", text);
            load_from::<Demo, _>(["x", "--config", f.to_str().unwrap()], env_of(env))
        };
        // A number written as a string.
        let e = load("rate = \"7\"\n", &[]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::NotANumber { key, .. } if key == "rate"),
            "{e}"
        );
        // A bad value from the file names the key and the file, not --rate.
        let e = load("rate = -3\n", &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("key `rate` in "), "{msg}");
        assert!(msg.contains("m.toml") && msg.contains("-3"), "{msg}");
        assert!(!msg.contains("--rate"), "{msg}");
        // The same value on the command line is the flag's error, as clap says.
        let e = load_from::<Demo, _>(["x", "--rate", "-3"], env_of(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Clap(_)));
        // --check-config is an action: not a key, not an env var.
        let e = load("check_config = true\n", &[]).unwrap_err();
        assert!(matches!(e, ConfigError::ActionAsSetting { .. }), "{e}");
        let e = load("", &[(CHECK_CONFIG_ENV, "1")]).unwrap_err();
        assert!(e.to_string().contains(CHECK_CONFIG_ENV), "{e}");
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tmpdir("layers");
        let f = write(
            &dir,
            "c.toml",
            "listen = \"file:1\"\nrate = 7\nstrict = true\nproxy = [\"10.0.0.0/8\", \"::1\"]\n",
        );
        let c: Demo = load_from(["x", "--config", f.to_str().unwrap()], env_of(&[])).unwrap();
        assert_eq!((c.listen.as_str(), c.rate, c.strict), ("file:1", 7, true));
        assert_eq!(c.proxy, vec!["10.0.0.0/8", "::1"]);

        // clap reads the flags' own env vars from the real environment, so
        // env precedence is tested on the spawned binaries; here: flag > file.
        let c: Demo = load_from(
            [
                "x".to_string(),
                format!("--config={}", f.display()),
                "--listen".into(),
                "flag:1".into(),
            ],
            env_of(&[]),
        )
        .unwrap();
        assert_eq!((c.listen.as_str(), c.rate, c.strict), ("flag:1", 7, true));

        let c: Demo = load_from(
            ["x", "--strict"],
            env_of(&[("SCAN_LOGIN_CONFIG", f.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!((c.listen.as_str(), c.rate, c.strict), ("file:1", 7, true));

        let c: Demo = load_from(["x"], env_of(&[])).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.rate, c.strict),
            ("127.0.0.1:1", 5, false)
        );
    }

    #[test]
    fn unknown_keys_and_bad_files_are_errors() {
        let dir = tmpdir("bad");
        let f = write(&dir, "typo.toml", "lisen = \"x\"\n");
        assert!(matches!(
            load_from::<Demo, _>(["x", "--config", f.to_str().unwrap()], env_of(&[])),
            Err(ConfigError::UnknownKey { .. })
        ));
        let f = write(&dir, "broken.toml", "listen = \n");
        assert!(matches!(
            load_from::<Demo, _>(["x", "--config", f.to_str().unwrap()], env_of(&[])),
            Err(ConfigError::Toml { .. })
        ));
        assert!(matches!(
            load_from::<Demo, _>(["x", "--config", "/nonexistent/x.toml"], env_of(&[])),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn values_from_files_never_show_in_help() {
        let dir = tmpdir("help");
        write(&dir, "token", "cred-secret-1\n");
        let f = write(&dir, "c.toml", "token = \"file-secret-2\"\n");
        for env in [
            vec![("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())],
            vec![("SCAN_LOGIN_CONFIG", f.to_str().unwrap())],
        ] {
            let err = load_from::<Demo, _>(["x", "--help"], env_of(&env)).unwrap_err();
            let ConfigError::Clap(e) = err else {
                panic!("expected help")
            };
            let help = e.to_string();
            assert!(help.contains("--token"));
            assert!(!help.contains("secret-"), "{help}");
        }
    }

    #[test]
    fn credentials_fill_secrets() {
        let dir = tmpdir("cred");
        write(&dir, "token", "from-credential\n");
        let c: Demo = load_from(
            ["x"],
            env_of(&[("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(c.token.unwrap().expose(), "from-credential");
        let c: Demo = load_from(
            ["x", "--token", "flag"],
            env_of(&[("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(c.token.unwrap().expose(), "flag");
    }
}
