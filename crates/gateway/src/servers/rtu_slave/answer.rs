//! The RTU slave's answer to one request: pure, allocation-free, built from one snapshot.
//!
//! Owns the order of the checks (function → count → address → warm-up and freshness; the
//! unit was checked by the framer) and the encoding of replies and exceptions. It reads the
//! [`Image`] and writes into a caller's buffer; nothing else.

use tokio::time::Instant;

use crate::image::{Image, ReadRefusal, WarmUp};
use airbridge_modbus::crc::append_crc;
pub use airbridge_modbus::model::{exception, Answer};
use airbridge_modbus::model::{OnStale, MAX_READ};
use airbridge_modbus::rtu_frame::{Request, MAX_ADU};

/// Settings the answer depends on.
#[derive(Debug, Clone, Copy)]
pub struct SlaveParams {
    /// Our unit id; other units' frames are ignored.
    pub unit: u8,
    /// Answer FC04 like FC03.
    pub input_registers: bool,
}

/// Decide and encode the answer to `req` (already known to be addressed to `params.unit`).
/// Never allocates; the reply is built from a single snapshot of `image`.
pub fn answer(
    params: SlaveParams,
    req: Request,
    image: &Image,
    now: Instant,
    out: &mut [u8; MAX_ADU],
) -> Answer {
    let (function, address, count) = match req {
        Request::Read {
            function: f @ 0x03,
            address,
            count,
        } => (f, address, count),
        Request::Read {
            function: f @ 0x04,
            address,
            count,
        } if params.input_registers => (f, address, count),
        Request::Read { function, .. } | Request::Other { function } => {
            return exception_reply(params.unit, function, exception::ILLEGAL_FUNCTION, out);
        }
    };
    if count == 0 || count > MAX_READ {
        return exception_reply(params.unit, function, exception::ILLEGAL_DATA_VALUE, out);
    }
    let snap = image.load();
    let table = image.table_for(function);
    match image.check_read(&snap, table, address, count, now, WarmUp::Image) {
        Err(ReadRefusal::OutsideRegions) => {
            exception_reply(params.unit, function, exception::ILLEGAL_DATA_ADDRESS, out)
        }
        Err(ReadRefusal::WarmingUp) => Answer::SilentWarmup,
        Err(ReadRefusal::Stale(OnStale::Exception)) => {
            exception_reply(params.unit, function, exception::SERVER_DEVICE_FAILURE, out)
        }
        Err(ReadRefusal::Stale(_)) => Answer::SilentStale,
        Ok(touched) => {
            out[0] = params.unit;
            out[1] = function;
            // count ≤ 125, so 2·count ≤ 250 fits the byte count and 5 + 250 ≤ MAX_ADU.
            out[2] = (count * 2) as u8;
            let mut at = 3;
            image.for_each_word(&snap, touched, address, count, |w| {
                let b = w.to_be_bytes();
                out[at] = b[0];
                out[at + 1] = b[1];
                at += 2;
            });
            Answer::Data {
                len: append_crc(out, at),
            }
        }
    }
}

