//! The RTU master's codec, pure: request encoders, the expected length of a reply, and the
//! one reply parser that every master (the KSTAR poller, the simulated inverter, the bench)
//! goes through. No I/O, no clock; the stream side is the gateway's `link::rtu_master`.

use std::io;

use crate::crc::append_crc;
use crate::crc::frame_crc_ok;

/// Function code: read holding registers.
pub const FC_READ_HOLDING: u8 = 0x03;
/// Function code: read input registers.
pub const FC_READ_INPUT: u8 = 0x04;
/// Function code: write single register.
pub const FC_WRITE_SINGLE: u8 = 0x06;
/// Function code: write multiple registers.
pub const FC_WRITE_MULTIPLE: u8 = 0x10;

/// Length of an exception reply: unit, function | 0x80, code, CRC (2).
pub const EXCEPTION_LEN: usize = 5;
/// Largest RTU frame (serial line ADU) the spec allows.
pub const MAX_FRAME_LEN: usize = 256;
/// Why a transaction produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// No complete reply arrived within the timeout (silence is a normal outcome).
    #[error("no complete reply within the timeout")]
    Timeout,
    /// The slave answered with a Modbus exception (code as sent, e.g. 2 = illegal data address).
    #[error("modbus exception {0:#04x}")]
    Exception(u8),
    /// A frame of the expected length arrived but its CRC does not match.
    #[error("reply CRC mismatch")]
    BadCrc,
    /// A CRC-valid frame that does not answer the request (what is wrong is in the text).
    #[error("bad reply frame: {0}")]
    BadFrame(String),
    /// The stream failed (or reached end of file).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Encode a read request (FC01..FC04 layout): unit, function, address, count, CRC.
pub fn encode_read(unit: u8, function: u8, address: u16, count: u16) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = unit;
    out[1] = function;
    out[2..4].copy_from_slice(&address.to_be_bytes());
    out[4..6].copy_from_slice(&count.to_be_bytes());
    append_crc(&mut out, 6);
    out
}

/// Encode an FC06 write-single-register request.
pub fn encode_write_single(unit: u8, address: u16, value: u16) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = unit;
    out[1] = FC_WRITE_SINGLE;
    out[2..4].copy_from_slice(&address.to_be_bytes());
    out[4..6].copy_from_slice(&value.to_be_bytes());
    append_crc(&mut out, 6);
    out
}

/// Encode an FC16 write-multiple-registers request; `None` for 0 or more than 123 values.
pub fn encode_write_multiple(unit: u8, address: u16, values: &[u16]) -> Option<Vec<u8>> {
    if values.is_empty() || values.len() > 123 {
        return None;
    }
    let n = values.len() as u16;
    let mut out = Vec::with_capacity(9 + 2 * values.len());
    out.push(unit);
    out.push(FC_WRITE_MULTIPLE);
    out.extend_from_slice(&address.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.push((2 * n) as u8);
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let len = out.len();
    out.extend_from_slice(&[0, 0]);
    append_crc(&mut out, len);
    Some(out)
}

/// Length of a normal reply to `function` with `count` items.
///
/// Register reads (FC03/FC04 and anything unknown): 5 + 2·count.
/// Bit reads (FC01/FC02): 5 + ⌈count/8⌉. Writes (FC05/06/15/16): 8 (echo).
pub fn expected_reply_len(function: u8, count: u16) -> usize {
    match function {
        0x01 | 0x02 => 5 + usize::from(count).div_ceil(8),
        0x05 | 0x06 | 0x0F | 0x10 => 8,
        _ => 5 + 2 * usize::from(count),
    }
}

/// What is wrong with a reply to a register read, as [`validate_read_reply`] finds it:
/// plain data, no allocation, so a measuring loop can count faults per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// Fewer bytes than the shortest reply (an exception frame).
    Short {
        /// Bytes received.
        len: usize,
    },
    /// The CRC does not match.
    BadCrc,
    /// Another unit answered.
    Unit {
        /// The unit in the reply.
        got: u8,
        /// The unit asked.
        want: u8,
    },
    /// A well-formed exception reply with this code.
    Exception(u8),
    /// The exception function byte, but not the 5-byte exception length.
    ExceptionLength {
        /// Bytes received.
        len: usize,
    },
    /// The reply is to another function.
    Function {
        /// The function in the reply.
        got: u8,
        /// The function asked.
        want: u8,
    },
    /// The byte count field does not match the registers asked.
    ByteCount {
        /// The byte count in the reply.
        got: u8,
        /// Two bytes per register asked.
        want: usize,
    },
    /// The frame length does not match its byte count.
    Length {
        /// Bytes received.
        got: usize,
        /// 5 + the byte count.
        want: usize,
    },
}

