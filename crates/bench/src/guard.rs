//! The bench's safety on a live gateway: before `bench push` or `bench age` writes, look
//! at what the gateway's image holds (diagnostic FC03 reads over its push listener) and
//! refuse to overwrite data the bench did not write (a real KSEM's). With `--live` the
//! benches write only the reserved words [`RESERVED`] and copy every other word back from
//! the image, so no value the inverter uses changes.
//!
//! Touches only the push socket it opens.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PUSH_GROUPS;
use crate::connect;

/// Words the KSEM map leaves reserved between the two push groups (28..=39): inside the
/// pushed `totals` region, named by no profile, read as 0 from a real KSEM. `--live`
/// puts the sequence number here and nowhere else.
pub const RESERVED: (u16, u16) = (28, 12);

/// What a bench may do to a gateway whose image holds data it did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LivePolicy {
    /// Look first; refuse if the image holds foreign data (the default).
    #[default]
    Refuse,
    /// `--live`: sequence only into [`RESERVED`], every other word copied from the image.
    Preserve,
    /// The bench owns the gateway and every source (`bench e2e`, in-process): no check.
    Owned,
}

/// Why the bench refuses to write.
pub fn refusal(target: SocketAddr, address: u16, value: u16, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing to {what}: the gateway at {target} holds data this bench did not write \
         (register {address} = {value}, a real KSEM's?); pushing would feed the inverter \
         false values.\n  Safe alternatives: `airbridge bench rtu --device …` only reads \
         the live gateway; `airbridge bench e2e` measures everything in-process against \
         simulators.\n  To run on this live gateway anyway, add --live: the sequence then \
         goes only into the reserved words 28..39 (the inverter reads a non-zero reserved \
         word there during the run) and every other word is written back with what the \
         image holds."
    )
}

/// The bench's own fill pattern for a push group: words 0..1 the 32-bit sequence, word
/// `i ≥ 2` the low half plus `i`. [`is_bench_pattern`] recognises it.
pub(super) fn fill_pattern(words: &mut [u16], seq: u32) {
    for (i, w) in words.iter_mut().enumerate() {
        *w = match i {
            0 => (seq >> 16) as u16,
            1 => seq as u16,
            _ => (seq as u16).wrapping_add(i as u16),
        };
    }
}

/// The words are all zero (nothing wrote them) or the bench's pattern.
fn is_ours(words: &[u16]) -> bool {
    words.iter().all(|&w| w == 0) || is_bench_pattern(words)
}

/// The words are what [`fill_pattern`] writes.
fn is_bench_pattern(words: &[u16]) -> bool {
    words.len() >= 2
        && words
            .iter()
            .enumerate()
            .skip(2)
            .all(|(i, &w)| w == words[1].wrapping_add(i as u16))
}

/// Read the push groups through the push listener; `Ok(None)` if the image holds nothing
/// but zeros and the bench's own pattern, `Ok(Some((address, value)))` for the first
/// foreign word.
pub async fn foreign_word(
    target: SocketAddr,
    unit: u8,
    timeout: Duration,
) -> anyhow::Result<Option<(u16, u16)>> {
    let mut sock = connect(target, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("connect {target}: {e}"))?;
    let mut tid = 0x4000;
    for &(address, count) in &PUSH_GROUPS {
        tid += 1;
        let words = read_holding(&mut sock, tid, unit, address, count, timeout).await?;
        if !is_ours(&words) {
            let (i, &v) = words
                .iter()
                .enumerate()
                .find(|(_, &w)| w != 0)
                .unwrap_or((0, &0));
            return Ok(Some((address + i as u16, v)));
        }
    }
    Ok(None)
}

/// Decide before writing: `Ok(())` to go on, the refusal otherwise. Under
/// [`LivePolicy::Preserve`] it checks instead that the reserved words can be read (the
/// gateway's regions must cover them).
pub async fn check(
    policy: LivePolicy,
    target: SocketAddr,
    unit: u8,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    match policy {
        LivePolicy::Owned => Ok(()),
        LivePolicy::Refuse => match foreign_word(target, unit, timeout).await? {
            None => Ok(()),
            Some((address, value)) => Err(refusal(target, address, value, what)),
        },
        LivePolicy::Preserve => {
            let mut sock = connect(target, timeout)
                .await
                .map_err(|e| anyhow::anyhow!("connect {target}: {e}"))?;
            read_holding(&mut sock, 0x4100, unit, 0, RESERVED.0 + RESERVED.1, timeout)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "--live needs the gateway's push regions to cover 0..39 \
                         (the reserved words 28..39 carry the sequence): {e}"
                    )
                })?;
            Ok(())
        }
    }
}

/// One FC03 read over Modbus TCP (the push listener answers reads from the image).
pub(super) async fn read_holding(
    sock: &mut TcpStream,
    tid: u16,
    unit: u8,
    address: u16,
    count: u16,
    timeout: Duration,
) -> anyhow::Result<Vec<u16>> {
    let mut req = [0u8; 12];
    req[0..2].copy_from_slice(&tid.to_be_bytes());
    req[4..6].copy_from_slice(&6u16.to_be_bytes());
    req[6] = unit;
    req[7] = 0x03;
    req[8..10].copy_from_slice(&address.to_be_bytes());
    req[10..12].copy_from_slice(&count.to_be_bytes());
    let io = async {
        sock.write_all(&req).await?;
        let mut hdr = [0u8; 7];
        sock.read_exact(&mut hdr).await?;
        let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]])).saturating_sub(1);
        let mut body = vec![0u8; len.min(260)];
        sock.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>((hdr, body))
    };
    let (hdr, body) = tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| anyhow::anyhow!("read of {address}+{count} timed out"))??;
    anyhow::ensure!(
        u16::from_be_bytes([hdr[0], hdr[1]]) == tid,
        "read of {address}+{count}: reply to another request"
    );
    match body.as_slice() {
        [0x83, code] => anyhow::bail!(
            "read of {address}+{count}: exception {code:02}{}",
            if *code == 2 {
                " (illegal data address: outside the gateway's regions)"
            } else {
                ""
            }
        ),
        [0x03, n, data @ ..]
            if usize::from(*n) == data.len() && data.len() == 2 * usize::from(count) =>
        {
            Ok(data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect())
        }
        _ => anyhow::bail!("read of {address}+{count}: malformed reply"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_recognised_and_real_data_is_not() {
        let mut w = vec![0u16; 28];
        assert!(is_ours(&w), "zeros: nothing wrote them");
        fill_pattern(&mut w, 0x0102_fff0);
        assert!(is_ours(&w), "{w:?}");
        w[26] = 50_000; // a frequency
        assert!(!is_ours(&w));
        let ksem = airbridge_sim::ksem::KsemModel::new(1).instantaneous_block();
        assert!(!is_ours(&ksem[0..28]));
        assert!(!is_ours(&ksem[40..146]));
    }
}
