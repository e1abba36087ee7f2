//! The stream of a named bus device: a serial port (`/dev/ttyUSB0`) or an RS485-to-Ethernet
//! converter in transparent mode (`tcp://HOST:PORT`), over which raw RTU frames travel.
//!
//! Owns opening either kind: serial through [`crate::link::serial`]; TCP as a client with a
//! connect timeout, TCP keepalive (a converter that loses power is noticed within about
//! 30 s, not hours) and no Nagle delay. TCP keeps no inter-byte silence, so whoever reads a
//! [`Line`] must frame by length and CRC (the RTU master and the slave's framer both do).
//! Reconnecting is the caller's [`crate::link::reopen`] loop, as for a tty that vanishes.
//! May touch: the serial module, sockets. Nothing above `link`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::RtuConfig;
use airbridge_modbus::model::tcp_target;

/// How long a converter may take to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Idle time before the first keepalive probe, and the time between probes.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// An open bus: a serial port or a TCP connection to a converter.
#[derive(Debug)]
pub enum Line {
    /// A tty (USB adapter, UART, pty).
    Serial(tokio_serial::SerialStream),
    /// A transparent RS485-to-Ethernet converter.
    Tcp(TcpStream),
}

/// Open the device `cfg.device` names: connect to `tcp://HOST:PORT`, else open the tty with
/// exactly the configured line settings.
pub async fn open(cfg: &RtuConfig) -> anyhow::Result<Line> {
    match tcp_target(&cfg.device) {
        Some(target) => Ok(Line::Tcp(connect(target, CONNECT_TIMEOUT).await?)),
        None => Ok(Line::Serial(crate::link::serial::open(cfg)?)),
    }
}

/// Connect to a converter at `target` (`HOST:PORT`) within `timeout`, with keepalive on.
pub async fn connect(target: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Err(_) => anyhow::bail!("tcp://{target}: no connection within {timeout:?}"),
        Ok(Err(e)) => anyhow::bail!("tcp://{target}: {e}"),
        Ok(Ok(s)) => s,
    };
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE);
    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    Ok(stream)
}

impl AsyncRead for Line {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Line::Serial(s) => Pin::new(s).poll_read(cx, buf),
            Line::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Line {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Line::Serial(s) => Pin::new(s).poll_write(cx, buf),
            Line::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Line::Serial(s) => Pin::new(s).poll_flush(cx),
            Line::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Line::Serial(s) => Pin::new(s).poll_shutdown(cx),
            Line::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_paths_name_their_target() {
        assert_eq!(tcp_target("tcp://10.0.0.7:8899"), Some("10.0.0.7:8899"));
        assert_eq!(tcp_target("/dev/ttyUSB0"), None);
    }

    #[tokio::test]
    async fn connect_refused_names_the_target() {
        // A port nobody listens on: bind, note it, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = connect(&addr.to_string(), Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains(&format!("tcp://{addr}")), "{e}");
    }
}