impl From<ReadFault> for ReplyError {
    fn from(fault: ReadFault) -> Self {
        match fault {
            ReadFault::Short { len } => {
                ReplyError::BadFrame(format!("{len} bytes is shorter than any reply"))
            }
            ReadFault::BadCrc => ReplyError::BadCrc,
            ReadFault::Unit { got, want } => {
                ReplyError::BadFrame(format!("unit {got} answered, expected {want}"))
            }
            ReadFault::Exception(code) => ReplyError::Exception(code),
            ReadFault::ExceptionLength { len } => {
                ReplyError::BadFrame(format!("exception frame of {len} bytes"))
            }
            ReadFault::Function { got, want } => ReplyError::BadFrame(format!(
                "function {got:#04x} answered, expected {want:#04x}"
            )),
            ReadFault::ByteCount { got, want } => {
                ReplyError::BadFrame(format!("byte count {got}, expected {want}"))
            }
            ReadFault::Length { got, want } => {
                ReplyError::BadFrame(format!("frame length {got}, expected {want}"))
            }
        }
    }
}

/// Validate a complete reply to a register read, without allocating; `Ok` carries the
/// data bytes (2 per register, big-endian).
///
/// Checks, in order: length, CRC, unit, exception (`function | 0x80` →
/// [`ReadFault::Exception`]), function, byte count and frame length.
pub fn validate_read_reply(
    unit: u8,
    function: u8,
    count: u16,
    frame: &[u8],
) -> Result<&[u8], ReadFault> {
    if frame.len() < EXCEPTION_LEN {
        return Err(ReadFault::Short { len: frame.len() });
    }
    if !frame_crc_ok(frame) {
        return Err(ReadFault::BadCrc);
    }
    if frame[0] != unit {
        return Err(ReadFault::Unit {
            got: frame[0],
            want: unit,
        });
    }
    if frame[1] == function | 0x80 {
        if frame.len() == EXCEPTION_LEN {
            return Err(ReadFault::Exception(frame[2]));
        }
        return Err(ReadFault::ExceptionLength { len: frame.len() });
    }
    if frame[1] != function {
        return Err(ReadFault::Function {
            got: frame[1],
            want: function,
        });
    }
    let want = 2 * usize::from(count);
    if usize::from(frame[2]) != want {
        return Err(ReadFault::ByteCount {
            got: frame[2],
            want,
        });
    }
    if frame.len() != 5 + want {
        return Err(ReadFault::Length {
            got: frame.len(),
            want: 5 + want,
        });
    }
    Ok(&frame[3..3 + want])
}

