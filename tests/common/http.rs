//! One plain HTTP/1.1 request to the status endpoint on loopback (`Connection: close`),
//! bounded in time: what the status, journal and metrics tests read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A reply: its status code, `Content-Type` (empty if none) and body.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `method path` to `addr`, within 10 s; `Err` says what failed (connect, read, a reply that
/// is not HTTP).
pub async fn try_request(addr: SocketAddr, method: &str, path: &str) -> Result<Reply, String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no reply within 10 s".to_string())??;
    let text = String::from_utf8(raw).map_err(|_| "reply is not UTF-8".to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of the header in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Ok(Reply {
        status,
        content_type,
        body: body.to_string(),
    })
}

/// [`try_request`], failing the test if the request fails.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    try_request(addr, method, path)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// The body of `GET path`, failing the test if the request fails.
pub async fn get_body(addr: SocketAddr, path: &str) -> String {
    request(addr, "GET", path).await.body
}
