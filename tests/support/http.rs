//! Plain HTTP GETs the tests make of the daemons (metrics, the simulator's
//! records), panicking with the URL when they fail, and reading a metric.

/// The body of `url` as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    let resp = http.get(url).send().await;
    let resp = resp.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
}

/// The body of `url` as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let text = get_text(http, url).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// The value of the metric line `name value` (or `name{labels} value`,
/// labels included in `name`) in a Prometheus text page.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}