/// Validate a complete reply to a register read ([`validate_read_reply`]) and decode its
/// words.
pub fn parse_read_reply(
    unit: u8,
    function: u8,
    count: u16,
    frame: &[u8],
) -> Result<Vec<u16>, ReplyError> {
    let data = validate_read_reply(unit, function, count, frame)?;
    Ok(data
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exception(unit: u8, function: u8, code: u8) -> Vec<u8> {
        let mut out = vec![unit, function | 0x80, code, 0, 0];
        append_crc(&mut out, 3);
        out
    }

    #[test]
    fn encode_matches_golden() {
        assert_eq!(
            encode_read(1, 4, 3000, 1),
            [0x01, 0x04, 0x0B, 0xB8, 0x00, 0x01, 0xB3, 0xCB]
        );
        assert_eq!(
            encode_read(1, 3, 3200, 1),
            [0x01, 0x03, 0x0C, 0x80, 0x00, 0x01, 0x86, 0xB2]
        );
        assert_eq!(
            encode_write_single(1, 4004, 85),
            [0x01, 0x06, 0x0F, 0xA4, 0x00, 0x55, 0x0B, 0x02]
        );
        // Hybrid example 4.3: set the clock, 7 registers of ASCII digits at 3239.
        let clock: Vec<u16> = b"10110214300020"
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let frame = encode_write_multiple(1, 3239, &clock).unwrap();
        assert_eq!(
            frame,
            [
                0x01, 0x10, 0x0C, 0xA7, 0x00, 0x07, 0x0E, 0x31, 0x30, 0x31, 0x31, 0x30, 0x32, 0x31,
                0x34, 0x33, 0x30, 0x30, 0x30, 0x32, 0x30, 0x17, 0x2E
            ]
        );
        assert_eq!(encode_write_multiple(1, 0, &[]), None);
        assert_eq!(encode_write_multiple(1, 0, &[0; 124]), None);
    }

    #[test]
    fn reply_lengths() {
        assert_eq!(expected_reply_len(3, 1), 7);
        assert_eq!(expected_reply_len(4, 74), 153);
        assert_eq!(expected_reply_len(3, 125), 255);
        assert_eq!(expected_reply_len(1, 9), 7);
        assert_eq!(expected_reply_len(6, 1), 8);
        assert_eq!(expected_reply_len(16, 100), 8);
    }

    #[test]
    fn parse_golden_and_errors() {
        let golden = [0x01, 0x03, 0x02, 0x4B, 0x53, 0xCE, 0x89];
        assert_eq!(parse_read_reply(1, 3, 1, &golden).unwrap(), vec![0x4B53]);
        let golden4 = [0x01, 0x04, 0x02, 0x00, 0x65, 0x79, 0x1B];
        assert_eq!(parse_read_reply(1, 4, 1, &golden4).unwrap(), vec![0x0065]);

        let mut bad = golden;
        bad[4] ^= 1;
        assert!(matches!(
            parse_read_reply(1, 3, 1, &bad),
            Err(ReplyError::BadCrc)
        ));
        assert!(matches!(
            parse_read_reply(2, 3, 1, &golden),
            Err(ReplyError::BadFrame(_))
        ));
        assert!(matches!(
            parse_read_reply(1, 4, 1, &golden),
            Err(ReplyError::BadFrame(_))
        ));
        assert!(matches!(
            parse_read_reply(1, 3, 2, &golden),
            Err(ReplyError::BadFrame(_))
        ));
        assert!(matches!(
            parse_read_reply(1, 3, 1, &exception(1, 3, 2)),
            Err(ReplyError::Exception(2))
        ));
        assert!(matches!(
            parse_read_reply(1, 3, 1, &golden[..3]),
            Err(ReplyError::BadFrame(_))
        ));
    }

    #[test]
    fn validate_returns_data_or_fault() {
        let golden = [0x01, 0x03, 0x02, 0x4B, 0x53, 0xCE, 0x89];
        assert_eq!(validate_read_reply(1, 3, 1, &golden), Ok(&golden[3..5]));
        assert_eq!(
            validate_read_reply(2, 3, 1, &golden),
            Err(ReadFault::Unit { got: 1, want: 2 })
        );
        assert_eq!(
            validate_read_reply(1, 3, 2, &golden),
            Err(ReadFault::ByteCount { got: 2, want: 4 })
        );
        assert_eq!(
            validate_read_reply(1, 3, 1, &golden[..4]),
            Err(ReadFault::Short { len: 4 })
        );
        assert_eq!(
            validate_read_reply(1, 3, 1, &exception(1, 3, 4)),
            Err(ReadFault::Exception(4))
        );
        // The parser's messages are unchanged.
        let e = parse_read_reply(2, 3, 1, &golden).unwrap_err().to_string();
        assert_eq!(e, "bad reply frame: unit 1 answered, expected 2");
    }
}