/// Encode an exception reply for `function`.
pub fn exception_reply(unit: u8, function: u8, code: u8, out: &mut [u8; MAX_ADU]) -> Answer {
    out[0] = unit;
    out[1] = function | 0x80;
    out[2] = code;
    append_crc(out, 3);
    Answer::Exception { code }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Region, Sources};
    use airbridge_modbus::crc::frame_crc_ok;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const P: SlaveParams = SlaveParams {
        unit: 1,
        input_registers: true,
    };

    fn image() -> Image {
        let push = |name: &str, start, count| Region {
            name: name.into(),
            start,
            count,
            source: Sources {
                push: true,
                poll: false,
                fixed: false,
                rtu_poll: false,
            },
            every: None,
            max_age: Duration::from_secs(2),
            on_stale: OnStale::Silence,
            fallback_poll: None,
            values: BTreeMap::new(),
            table: None,
            device: 0,
        };
        let mut energy = push("energy", 512, 280);
        energy.source = Sources {
            push: false,
            poll: true,
            fixed: false,
            rtu_poll: false,
        };
        energy.on_stale = OnStale::Exception;
        energy.max_age = Duration::from_secs(30);
        Image::new(&[push("totals", 0, 40), push("phases", 40, 108), energy])
    }

    fn warm(img: &Image, now: Instant) {
        let words: Vec<u16> = (0..148).map(|a| 0x1000 + a).collect();
        img.write_push(0, &words, now).expect("push");
        img.commit_poll(2, &[0xE; 280], now, now).expect("poll");
    }

    fn read(function: u8, address: u16, count: u16) -> Request {
        Request::Read {
            function,
            address,
            count,
        }
    }

    #[test]
    fn golden_read_reply() {
        let img = image();
        let now = Instant::now();
        warm(&img, now);
        let mut out = [0u8; MAX_ADU];
        let o = answer(P, read(3, 0, 2), &img, now, &mut out);
        assert_eq!(o, Answer::Data { len: 9 });
        assert_eq!(&out[..7], &[0x01, 0x03, 0x04, 0x10, 0x00, 0x10, 0x01]);
        assert!(frame_crc_ok(&out[..9]));
    }

    #[test]
    fn reads_span_regions_and_max_count() {
        let img = image();
        let now = Instant::now();
        warm(&img, now);
        let mut out = [0u8; MAX_ADU];
        let o = answer(P, read(4, 23, 125), &img, now, &mut out);
        assert_eq!(o, Answer::Data { len: 255 });
        assert_eq!(out[2], 250);
        for i in 0..125u16 {
            let at = 3 + 2 * usize::from(i);
            assert_eq!(u16::from_be_bytes([out[at], out[at + 1]]), 0x1000 + 23 + i);
        }
        assert!(frame_crc_ok(&out[..255]));
    }

    #[test]
    fn check_order_function_count_address_warmup() {
        let img = image();
        let now = Instant::now();
        let mut out = [0u8; MAX_ADU];
        // Cold image: function, count and address errors still come first.
        assert_eq!(
            answer(P, Request::Other { function: 0x10 }, &img, now, &mut out),
            Answer::Exception { code: 1 }
        );
        assert_eq!(&out[..3], &[0x01, 0x90, 0x01]);
        assert!(frame_crc_ok(&out[..5]));
        assert_eq!(
            answer(P, Request::Other { function: 0x06 }, &img, now, &mut out),
            Answer::Exception { code: 1 }
        );
        assert_eq!(
            answer(P, read(3, 0, 0), &img, now, &mut out),
            Answer::Exception { code: 3 }
        );
        assert_eq!(
            answer(P, read(3, 0, 126), &img, now, &mut out),
            Answer::Exception { code: 3 }
        );
        assert_eq!(
            answer(P, read(3, 148, 1), &img, now, &mut out),
            Answer::Exception { code: 2 }
        );
        assert_eq!(&out[..3], &[0x01, 0x83, 0x02]);
        assert_eq!(
            answer(P, read(3, 0, 10), &img, now, &mut out),
            Answer::SilentWarmup
        );
        let no_fc04 = SlaveParams {
            unit: 1,
            input_registers: false,
        };
        assert_eq!(
            answer(no_fc04, read(4, 0, 10), &img, now, &mut out),
            Answer::Exception { code: 1 }
        );
        assert_eq!(&out[..3], &[0x01, 0x84, 0x01]);
    }

    #[test]
    fn stale_policies() {
        let img = image();
        let t0 = Instant::now();
        warm(&img, t0);
        let mut out = [0u8; MAX_ADU];
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(
            answer(P, read(3, 0, 10), &img, t1, &mut out),
            Answer::SilentStale
        );
        assert!(
            matches!(
                answer(P, read(3, 512, 10), &img, t1, &mut out),
                Answer::Data { .. }
            ),
            "energy still within 30 s"
        );
        let t2 = t0 + Duration::from_secs(31);
        assert_eq!(
            answer(P, read(3, 512, 10), &img, t2, &mut out),
            Answer::Exception { code: 4 }
        );
        assert_eq!(&out[..3], &[0x01, 0x83, 0x04]);
    }
}
