//! The static files the gateway serves: the login page (`web/index.html`
//! with `__SIM_URL__` replaced by `--demo-sim-url`) and the browser client
//! (`web/scan-login.js`, `web/scan-login.mjs`), all embedded at build time.

use bytes::Bytes;
use daemon_kit::http::{Response, with_type};
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, HeaderValue, X_CONTENT_TYPE_OPTIONS};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const SCAN_LOGIN_JS: &str = include_str!("../../web/scan-login.js");
const SCAN_LOGIN_MJS: &str = include_str!("../../web/scan-login.mjs");

/// The placeholder in `index.html` (inside a JavaScript string literal).
pub const SIM_URL_PLACEHOLDER: &str = "__SIM_URL__";

const JS_TYPE: &str = "text/javascript; charset=utf-8";

/// The embedded files, with the page prepared once at startup.
#[derive(Debug, Clone)]
pub struct Pages {
    index: Bytes,
}

impl Pages {
    pub fn new(demo_sim_url: &str) -> Pages {
        let index = INDEX_HTML.replace(SIM_URL_PLACEHOLDER, &js_string_body(demo_sim_url));
        Pages {
            index: Bytes::from(index),
        }
    }

    /// The response for a static path, if it is one.
    pub fn get(&self, path: &str) -> Option<Response> {
        let resp = match path {
            "/" | "/index.html" => with_type(
                StatusCode::OK,
                "text/html; charset=utf-8",
                self.index.clone(),
            ),
            "/scan-login.js" => with_type(
                StatusCode::OK,
                JS_TYPE,
                Bytes::from_static(SCAN_LOGIN_JS.as_bytes()),
            ),
            "/scan-login.mjs" => with_type(
                StatusCode::OK,
                JS_TYPE,
                Bytes::from_static(SCAN_LOGIN_MJS.as_bytes()),
            ),
            _ => return None,
        };
        Some(static_headers(resp))
    }
}

fn static_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    // Small files that change with each deploy: revalidate every time.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// `s` as the inside of a double-quoted JavaScript string that sits in an
/// HTML `<script>`: JSON escapes, plus `<`, `>` and `&` as `\u00XX` so the
/// value cannot close the script element.
fn js_string_body(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or("");
    let mut out = String::with_capacity(inner.len());
    for c in inner.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_url_is_escaped_for_a_script() {
        assert_eq!(
            js_string_body("http://127.0.0.1:9000"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            js_string_body("\"</script><x>&"),
            "\\\"\\u003c/script\\u003e\\u003cx\\u003e\\u0026"
        );
    }

    #[test]
    fn page_has_the_placeholder_replaced() {
        let p = Pages::new("http://sim.example:9000");
        let body = String::from_utf8(p.index.to_vec()).unwrap();
        assert!(INDEX_HTML.contains(SIM_URL_PLACEHOLDER), "web/index.html");
        assert!(body.contains("http://sim.example:9000"));
        assert!(!body.contains(SIM_URL_PLACEHOLDER));
        assert!(p.get("/scan-login.js").is_some());
        assert!(p.get("/scan-login.mjs").is_some());
        assert!(p.get("/nope").is_none());
    }
}
