//! The notify bus: newline-delimited JSON over TCP from `wechat-callback`
//! (or anyone with the secret) to `ws-gateway`'s `--notify-listen` port.
//!
//! One request object per line, one answer line per request, in order.
//! [`split_line`] cuts lines out of a read buffer and enforces
//! [`MAX_LINE_BYTES`]; [`ScanNotify::parse`] turns a line into a request or
//! the exact error code the contract names.

use serde::{Deserialize, Serialize};

/// The longest request line accepted, not counting the newline.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// An error code in an `{"ok":false,"error":"<code>"}` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusError {
    /// The line is not a JSON object of the expected shape.
    BadJson,
    /// `type` is not a kind of request this gateway knows.
    UnknownType,
    /// No browser is connected under that `fd`.
    NoSuchClient,
    /// The `ticket` given is not the connection's current QR ticket (or it
    /// was already spent).
    TicketMismatch,
    /// `--notify-require-ticket` is on and the line has no `ticket`.
    TicketRequired,
    /// The gateway has `--notify-secret` and the line's `secret` differs.
    Unauthorized,
    /// The line is longer than [`MAX_LINE_BYTES`]; the connection is closed
    /// after this answer.
    LineTooLong,
    /// The browser's send queue is full (a stuck or very slow client); the
    /// push was not queued.
    ClientBusy,
    /// The gateway is shutting down.
    ShuttingDown,
}

impl BusError {
    /// Every code, for metrics and tests.
    pub const ALL: [BusError; 9] = [
        BusError::BadJson,
        BusError::UnknownType,
        BusError::NoSuchClient,
        BusError::TicketMismatch,
        BusError::TicketRequired,
        BusError::Unauthorized,
        BusError::LineTooLong,
        BusError::ClientBusy,
        BusError::ShuttingDown,
    ];

    /// The code as it appears on the wire.
    pub fn code(self) -> &'static str {
        match self {
            BusError::BadJson => "bad_json",
            BusError::UnknownType => "unknown_type",
            BusError::NoSuchClient => "no_such_client",
            BusError::TicketMismatch => "ticket_mismatch",
            BusError::TicketRequired => "ticket_required",
            BusError::Unauthorized => "unauthorized",
            BusError::LineTooLong => "line_too_long",
            BusError::ClientBusy => "client_busy",
            BusError::ShuttingDown => "shutting_down",
        }
    }

    /// Parses a wire code back (the callback's bus client does this).
    pub fn from_code(code: &str) -> Option<BusError> {
        BusError::ALL.into_iter().find(|e| e.code() == code)
    }

    /// The whole answer line, newline included, ready to write.
    pub fn answer_line(self) -> &'static [u8] {
        match self {
            BusError::BadJson => b"{\"ok\":false,\"error\":\"bad_json\"}\n",
            BusError::UnknownType => b"{\"ok\":false,\"error\":\"unknown_type\"}\n",
            BusError::NoSuchClient => b"{\"ok\":false,\"error\":\"no_such_client\"}\n",
            BusError::TicketMismatch => b"{\"ok\":false,\"error\":\"ticket_mismatch\"}\n",
            BusError::TicketRequired => b"{\"ok\":false,\"error\":\"ticket_required\"}\n",
            BusError::Unauthorized => b"{\"ok\":false,\"error\":\"unauthorized\"}\n",
            BusError::LineTooLong => b"{\"ok\":false,\"error\":\"line_too_long\"}\n",
            BusError::ClientBusy => b"{\"ok\":false,\"error\":\"client_busy\"}\n",
            BusError::ShuttingDown => b"{\"ok\":false,\"error\":\"shutting_down\"}\n",
        }
    }
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for BusError {}

/// The success answer line, newline included.
pub const OK_LINE: &[u8] = b"{\"ok\":true}\n";

/// An answer line as parsed by a bus client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The login page's client address (answers to `scanned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The login page's User-Agent, at most [`MAX_USER_AGENT_CHARS`]
    /// characters (answers to `scanned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// The longest User-Agent a `scanned` answer carries.
pub const MAX_USER_AGENT_CHARS: usize = 200;

