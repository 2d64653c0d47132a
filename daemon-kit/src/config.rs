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
/// (systemd `LoadCredential=`).
pub const CREDENTIAL_NAMES: [&str; 6] = [
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

    if let Some(path) = config_path(&args).or_else(|| env(CONFIG_ENV).map(PathBuf::from)) {
        for (key, value) in read_toml(&path)? {
            if key == "config" || !known.contains(&key) {
                return Err(ConfigError::UnknownKey { path, key });
            }
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
                    cmd = cmd.mut_arg(name, |a| hide_default(a.default_value(v)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::Credential { path, source }),
            }
        }
    }
    let matches = cmd.try_get_matches_from(args)?;
    Ok(T::from_arg_matches(&matches)?)
}

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

/// Reads the TOML file into (key, flag value) pairs.
fn read_toml(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
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
        let flag_value = scalar(&value).or_else(|| match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            _ => None,
        });
        match flag_value {
            Some(v) => out.push((key, v)),
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
