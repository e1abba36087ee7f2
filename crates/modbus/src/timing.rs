//! RTU timing as the Modbus serial line spec fixes it: a frame's time on the wire and the
//! silent interval t3.5 that ends a frame. Pure arithmetic, shared by the config check, the
//! RTU slave, the bench's wire columns and the device simulator's pacing.

use std::time::Duration;

/// Time on the wire of `bytes` characters of `bits_per_char` bits each at `baud`: the one
/// rule for the check's timeout warning, the bench's wire columns and the simulator's pacing.
pub fn wire_time(bytes: usize, baud: u32, bits_per_char: u32) -> Duration {
    let (bits, baud) = (
        (bytes as u64).saturating_mul(u64::from(bits_per_char)),
        u64::from(baud.max(1)),
    );
    // To the nearest microsecond.
    Duration::from_micros((bits.saturating_mul(1_000_000) + baud / 2) / baud)
}

/// t3.5 for a baud rate, as the Modbus spec fixes it: 1750 µs above 19200 baud.
pub fn t35(baud: u32, bits_per_char: u32) -> Duration {
    if baud > 19_200 || baud == 0 {
        Duration::from_micros(1750)
    } else {
        Duration::from_nanos(3_500_000_000u64 * u64::from(bits_per_char) / u64::from(baud))
    }
}
