//! What one register's words mean: its bounds, the decoding of its words into a
//! [`Value`] (and how a value prints), and the check of a write against its type, access
//! and range. Pure.

use super::{Kind, Register, Value, WriteRefusal};

impl Register {
    /// One past the last address.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.words)
    }

    /// Whether `address` is one of this register's words.
    pub fn contains(&self, address: u16) -> bool {
        address >= self.address && u32::from(address) < self.end()
    }

    /// The raw integer of a numeric register (`words.len()` must equal `self.words`).
    pub fn raw(&self, words: &[u16]) -> Option<i128> {
        if words.len() != usize::from(self.words) {
            return None;
        }
        let unsigned = words
            .iter()
            .fold(0u128, |acc, &w| (acc << 16) | u128::from(w));
        Some(match self.kind {
            Kind::U16 | Kind::U32 | Kind::U64 | Kind::U8pair => unsigned as i128,
            Kind::S16 => i128::from(words[0] as i16),
            Kind::S32 => i128::from(unsigned as u32 as i32),
            Kind::Bcd => {
                let mut v: i128 = 0;
                for &w in words {
                    for shift in [12, 8, 4, 0] {
                        let digit = (w >> shift) & 0xF;
                        if digit > 9 {
                            return None;
                        }
                        v = v * 10 + i128::from(digit);
                    }
                }
                v
            }
            Kind::Ascii => return None,
        })
    }

    /// Decode the register's words (exactly `self.words` of them).
    pub fn decode(&self, words: &[u16]) -> Value {
        if words.len() != usize::from(self.words) {
            return Value::Invalid;
        }
        match self.kind {
            Kind::Ascii => {
                let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
                let text: String = bytes
                    .iter()
                    .take_while(|&&b| b != 0)
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            b as char
                        } else {
                            '?'
                        }
                    })
                    .collect();
                Value::Text(text.trim_end().to_string())
            }
            Kind::U8pair => {
                let [hi, lo] = words[0].to_be_bytes();
                Value::Pair(hi, lo)
            }
            _ => {
                let Some(raw) = self.raw(words) else {
                    return Value::Invalid;
                };
                if let Some(table) = &self.enumeration {
                    let label = u64::try_from(raw).ok().and_then(|r| table.get(&r)).cloned();
                    return Value::Enum { raw, label };
                }
                if let Some(table) = &self.bits {
                    let set = (0..64u32)
                        .filter(|b| raw >> b & 1 == 1)
                        .map(|b| table.get(&b).cloned().unwrap_or_else(|| format!("bit {b}")))
                        .collect();
                    return Value::Bits { raw, set };
                }
                // Rounded: 4998 × 0.01 is 49.98, not 49.980000000000004.
                Value::Number(round(raw as f64 * self.scale))
            }
        }
    }

    /// Check a write of `values` starting at `address` with function code `fc` against
    /// this register: it must be writable with that code, cover whole values, and be in
    /// range. Only the part of the write inside this register is looked at.
    pub fn check_write(&self, fc: u8, address: u16, values: &[u16]) -> Result<(), WriteRefusal> {
        if !self.access.writable() {
            return Err(WriteRefusal::ReadOnly(self.name.clone()));
        }
        if !self.writes.contains(&fc) {
            return Err(WriteRefusal::WrongFunction {
                name: self.name.clone(),
                fc,
            });
        }
        let end = u32::from(address) + values.len() as u32;
        if address > self.address || end < self.end() {
            return Err(WriteRefusal::Partial(self.name.clone()));
        }
        let offset = usize::from(self.address - address);
        let mine = &values[offset..offset + usize::from(self.words)];
        if let (Some((lo, hi)), Some(raw)) = (self.range, self.raw(mine)) {
            if raw < i128::from(lo) || raw > i128::from(hi) {
                return Err(WriteRefusal::OutOfRange {
                    name: self.name.clone(),
                    raw,
                    lo,
                    hi,
                });
            }
        }
        if let Some(table) = &self.enumeration {
            if let Some(raw) = self.raw(mine) {
                if u64::try_from(raw).map_or(true, |r| !table.contains_key(&r)) {
                    return Err(WriteRefusal::NotInEnum {
                        name: self.name.clone(),
                        raw,
                    });
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Number(v) => write!(f, "{}", round(*v)),
            Value::Text(t) => write!(f, "{t:?}"),
            Value::Enum {
                raw,
                label: Some(l),
            } => write!(f, "{raw} ({l})"),
            Value::Enum { raw, label: None } => write!(f, "{raw} (unknown)"),
            Value::Bits { raw, set } if set.is_empty() => write!(f, "{raw:#x}"),
            Value::Bits { raw, set } => write!(f, "{raw:#x} ({})", set.join(", ")),
            Value::Pair(hi, lo) => write!(f, "{hi}/{lo}"),
            Value::Invalid => f.write_str("invalid"),
        }
    }
}

/// Round away float noise from scaling (0.1 * 3 = 0.30000000000000004).
pub fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}
