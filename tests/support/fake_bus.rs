//! A stand-in for ws-gateway's notify port: records every line and answers
//! as told (ok, an error code, late, or never).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::bus::{BusError, OK_LINE, ScanNotify};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    Refuse(BusError),
    /// Answers ok after this delay.
    Delay(Duration),
    /// Reads but never answers.
    Silent,
    /// Answers a complete line that is not an answer.
    Garbage,
}

/// The fake bus; stops listening when dropped.
pub struct FakeBus {
    pub addr: String,
    lines: Arc<Mutex<Vec<ScanNotify>>>,
    mode: Arc<Mutex<Mode>>,
    task: JoinHandle<()>,
}

impl FakeBus {
    /// Listens on a fresh port.
    pub async fn start(mode: Mode) -> FakeBus {
        FakeBus::start_at("127.0.0.1:0", mode).await
    }

    /// Listens on `addr` (to come back on the same port).
    pub async fn start_at(addr: &str, mode: Mode) -> FakeBus {
        let listener = TcpListener::bind(addr).await.expect("bind fake bus");
        let addr = listener.local_addr().unwrap().to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(mode));
        let (l2, m2) = (lines.clone(), mode.clone());
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                let (lines, mode) = (l2.clone(), m2.clone());
                conns.push(tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut reader = BufReader::new(r).lines();
                    while let Ok(Some(line)) = reader.next_line().await {
                        let parsed = ScanNotify::parse(line.as_bytes());
                        if let Ok(n) = &parsed {
                            lines.lock().unwrap().push(n.clone());
                        }
                        let m = *mode.lock().unwrap();
                        let answer: &[u8] = match (parsed, m) {
                            (Err(e), _) => e.answer_line(),
                            (_, Mode::Ok) => OK_LINE,
                            (_, Mode::Refuse(e)) => e.answer_line(),
                            (_, Mode::Delay(d)) => {
                                tokio::time::sleep(d).await;
                                OK_LINE
                            }
                            (_, Mode::Silent) => continue,
                            (_, Mode::Garbage) => b"this is not a gateway\n",
                        };
                        if w.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            for c in conns {
                c.abort();
            }
        });
        FakeBus {
            addr,
            lines,
            mode,
            task,
        }
    }

    /// Every request line received so far.
    pub fn lines(&self) -> Vec<ScanNotify> {
        self.lines.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Waits up to `limit` for at least `n` lines.
    pub async fn wait_for_lines(&self, n: usize, limit: Duration) -> Vec<ScanNotify> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let lines = self.lines();
            if lines.len() >= n || tokio::time::Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakeBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}
