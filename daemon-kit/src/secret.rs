//! [`Secret`]: a string that shows as `<redacted>` in every `Debug` and
//! `Display`, so a config struct can be logged whole.

use std::fmt;
use std::str::FromStr;

/// A secret setting (app secret, token, keys). Read it with
/// [`Secret::expose`]; printing it shows `<redacted>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret's value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.trim_end_matches(['\r', '\n']).to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serialised (for `--check-config`'s summary) as `"<set>"`, never the value.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<set>"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn never_prints() {
        let s: Secret = "hunter2\n".parse().unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
    }
}
