//! The words the user sees: display names and reply templates.
//!
//! **Invariant:** `scan_success.user`, the JWT's `nickname` and `{name}` in
//! the reply all come from [`display_name`], so they are the same string.

/// Longest display name passed on (a nickname is at most 32 characters in
/// WeChat; a remark a little more).
pub const MAX_NAME_CHARS: usize = 64;

/// The nickname, else the remark, else `WeChat user ` + the last 4
/// characters of the openid. Control characters are dropped and the result
/// capped at [`MAX_NAME_CHARS`].
pub fn display_name(nickname: Option<&str>, remark: Option<&str>, openid: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME_CHARS)
            .collect::<String>()
            .trim()
            .to_string()
    };
    if let Some(n) = nickname.map(clean).filter(|n| !n.is_empty()) {
        return n;
    }
    if let Some(r) = remark.map(clean).filter(|r| !r.is_empty()) {
        return r;
    }
    let chars: Vec<char> = openid.chars().filter(|c| !c.is_control()).collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("WeChat user {tail}")
}

/// English ordinal: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 22nd, 101st, 111th…
pub fn ordinal(n: i64) -> String {
    let suffix = match (n % 100, n % 10) {
        (11..=13, _) => "th",
        (_, 1) => "st",
        (_, 2) => "nd",
        (_, 3) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Fills `{name}`, `{ordinal}` and `{count}` in a template.
pub fn render(template: &str, name: &str, count: i64) -> String {
    fill(
        template,
        &[
            ("name", name),
            ("ordinal", &ordinal(count)),
            ("count", &count.to_string()),
        ],
    )
}

/// Replaces each `{key}` of `values` in one pass, so a value that looks
/// like a placeholder is never expanded again; anything else is kept.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let found = after.find('}').and_then(|close| {
            let key = &after[..close];
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v, close))
        });
        match found {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Checks that every `{placeholder}` in `template` is one of `allowed`
/// (a typo such as `{nam}` would otherwise reach users as it is).
pub fn check_template(template: &str, allowed: &[&str]) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let key = &after[..close];
        if !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !allowed.contains(&key)
        {
            let known: Vec<String> = allowed.iter().map(|k| format!("{{{k}}}")).collect();
            return Err(format!(
                "unknown placeholder {{{key}}} (known: {})",
                known.join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// A short "browser on OS" summary of a User-Agent, for the confirm
/// message (`{device}`): what a user recognises, not the whole string.
pub fn device_summary(user_agent: &str) -> String {
    let ua = user_agent;
    let has = |s: &str| ua.contains(s);
    let browser = if has("MicroMessenger") {
        "WeChat"
    } else if has("Edg/") {
        "Edge"
    } else if has("OPR/") || has("Opera") {
        "Opera"
    } else if has("Firefox/") {
        "Firefox"
    } else if has("Chrome/") || has("CriOS/") {
        "Chrome"
    } else if has("Safari/") {
        "Safari"
    } else {
        ""
    };
    let os = if has("iPhone") || has("iPad") {
        "iOS"
    } else if has("Android") {
        "Android"
    } else if has("Windows") {
        "Windows"
    } else if has("Mac OS X") || has("Macintosh") {
        "macOS"
    } else if has("CrOS") {
        "ChromeOS"
    } else if has("Linux") {
        "Linux"
    } else {
        ""
    };
    match (browser, os) {
        ("", "") => "an unknown device".to_string(),
        (b, "") => b.to_string(),
        ("", o) => format!("a browser on {o}"),
        (b, o) => format!("{b} on {o}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112, 113, 1000]
            .map(ordinal)
            .into();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd",
                "101st", "111th", "112th", "113th", "1000th"
            ]
        );
    }

    #[test]
    fn names_fall_back() {
        assert_eq!(display_name(Some("Alice"), Some("r"), "o123456"), "Alice");
        assert_eq!(display_name(Some(""), Some("Boss"), "o123456"), "Boss");
        assert_eq!(display_name(None, None, "oAbCdWxyz"), "WeChat user Wxyz");
        assert_eq!(display_name(Some("  "), Some(""), "ab"), "WeChat user ab");
        assert_eq!(display_name(Some("a\u{0}b\nc"), None, "o"), "abc");
        assert_eq!(
            display_name(Some(&"x".repeat(500)), None, "o").len(),
            MAX_NAME_CHARS
        );
    }

    #[test]
    fn templates() {
        assert_eq!(
            render(
                "{name}, login successful! This is your {ordinal} login.",
                "Alice",
                3
            ),
            "Alice, login successful! This is your 3rd login."
        );
        assert_eq!(
            render("{name}，第{count}次登录", "小明", 2),
            "小明，第2次登录"
        );
        // A name that looks like a placeholder is not expanded again.
        assert_eq!(render("{name} {count}", "{count}", 5), "{count} 5");
        assert_eq!(render("{ {name}} {x", "A", 1), "{ A} {x");
    }

    #[test]
    fn unknown_placeholders_are_refused() {
        assert!(check_template("{name} on {device} from {ip}", &["name", "device", "ip"]).is_ok());
        let e = check_template("{nam} hi", &["name"]).unwrap_err();
        assert!(e.contains("{nam}"), "{e}");
        assert!(check_template("a { b } {} {x-y}", &["name"]).is_ok());
    }

    #[test]
    fn devices_are_summarised() {
        let chrome_win = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        assert_eq!(device_summary(chrome_win), "Chrome on Windows");
        let safari_ios = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
        assert_eq!(device_summary(safari_ios), "Safari on iOS");
        assert_eq!(device_summary("curl/8.0"), "an unknown device");
        assert_eq!(device_summary(""), "an unknown device");
    }
}
