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
    template
        .replace("{ordinal}", &ordinal(count))
        .replace("{count}", &count.to_string())
        .replace("{name}", name)
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
    }
}
