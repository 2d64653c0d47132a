//! A lean HTTP/1.1 client over hyper: one keep-alive connection per
//! [`Conn`], reconnecting when the server closes it. Lighter than a pooled
//! client, so the benchmark's own CPU use stays small.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one request may take, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One keep-alive connection to `addr`.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection to `addr`, opened at the first request.
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            host: addr.to_string(),
            sender: None,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(self.sender.insert(sender))
    }

    /// Sends one request and reads the whole answer, within
    /// `REQUEST_TIMEOUT`.
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let addr = self.addr;
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            // A kept-alive connection the server closed is reopened once.
            for attempt in 0..2 {
                let mut builder = Request::builder()
                    .method(method.clone())
                    .uri(path_and_query)
                    .header(HOST, &self.host);
                if let Some(t) = content_type {
                    builder = builder.header(CONTENT_TYPE, t);
                }
                let req = builder.body(Full::new(body.clone()))?;
                let reusable = match self.sender.as_mut() {
                    Some(s) => s.ready().await.is_ok(),
                    None => false,
                };
                let sender = match self.sender.as_mut() {
                    Some(s) if reusable => s,
                    _ => self.connect().await?,
                };
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.into_body().collect().await?.to_bytes();
                        return Ok((status, body));
                    }
                    Err(e) if attempt == 0 && reusable && e.is_canceled() => {
                        self.sender = None;
                    }
                    Err(e) => {
                        self.sender = None;
                        return Err(e).with_context(|| format!("request to {}", self.addr));
                    }
                }
            }
            anyhow::bail!("request to {} failed twice", self.addr)
        })
        .await
        .with_context(|| format!("no answer from {addr} within {REQUEST_TIMEOUT:?}"))?
    }
}

/// A one-off GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    Conn::new(addr)
        .request(Method::GET, path, None, Bytes::new())
        .await
}