/// What a successful answer says about the page (`scanned` answers only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Answer {
    /// Parses one answer line (without its newline). `Ok` for
    /// `{"ok":true,...}`, the error code otherwise; an unreadable line or an
    /// unknown code is `Err(None)`.
    pub fn parse(line: &[u8]) -> Result<PageInfo, Option<BusError>> {
        let answer: Answer = serde_json::from_slice(line).map_err(|_| None)?;
        if answer.ok {
            Ok(PageInfo {
                ip: answer.ip,
                user_agent: answer.user_agent,
            })
        } else {
            Err(answer.error.as_deref().and_then(BusError::from_code))
        }
    }

    /// The answer to a `scanned` line, newline included.
    pub fn scanned_line(ip: &str, user_agent: &str) -> Vec<u8> {
        let ua: String = user_agent.chars().take(MAX_USER_AGENT_CHARS).collect();
        let mut line = serde_json::to_vec(&Answer {
            ok: true,
            error: None,
            ip: Some(ip.to_string()),
            user_agent: Some(ua),
        })
        .unwrap_or_else(|_| OK_LINE[..OK_LINE.len() - 1].to_vec());
        line.push(b'\n');
        line
    }
}

/// The two requests: `scan` logs the page in, `scanned` only tells it
/// that the code was scanned and a confirmation is awaited on the phone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NotifyKind {
    #[default]
    Scan,
    Scanned,
}

impl NotifyKind {
    /// The `type` on the wire.
    pub fn name(self) -> &'static str {
        match self {
            NotifyKind::Scan => "scan",
            NotifyKind::Scanned => "scanned",
        }
    }
}

/// A `{"type":"scan",...}` request: tell the browser on `fd` who scanned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanNotify {
    /// `scan` or `scanned` (the line's `type`).
    #[serde(skip)]
    pub kind: NotifyKind,
    pub fd: u32,
    pub nickname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    /// The login token (a JWT) handed to the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The QR ticket from WeChat's event; must match the connection's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The shared `--notify-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A callback instance retrying a login another instance may already
    /// have pushed (it took over that instance's stale claim): a ticket
    /// already spent by this same `openid` is pushed again instead of
    /// answered `ticket_mismatch`. Any other openid is still refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
}

/// The shape a request line is first read into, so an unknown `type` is told
/// apart from a malformed line.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "type")]
    kind: String,
    fd: Option<serde_json::Value>,
    nickname: Option<String>,
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    resend: Option<bool>,
}

impl ScanNotify {
    /// Parses one request line (without its newline).
    ///
    /// `bad_json` for anything that is not a JSON object with a string
    /// `type`; `unknown_type` for a type other than `scan` or `scanned`;
    /// `bad_json` again for a request without a u32 `fd` or a string
    /// `nickname`.
    pub fn parse(line: &[u8]) -> Result<ScanNotify, BusError> {
        let raw: RawRequest = serde_json::from_slice(line).map_err(|_| BusError::BadJson)?;
        let kind = match raw.kind.as_str() {
            "scan" => NotifyKind::Scan,
            "scanned" => NotifyKind::Scanned,
            _ => return Err(BusError::UnknownType),
        };
        let fd = raw
            .fd
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(BusError::BadJson)?;
        let nickname = raw.nickname.ok_or(BusError::BadJson)?;
        Ok(ScanNotify {
            kind,
            fd,
            nickname,
            openid: raw.openid,
            token: raw.token,
            ticket: raw.ticket,
            secret: raw.secret,
            resend: raw.resend.unwrap_or(false),
        })
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            body: &'a ScanNotify,
        }
        let mut line = serde_json::to_vec(&Wire {
            kind: self.kind.name(),
            body: self,
        })
        .unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// What [`split_line`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its newline (and without a trailing `\r`).
    Complete(Vec<u8>),
    /// More than [`MAX_LINE_BYTES`] arrived without a newline, or a complete
    /// line is longer than that.
    TooLong,
}

/// Cuts the next line out of `buf`, removing it (and its newline) from the
/// front. `None` when no complete line is there yet and the partial one is
/// still within the limit.
///
/// `scanned` is how many bytes of `buf` are already known to hold no
/// newline, so a long partial line is not rescanned on every read; pass the
/// same variable on every call and it is kept up to date.
pub fn split_line(buf: &mut Vec<u8>, scanned: &mut usize, max: usize) -> Option<Line> {
    let start = (*scanned).min(buf.len());
    match buf[start..].iter().position(|&b| b == b'\n') {
        Some(pos) => {
            let end = start + pos;
            let mut line: Vec<u8> = buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            *scanned = 0;
            if line.len() > max {
                Some(Line::TooLong)
            } else {
                Some(Line::Complete(line))
            }
        }
        None => {
            *scanned = buf.len();
            if buf.len() > max {
                Some(Line::TooLong)
            } else {
                None
            }
        }
    }
}

