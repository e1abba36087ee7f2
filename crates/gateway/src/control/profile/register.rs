//! What one register's words mean: its bounds, the decoding of its words into a
//! [`Value`] (and how a value prints), the encoding of a value (a command's text) into the
//! words that write it, and the check of a write against its type, access and range. Pure.

use super::{Kind, Register, Value, WriteRefusal};
use airbridge_modbus::master::{FC_WRITE_MULTIPLE, FC_WRITE_SINGLE};

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

    /// The function code and words that write `payload` (a command's text) to this
    /// register: an enum's label (or raw number), or a physical value that is a whole
    /// multiple of the register's scale. The inverse of [`Register::decode`].
    pub fn encode(&self, payload: &str) -> Result<(u8, Vec<u16>), String> {
        let register = self;
        let text = payload.trim().trim_matches('"').trim();
        let raw: i128 = match &register.enumeration {
            Some(table) => match table
                .iter()
                .find(|(_, label)| label.eq_ignore_ascii_case(text))
            {
                Some((&raw, _)) => i128::from(raw),
                None => text.parse::<i128>().map_err(|_| {
                    let labels: Vec<&str> = table.values().map(String::as_str).collect();
                    format!("`{text}` is not one of {labels:?}")
                })?,
            },
            None => {
                let v: f64 = text
                    .parse()
                    .map_err(|_| format!("`{text}` is not a number"))?;
                if !v.is_finite() || register.scale == 0.0 {
                    return Err(format!("`{text}` is not a usable number"));
                }
                let raw = v / register.scale;
                if (raw - raw.round()).abs() > 1e-6 * raw.abs().max(1.0) {
                    return Err(format!(
                        "{v} is not a multiple of the register's step {}",
                        register.scale
                    ));
                }
                if raw.abs() > 1.0e18 {
                    return Err(format!("{v} is too large"));
                }
                raw.round() as i128
            }
        };
        let words = words_of(register.kind, raw).ok_or_else(|| {
            format!(
                "{raw} does not fit the register's type ({})",
                kind_name(register.kind)
            )
        })?;
        let fc = if words.len() == 1 && register.writes.contains(&FC_WRITE_SINGLE) {
            FC_WRITE_SINGLE
        } else if register.writes.contains(&FC_WRITE_MULTIPLE) {
            FC_WRITE_MULTIPLE
        } else {
            FC_WRITE_SINGLE
        };
        Ok((fc, words))
    }
}

/// A type's name as a profile writes it (`u16`, `s32`, …).
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::U16 => "u16",
        Kind::S16 => "s16",
        Kind::U32 => "u32",
        Kind::S32 => "s32",
        Kind::U64 => "u64",
        Kind::Ascii => "ascii",
        Kind::Bcd => "bcd",
        Kind::U8pair => "u8pair",
    }
}

/// The big-endian words of `raw` as `kind`, if it fits.
fn words_of(kind: Kind, raw: i128) -> Option<Vec<u16>> {
    let be =
        |v: u64, n: usize| -> Vec<u16> { (0..n).rev().map(|i| (v >> (16 * i)) as u16).collect() };
    match kind {
        Kind::U16 | Kind::U8pair => u16::try_from(raw).ok().map(|v| vec![v]),
        Kind::S16 => i16::try_from(raw).ok().map(|v| vec![v as u16]),
        Kind::U32 => u32::try_from(raw).ok().map(|v| be(u64::from(v), 2)),
        Kind::S32 => i32::try_from(raw).ok().map(|v| be(u64::from(v as u32), 2)),
        Kind::U64 => u64::try_from(raw).ok().map(|v| be(v, 4)),
        Kind::Ascii | Kind::Bcd => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid() -> crate::control::profile::Profile {
        let p = format!(
            "{}/../../profiles/kstar-hybrid.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        crate::control::profile::load(std::path::Path::new(&p)).unwrap()
    }

    #[test]
    fn numbers_enums_and_steps() {
        let p = hybrid();
        let limit = p.get("active_power_setting").unwrap();
        assert_eq!(limit.encode("85").unwrap(), (6, vec![85]));
        assert_eq!(limit.encode(" 85.0 ").unwrap(), (6, vec![85]));
        assert!(limit.encode("85.5").is_err());
        assert!(limit.encode("abc").is_err());
        assert!(limit.encode("NaN").is_err());
        assert!(limit.encode("70000").is_err());
        let mode = p.get("working_mode").unwrap();
        assert_eq!(mode.encode("1").unwrap(), (6, vec![1]));
        let label = mode.enumeration.as_ref().unwrap()[&2].clone();
        assert_eq!(mode.encode(&label).unwrap(), (6, vec![2]));
        assert!(mode.encode("nonsense").is_err());
        let vmin = p.get("grid_voltage_min").unwrap();
        assert_eq!(vmin.encode("180.5").unwrap(), (6, vec![1805]));
    }

    #[test]
    fn signed_and_wide_words() {
        assert_eq!(words_of(Kind::S16, -1), Some(vec![0xFFFF]));
        assert_eq!(words_of(Kind::S16, 40_000), None);
        assert_eq!(words_of(Kind::U32, 0x1_0002), Some(vec![1, 2]));
        assert_eq!(words_of(Kind::S32, -2), Some(vec![0xFFFF, 0xFFFE]));
        assert_eq!(words_of(Kind::U16, -1), None);
        assert_eq!(words_of(Kind::Ascii, 1), None);
    }
}
