//! One RTU read on the wire, as the bench measures it: write the request, collect the
//! reply into a caller's buffer, timestamp first and last byte, classify the outcome
//! ([`RtuStatus`]) with the master's validator. Allocation-free; touches only the stream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use airbridge_modbus::master::{validate_read_reply, ReadFault, EXCEPTION_LEN, MAX_FRAME_LEN};

/// Outcome of one RTU request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtuStatus {
    /// A valid reply with the registers asked.
    Ok,
    /// No byte within the timeout.
    Timeout,
    /// Some bytes, but not a complete frame, within the timeout.
    Partial,
    /// A CRC-valid exception reply with this code.
    Exception(u8),
    /// A frame of the announced length whose CRC does not match.
    BadCrc,
    /// CRC-valid but wrong unit, function, byte count or length.
    BadFrame,
}

/// One request/reply as measured.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// How the request ended.
    pub status: RtuStatus,
    /// Immediately before the `write()` of the request (the reference point).
    pub t_pre: Instant,
    /// When the read returning the first reply byte completed.
    pub t_first: Option<Instant>,
    /// When the read completing the frame returned.
    pub t_last: Option<Instant>,
    /// Reply length in bytes (valid prefix of the buffer).
    pub len: usize,
}

/// The master's verdict on a complete reply, as the bench counts it.
fn status_of(unit: u8, function: u8, count: u16, frame: &[u8]) -> RtuStatus {
    match validate_read_reply(unit, function, count, frame) {
        Ok(_) => RtuStatus::Ok,
        Err(ReadFault::Exception(code)) => RtuStatus::Exception(code),
        Err(ReadFault::Short { .. } | ReadFault::BadCrc) => RtuStatus::BadCrc,
        Err(_) => RtuStatus::BadFrame,
    }
}

/// Send one prepared read request and collect the reply into `buf`.
///
/// The reply length is taken from the frame (5 for an exception, 3 + byte count + 2
/// otherwise), as `mbrtu.py` does; then the frame is validated. I/O errors end the run.
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8; 8],
    count: u16,
    timeout: Duration,
    buf: &mut [u8; MAX_FRAME_LEN + 8],
) -> std::io::Result<Exchange> {
    let t_pre = Instant::now();
    stream.write_all(request).await?;
    // No flush: on a serial port it is tcdrain(), which would block until the bytes
    // are on the wire and delay the first read; a pty has nothing to flush.
    let deadline = tokio::time::Instant::from_std(t_pre + timeout);
    let mut len = 0usize;
    let mut t_first = None;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf[len..])).await {
            Err(_) => {
                return Ok(Exchange {
                    status: if len == 0 {
                        RtuStatus::Timeout
                    } else {
                        RtuStatus::Partial
                    },
                    t_pre,
                    t_first,
                    t_last: None,
                    len,
                })
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream closed while waiting for a reply",
                ))
            }
            Ok(Ok(n)) => n,
        };
        let now = Instant::now();
        t_first.get_or_insert(now);
        len += n;
        let need = if len >= 2 && buf[1] & 0x80 != 0 {
            Some(EXCEPTION_LEN)
        } else if len >= 3 {
            Some(5 + usize::from(buf[2]))
        } else {
            None
        };
        if let Some(need) = need {
            if len >= need || len >= MAX_FRAME_LEN {
                let status = if len == need {
                    status_of(request[0], request[1], count, &buf[..len])
                } else {
                    RtuStatus::BadFrame
                };
                return Ok(Exchange {
                    status,
                    t_pre,
                    t_first,
                    t_last: Some(now),
                    len,
                });
            }
        }
    }
}
