//! Echo suppression for half-duplex RS485 adapters that hear what they transmit: the
//! slave's own reply coming back must never reach the framer. Pure: bytes and a clock
//! reading in, a decision out.

use tokio::time::Instant;

use airbridge_modbus::rtu_frame::MAX_ADU;

/// Recognises our own reply coming back from an adapter that echoes what it transmits, so
/// it never reaches the framer (where its first 8 bytes could, once in 65536, pass for a
/// request). Bytes that start like the echo but then differ are handed back for framing.
#[derive(Debug)]
pub struct EchoFilter {
    /// Our last frame, as it would come back.
    sent: [u8; MAX_ADU],
    /// Bytes of `sent` in use.
    len: usize,
    /// Echo bytes seen so far.
    matched: usize,
    /// The echo can arrive until then; `None`: no echo expected.
    until: Option<Instant>,
    /// The whole echo came back (counted once).
    completed: bool,
}

impl Default for EchoFilter {
    fn default() -> Self {
        EchoFilter {
            sent: [0; MAX_ADU],
            len: 0,
            matched: 0,
            until: None,
            completed: false,
        }
    }
}

impl EchoFilter {
    /// Expect `reply` to come back until `until`.
    pub fn expect(&mut self, reply: &[u8], until: Instant) {
        let len = reply.len().min(MAX_ADU);
        self.sent[..len].copy_from_slice(&reply[..len]);
        self.len = len;
        self.matched = 0;
        self.until = Some(until);
    }

    /// Strip the echo from `data` (received at `now`). Returns how many earlier, held-back
    /// bytes must be framed first (see [`EchoFilter::sent`]) and the rest of `data` to frame.
    pub fn filter<'a>(&mut self, data: &'a [u8], now: Instant) -> (usize, &'a [u8]) {
        let Some(until) = self.until else {
            return (0, data);
        };
        if now > until {
            // Too late to be an echo; a partial echo held back is dropped like a partial frame.
            self.until = None;
            return (0, data);
        }
        let want = &self.sent[self.matched..self.len];
        let k = want.iter().zip(data).take_while(|(a, b)| a == b).count();
        if k == want.len() {
            self.until = None;
            self.completed = true;
            (0, &data[k..])
        } else if k == data.len() {
            self.matched += k;
            (0, &[])
        } else {
            let held = self.matched;
            self.until = None;
            (held, data)
        }
    }

    /// The first `n` bytes of the expected echo (the held-back bytes to frame after a mismatch).
    pub fn sent(&self, n: usize) -> &[u8] {
        &self.sent[..n.min(self.len)]
    }

    /// True once after a complete echo was stripped.
    pub fn take_completed(&mut self) -> bool {
        std::mem::take(&mut self.completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn strips_a_complete_echo_in_pieces_and_keeps_what_follows() {
        let t = Instant::now();
        let mut e = EchoFilter::default();
        let reply = [1u8, 3, 2, 0, 7, 0xF9, 0x86];
        e.expect(&reply, t + Duration::from_millis(5));
        assert_eq!(e.filter(&reply[..3], t), (0, &[][..]));
        assert!(!e.take_completed());
        let (held, rest) = e.filter(&[0, 7, 0xF9, 0x86, 1, 3], t);
        assert_eq!((held, rest), (0, &[1u8, 3][..]));
        assert!(e.take_completed());
        assert_eq!(e.filter(&[9], t), (0, &[9u8][..]), "expectation ended");
    }

    #[test]
    fn a_mismatch_hands_back_the_held_bytes() {
        let t = Instant::now();
        let mut e = EchoFilter::default();
        e.expect(&[1, 3, 2, 0, 7, 0xF9, 0x86], t + Duration::from_millis(5));
        assert_eq!(e.filter(&[1, 3], t), (0, &[][..]));
        let (held, rest) = e.filter(&[0, 0, 0, 10, 0xC5, 0xCD], t);
        assert_eq!(held, 2);
        assert_eq!(e.sent(held), &[1, 3]);
        assert_eq!(rest, &[0, 0, 0, 10, 0xC5, 0xCD]);
        assert!(!e.take_completed());
    }

    #[test]
    fn nothing_is_an_echo_after_the_window() {
        let t = Instant::now();
        let mut e = EchoFilter::default();
        let reply = [1u8, 0x83, 2, 0xC0, 0xF1];
        e.expect(&reply, t + Duration::from_millis(5));
        assert_eq!(
            e.filter(&reply, t + Duration::from_millis(6)),
            (0, &reply[..])
        );
        assert_eq!(EchoFilter::default().filter(&reply, t), (0, &reply[..]));
    }
}