/// A line in a [`LineBuffer`], borrowed from it.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRef<'a> {
    /// A complete line, without its newline (and without a trailing `\r`).
    Complete(&'a [u8]),
    /// See [`Line::TooLong`].
    TooLong,
}

/// A read buffer that hands out complete lines as slices: no copy and no
/// shift per line. Consumed bytes are dropped once per read, in
/// [`LineBuffer::read_target`]. This is the bus server's hot path.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// Bytes after `start` known to hold no newline.
    scanned: usize,
    max: usize,
}

impl LineBuffer {
    /// A buffer with `capacity` bytes and a line limit of `max`.
    pub fn new(capacity: usize, max: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::with_capacity(capacity),
            start: 0,
            scanned: 0,
            max,
        }
    }

    /// The vector to read into (e.g. with `read_buf`), with at least
    /// `min_spare` bytes of spare capacity; consumed lines are dropped first.
    pub fn read_target(&mut self, min_spare: usize) -> &mut Vec<u8> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < min_spare {
            self.buf.reserve(min_spare);
        }
        &mut self.buf
    }

    /// The next complete line, if one has arrived (see [`split_line`] for
    /// the limit's rules).
    pub fn next_line(&mut self) -> Option<LineRef<'_>> {
        let from = self.start + self.scanned;
        let rest = self.buf.get(from..).unwrap_or_default();
        match rest.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let line_start = self.start;
                let end = from + pos;
                self.start = end + 1;
                self.scanned = 0;
                let mut line = &self.buf[line_start..end];
                if let [head @ .., b'\r'] = line {
                    line = head;
                }
                Some(if line.len() > self.max {
                    LineRef::TooLong
                } else {
                    LineRef::Complete(line)
                })
            }
            None => {
                self.scanned = self.buf.len() - self.start;
                (self.scanned > self.max).then_some(LineRef::TooLong)
            }
        }
    }

    /// What is left after the last complete line (a final line without a
    /// newline, at EOF).
    pub fn remainder(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Drops everything buffered.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let n = ScanNotify::parse(br#"{"type":"scan","fd":42,"nickname":"Alice"}"#).unwrap();
        assert_eq!(n.fd, 42);
        assert_eq!(n.nickname, "Alice");
        assert_eq!(n.ticket, None);
    }

    #[test]
    fn error_codes_follow_the_contract() {
        assert_eq!(ScanNotify::parse(b"not json"), Err(BusError::BadJson));
        assert_eq!(ScanNotify::parse(b"[1,2]"), Err(BusError::BadJson));
        assert_eq!(ScanNotify::parse(br#"{"fd":1}"#), Err(BusError::BadJson));
        assert_eq!(
            ScanNotify::parse(br#"{"type":"hello"}"#),
            Err(BusError::UnknownType)
        );
        assert_eq!(
            ScanNotify::parse(br#"{"type":"scan","nickname":"a"}"#),
            Err(BusError::BadJson)
        );
        assert_eq!(
            ScanNotify::parse(br#"{"type":"scan","fd":-1,"nickname":"a"}"#),
            Err(BusError::BadJson)
        );
        assert_eq!(
            ScanNotify::parse(br#"{"type":"scan","fd":4294967296,"nickname":"a"}"#),
            Err(BusError::BadJson)
        );
    }

    #[test]
    fn scanned_requests_and_answers() {
        let n =
            ScanNotify::parse(br#"{"type":"scanned","fd":9,"nickname":"A","ticket":"t"}"#).unwrap();
        assert_eq!(
            (n.kind, n.fd, n.ticket.as_deref()),
            (NotifyKind::Scanned, 9, Some("t"))
        );
        let line = n.to_line();
        assert!(line.starts_with(br#"{"type":"scanned","#));
        let long_ua = "u".repeat(500);
        let answer = Answer::scanned_line("203.0.113.9", &long_ua);
        let info = Answer::parse(&answer[..answer.len() - 1]).unwrap();
        assert_eq!(info.ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(info.user_agent.map(|u| u.len()), Some(MAX_USER_AGENT_CHARS));
    }

    #[test]
    fn request_round_trips() {
        let n = ScanNotify {
            kind: NotifyKind::Scan,
            fd: 7,
            nickname: "Bob \"quoted\"\n".into(),
            openid: Some("o1".into()),
            token: None,
            ticket: Some("a+b/c=".into()),
            secret: Some("s".into()),
            resend: true,
        };
        let line = n.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(ScanNotify::parse(&line[..line.len() - 1]).unwrap(), n);
    }

    #[test]
    fn answer_lines_parse_back() {
        assert_eq!(
            Answer::parse(&OK_LINE[..OK_LINE.len() - 1]),
            Ok(PageInfo::default())
        );
        for e in BusError::ALL {
            let line = e.answer_line();
            assert_eq!(Answer::parse(&line[..line.len() - 1]), Err(Some(e)));
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(v["error"], e.code());
        }
    }

    #[test]
    fn line_buffer_matches_split_line() {
        let mut lb = LineBuffer::new(8, 10);
        lb.read_target(4).extend_from_slice(b"abc\r\nde");
        assert_eq!(lb.next_line(), Some(LineRef::Complete(b"abc")));
        assert_eq!(lb.next_line(), None);
        lb.read_target(4).extend_from_slice(b"f\n\nxyz");
        assert_eq!(lb.next_line(), Some(LineRef::Complete(b"def")));
        assert_eq!(lb.next_line(), Some(LineRef::Complete(b"")));
        assert_eq!(lb.next_line(), None);
        assert_eq!(lb.remainder(), b"xyz");
        lb.read_target(16).extend_from_slice(b"0123456789");
        assert_eq!(lb.next_line(), Some(LineRef::TooLong));
        lb.clear();
        lb.read_target(16).extend_from_slice(&[b'y'; 11]);
        lb.read_target(1).push(b'\n');
        assert_eq!(lb.next_line(), Some(LineRef::TooLong));
        lb.read_target(16).extend_from_slice(&[b'z'; 10]);
        lb.read_target(1).push(b'\n');
        assert!(matches!(lb.next_line(), Some(LineRef::Complete(l)) if l.len() == 10));
    }

    proptest::proptest! {
        #[test]
        fn line_buffer_agrees_with_split_line(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(vec![b'a', b'\n', b'\r', b'{']), 0..40), 0..20)
        ) {
            let (mut a, mut lb) = (Vec::new(), LineBuffer::new(4, 16));
            let (mut buf, mut scanned) = (Vec::new(), 0);
            let (mut b, mut stop_a, mut stop_b) = (Vec::new(), false, false);
            for chunk in &chunks {
                buf.extend_from_slice(chunk);
                while !stop_a {
                    match split_line(&mut buf, &mut scanned, 16) {
                        Some(Line::Complete(l)) => a.push(Some(l)),
                        Some(Line::TooLong) => { a.push(None); stop_a = true; }
                        None => break,
                    }
                }
                lb.read_target(8).extend_from_slice(chunk);
                while !stop_b {
                    match lb.next_line() {
                        Some(LineRef::Complete(l)) => b.push(Some(l.to_vec())),
                        Some(LineRef::TooLong) => { b.push(None); stop_b = true; }
                        None => break,
                    }
                }
            }
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn split_line_handles_partial_crlf_and_limits() {
        let mut buf = b"abc\r\nde".to_vec();
        let mut scanned = 0;
        assert_eq!(
            split_line(&mut buf, &mut scanned, 10),
            Some(Line::Complete(b"abc".to_vec()))
        );
        assert_eq!(split_line(&mut buf, &mut scanned, 10), None);
        buf.extend_from_slice(b"f\n");
        assert_eq!(
            split_line(&mut buf, &mut scanned, 10),
            Some(Line::Complete(b"def".to_vec()))
        );
        assert!(buf.is_empty());
        let mut long = vec![b'x'; 11];
        assert_eq!(split_line(&mut long, &mut scanned, 10), Some(Line::TooLong));
        let mut exact = vec![b'x'; 10];
        exact.push(b'\n');
        let mut scanned = 0;
        assert!(matches!(
            split_line(&mut exact, &mut scanned, 10),
            Some(Line::Complete(l)) if l.len() == 10
        ));
    }
}
