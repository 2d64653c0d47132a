//! The one notify-bus client of the tests: a connection to a gateway's
//! bus port that writes lines (whole, partial or malformed, as a test
//! wants) and reads the answers; and the lines and answers of the contract,
//! written out by hand so the tests check `protocol`'s parser from outside.

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::WAIT;

/// One notify-bus connection.
pub struct Bus {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Bus {
    pub async fn connect(addr: impl ToSocketAddrs) -> Bus {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("bus connect timed out")
            .expect("bus connect");
        let (r, w) = stream.into_split();
        Bus {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.writer.write_all(bytes))
            .await
            .expect("bus write timed out")
            .expect("bus write");
    }

    /// The next answer line (without newline); `None` at EOF.
    pub async fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("bus answer timed out")
            .expect("bus read");
        if n == 0 {
            return None;
        }
        Some(line.trim_end_matches('\n').to_string())
    }

    /// Sends one line and returns its answer.
    pub async fn ask(&mut self, line: &str) -> String {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.write(&bytes).await;
        self.read_line().await.expect("an answer, not EOF")
    }

    /// Half-closes (no more lines from us).
    pub async fn finish(&mut self) {
        self.writer.shutdown().await.expect("shutdown");
    }

    /// Reads to EOF; every remaining answer line.
    pub async fn read_to_end(&mut self) -> Vec<String> {
        let mut rest = String::new();
        tokio::time::timeout(WAIT, self.reader.read_to_string(&mut rest))
            .await
            .expect("bus EOF timed out")
            .expect("bus read");
        rest.lines().map(str::to_string).collect()
    }
}

/// The answer line for an error code.
pub fn err(code: &str) -> String {
    format!(r#"{{"ok":false,"error":"{code}"}}"#)
}

/// The answer line for a push that reached its page.
pub const OK: &str = r#"{"ok":true}"#;

/// A scan request line.
pub fn scan(fd: u32, nickname: &str, ticket: Option<&str>, secret: Option<&str>) -> String {
    let mut v = json!({"type": "scan", "fd": fd, "nickname": nickname});
    if let Some(t) = ticket {
        v["ticket"] = t.into();
    }
    if let Some(s) = secret {
        v["secret"] = s.into();
    }
    v.to_string()
}
