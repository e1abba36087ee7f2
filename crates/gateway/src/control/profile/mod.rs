//! Register profiles: what the words of a device mean.
//!
//! The files: this one holds the types ([`Profile`], [`Register`], [`Value`], …) and the
//! profile-wide queries and write checks; `register` what one register's words mean
//! (decode, write checks of values); `load` the file as written and its validation.
//!
//! Owns the profile schema (`profiles/*.yaml`), its loader and validator, value decoding
//! and write validation. Pure: no I/O except [`load`] reading the file. Used by the
//! status page (decoding), `airbridge profile show`, `airbridge check` and the control-write
//! path (which registers may be written, and with what values).
//!
//! A profile lists registers by function table (`input` = FC04, `holding` = FC03): the
//! same number may mean different things in the two tables, so lookups always name both.
//!
//! ```yaml
//! name: KOSTAL Smart Energy Meter G2
//! short_name: ksem        # Home Assistant entity ids: sensor.ksem_active_power_import
//! registers:
//!   - {name: active_power_import, address: 0, function: holding, type: u32, scale: 0.1, unit: W}
//!   - {name: working_mode, address: 3044, function: input, type: u16, access: rw, writes: [6],
//!      enum: {0: self-consumption, 1: peak shift, 2: battery priority}}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Deserialize;

mod load;
mod register;

pub use airbridge_modbus::model::Table;
pub use load::{load, parse};
pub use register::round;

/// How the words of a register encode its value. Multi-word numbers are big-endian,
/// high word first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit (two's complement).
    S16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    S32,
    /// Unsigned 64-bit.
    U64,
    /// Two characters per word, high byte first; NULs and trailing spaces trimmed.
    Ascii,
    /// Binary-coded decimal, four digits per word.
    Bcd,
    /// Two independent bytes (`hi`, `lo`).
    U8pair,
}

impl Kind {
    /// The fixed word count of this type, or `None` for sized types (ascii, bcd).
    pub fn fixed_words(self) -> Option<u16> {
        match self {
            Kind::U16 | Kind::S16 | Kind::U8pair => Some(1),
            Kind::U32 | Kind::S32 => Some(2),
            Kind::U64 => Some(4),
            Kind::Ascii | Kind::Bcd => None,
        }
    }
    fn numeric(self) -> bool {
        !matches!(self, Kind::Ascii | Kind::U8pair)
    }
}

/// Read-only, read-write, or write-only (a command or set-point with no documented read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read-only (the default).
    #[default]
    R,
    /// Read and write.
    Rw,
    /// Write-only.
    W,
}

impl Access {
    /// Rw or W.
    pub fn writable(self) -> bool {
        matches!(self, Access::Rw | Access::W)
    }
    /// R or Rw.
    pub fn readable(self) -> bool {
        matches!(self, Access::R | Access::Rw)
    }
    /// As written in a profile (`r`, `rw`, `w`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::R => "r",
            Access::Rw => "rw",
            Access::W => "w",
        }
    }
}

/// One byte of a `u8pair` register.
#[derive(Debug, Clone, PartialEq)]
pub struct Byte {
    /// What the byte means.
    pub name: String,
    /// Multiplier from raw to unit.
    pub scale: f64,
    /// Unit of the scaled value.
    pub unit: Option<String>,
    /// Free text shown with it.
    pub note: Option<String>,
}

/// One register (or multi-word value) of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// Unique name (no other register's or byte's name gives the same [`id_slug`]), used in
    /// lookups, `writable:` entries, the status page and entity ids.
    pub name: String,
    /// Human label, if the name is not enough.
    pub label: Option<String>,
    /// First word's address.
    pub address: u16,
    /// The table it is in (input = FC04, holding = FC03).
    pub table: Table,
    /// How its words encode the value.
    pub kind: Kind,
    /// Words it spans.
    pub words: u16,
    /// Multiplier from raw to unit (1 when not given).
    pub scale: f64,
    /// Unit of the scaled value.
    pub unit: Option<String>,
    /// Who may read and write it.
    pub access: Access,
    /// Function codes that write it (6, 16); empty for read-only registers.
    pub writes: Vec<u8>,
    /// Allowed raw values (inclusive), checked on writes.
    pub range: Option<(i64, i64)>,
    /// Raw value → meaning.
    pub enumeration: Option<BTreeMap<u64, String>>,
    /// Bit number → meaning (bit 0 = least significant).
    pub bits: Option<BTreeMap<u32, String>>,
    /// The high byte of a `u8pair`.
    pub hi: Option<Byte>,
    /// The low byte of a `u8pair`.
    pub lo: Option<Byte>,
    /// Free text shown with it.
    pub note: Option<String>,
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `raw * scale`, in the register's unit.
    Number(f64),
    /// An `ascii` register's text.
    Text(String),
    /// An enumerated value and its meaning, if documented.
    Enum {
        /// The raw integer.
        raw: i128,
        /// Its meaning; `None` when the profile does not list it.
        label: Option<String>,
    },
    /// A bit field and the names of its set bits.
    Bits {
        /// The raw integer.
        raw: i128,
        /// Names of the set bits the profile knows.
        set: Vec<String>,
    },
    /// The two bytes of a `u8pair` (hi, lo).
    Pair(u8, u8),
    /// The words do not encode a value of this type (bad BCD digit, wrong length).
    Invalid,
}

/// Why a write is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteRefusal {
    /// No register at that address.
    #[error("register {0} is not in the profile")]
    Unknown(u16),
    /// The register is read-only.
    #[error("{0} is read-only")]
    ReadOnly(String),
    /// The register is written with other function codes.
    #[error("{name} is not written with function code {fc}")]
    WrongFunction {
        /// The register.
        name: String,
        /// The function code tried.
        fc: u8,
    },
    /// The write does not cover the whole register.
    #[error("the write covers only part of {0}")]
    Partial(String),
    /// The value is outside the register's `range`.
    #[error("{name}: {raw} is outside {lo}..={hi}")]
    OutOfRange {
        /// The register.
        name: String,
        /// The value tried.
        raw: i128,
        /// Lowest allowed raw value.
        lo: i64,
        /// Highest allowed raw value.
        hi: i64,
    },
    /// The value is not one of the register's enum values.
    #[error("{name}: {raw} is not one of its documented values")]
    NotInEnum {
        /// The register.
        name: String,
        /// The value tried.
        raw: i128,
    },
}

/// A loaded, validated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The device the profile describes.
    pub name: String,
    /// The device kind in short (`ksem`, `kstar`): the prefix of its Home Assistant entity
    /// ids in the one-device form. `short_name:`, else the first word of `name:`; always an
    /// id ([`id_slug`] leaves it as it is).
    pub short_name: String,
    /// Where its facts come from (document, version).
    pub source: Option<String>,
    /// Sorted by (function, address).
    pub registers: Vec<Register>,
    /// Register index by name.
    by_name: HashMap<String, usize>,
    /// Indices of readable registers (r, rw), sorted by (function, address).
    readable: Vec<usize>,
    /// Indices of writable registers (rw, w).
    writable: Vec<usize>,
}

/// A name as a part of an entity id: lowercase ASCII letters and digits, every run of other
/// characters one `_`, none at either end (`Active_Power__L1` → `active_power_l1`,
/// `battery-2` → `battery_2`). Home Assistant accepts exactly such ids; the profile loader
/// refuses two value names with one id.
pub fn id_slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// A profile error, with where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The text is not YAML of the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or origin) of the text.
        path: String,
        /// The parser's message with the offending snippet.
        message: String,
    },
    /// A rule is broken at `line`.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file (or origin) of the text.
        path: String,
        /// 1-based line of the offending entry.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

impl Profile {
    /// The register named `name`.
    pub fn get(&self, name: &str) -> Option<&Register> {
        self.by_name.get(name).map(|&i| &self.registers[i])
    }

    /// The readable register of table `function` that contains `address`.
    pub fn at(&self, function: Table, address: u16) -> Option<&Register> {
        // `readable` is sorted by (function, address) and does not overlap within a table:
        // the candidate is the last register starting at or before `address`.
        let i = self.readable.partition_point(|&i| {
            let r = &self.registers[i];
            (r.table, r.address) <= (function, address)
        });
        let r = &self.registers[*self.readable.get(i.checked_sub(1)?)?];
        (r.table == function && r.contains(address)).then_some(r)
    }

    /// Readable registers of `function` that overlap `start..start+count`.
    pub fn overlapping(
        &self,
        function: Table,
        start: u16,
        count: u16,
    ) -> impl Iterator<Item = &Register> {
        let end = u32::from(start) + u32::from(count);
        self.readable
            .iter()
            .map(|&i| &self.registers[i])
            .filter(move |r| {
                r.table == function && u32::from(r.address) < end && r.end() > u32::from(start)
            })
    }

    /// The register a write with function code `fc` lands in at `address`, if any.
    pub fn written_by(&self, fc: u8, address: u16) -> Option<&Register> {
        self.writable
            .iter()
            .map(|&i| &self.registers[i])
            .find(|r| r.writes.contains(&fc) && r.contains(address))
    }

    /// Check a write (function code 6 or 16) of `values` at `address`: every word must
    /// belong to a register of the profile written by that function code, written whole,
    /// in range. What a write means is decided by its function code, never by the read
    /// table: in the KSTAR hybrid, 06H 3200 is the power limit while 03H/10H 3200 is the
    /// model string, and 06H 3240..3243 are commands inside the 10H clock block.
    pub fn check_write(
        &self,
        fc: u8,
        address: u16,
        values: &[u16],
    ) -> Result<Vec<&Register>, WriteRefusal> {
        let mut touched = Vec::new();
        let end = u32::from(address) + values.len() as u32;
        let mut a = u32::from(address);
        while a < end {
            let addr = a as u16;
            let reg = match self.written_by(fc, addr) {
                Some(r) => r,
                None => {
                    let other = self
                        .registers
                        .iter()
                        .find(|r| r.contains(addr))
                        .ok_or(WriteRefusal::Unknown(addr))?;
                    return Err(if other.access.writable() {
                        WriteRefusal::WrongFunction {
                            name: other.name.clone(),
                            fc,
                        }
                    } else {
                        WriteRefusal::ReadOnly(other.name.clone())
                    });
                }
            };
            reg.check_write(fc, address, values)?;
            touched.push(reg);
            a = reg.end();
        }
        Ok(touched)
    }

    /// A human-readable listing (`airbridge profile show`): one aligned row per register
    /// (columns as wide as their widest cell), its enum values or bits on the lines below.
    pub fn show(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.name);
        if let Some(s) = &self.source {
            let _ = writeln!(out, "source: {}", readable_source(s));
        }
        let rows: Vec<[String; 8]> = self
            .registers
            .iter()
            .map(|r| {
                let writes = if r.writes.is_empty() {
                    String::new()
                } else {
                    let fcs: Vec<String> = r.writes.iter().map(u8::to_string).collect();
                    format!(" (fc {})", fcs.join(","))
                };
                [
                    r.table.as_str().to_string(),
                    r.address.to_string(),
                    r.words.to_string(),
                    format!("{:?}", r.kind).to_lowercase(),
                    round(r.scale).to_string(),
                    r.unit.clone().unwrap_or_else(|| "-".into()),
                    format!("{}{writes}", r.access.as_str()),
                    r.range
                        .map(|(a, b)| format!("{a}..{b}"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let head = [
            "table", "addr", "n", "type", "scale", "unit", "access", "range",
        ];
        let mut w = head.map(str::len);
        for row in &rows {
            for (i, c) in row.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        // Numbers right-aligned, text left-aligned.
        let line = |cells: &[String; 8]| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = " ".repeat(w[i].saturating_sub(c.chars().count()));
                if matches!(i, 1 | 2 | 4) {
                    let _ = write!(l, "{pad}{c}  ");
                } else {
                    let _ = write!(l, "{c}{pad}  ");
                }
            }
            l
        };
        let _ = writeln!(out, "{}name", line(&head.map(String::from)));
        for (r, row) in self.registers.iter().zip(&rows) {
            let label = r
                .label
                .as_deref()
                .map(|l| format!("  {l}"))
                .unwrap_or_default();
            let _ = writeln!(out, "{}{}{label}", line(row), r.name);
            let indent = " ".repeat(w.iter().map(|x| x + 2).sum::<usize>() + 2);
            if let Some(e) = r.enumeration.as_ref().filter(|e| !e.is_empty()) {
                let v: Vec<String> = e.iter().map(|(k, n)| format!("{k} = {n}")).collect();
                let _ = writeln!(out, "{indent}values: {}", v.join(", "));
            }
            if let Some(b) = r.bits.as_ref().filter(|b| !b.is_empty()) {
                let v: Vec<String> = b.iter().map(|(k, n)| format!("bit {k} = {n}")).collect();
                let _ = writeln!(out, "{indent}bits: {}", v.join(", "));
            }
        }
        let _ = writeln!(
            out,
            "{} registers; Home Assistant entity ids: sensor.{}_<name>",
            self.registers.len(),
            self.short_name
        );
        out
    }
}

/// A profile's `source:` without the archive's file name in front (`002_3a45….txt - `).
fn readable_source(s: &str) -> &str {
    match s.split_once(" - ") {
        Some((file, rest))
            if file.ends_with(".txt")
                && file
                    .split('_')
                    .next()
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())) =>
        {
            rest
        }
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
name: sample
enums:
  mode: {0: off, 1: "on"}
bits:
  alarm: {0: fan, 3: overheat}
registers:
  - {name: power, address: 0, function: holding, type: u32, scale: 0.1, unit: W}
  - {name: temp, address: 2, function: holding, type: s16, scale: 0.1, unit: "°C"}
  - {name: model, address: 10, function: holding, type: ascii, words: 4}
  - {name: limit, address: 10, function: input, type: u16, unit: "%", access: rw, writes: [6], range: [0, 100]}
  - {name: mode, address: 11, function: input, type: u16, access: rw, enum: mode}
  - {name: alarms, address: 12, function: input, type: u32, bits: alarm}
  - {name: version, address: 14, function: input, type: u8pair, hi: {name: major}, lo: {name: minor}}
  - {name: serial, address: 15, function: input, type: bcd, words: 2}
  - {name: reboot, address: 20, function: holding, type: u16, access: w}
  - {name: energy, address: 30, function: holding, type: u64, scale: 0.1, unit: Wh}
"#;

    fn sample() -> Profile {
        parse(SAMPLE, "sample.yaml").expect("sample profile is valid")
    }

    #[test]
    fn decodes_every_type() {
        let p = sample();
        let d = |name: &str, w: &[u16]| p.get(name).expect(name).decode(w);
        assert_eq!(
            d("power", &[0x0001, 0x0002]),
            Value::Number(round(65538.0 * 0.1))
        );
        assert_eq!(d("temp", &[0xFFF6]), Value::Number(-1.0));
        assert_eq!(
            d("model", &[0x4B53, 0x4520, 0x3130, 0x0000]),
            Value::Text("KSE 10".into())
        );
        assert_eq!(
            d("mode", &[1]),
            Value::Enum {
                raw: 1,
                label: Some("on".into())
            }
        );
        assert_eq!(
            d("mode", &[7]),
            Value::Enum {
                raw: 7,
                label: None
            }
        );
        assert_eq!(
            d("alarms", &[0, 0b1001]),
            Value::Bits {
                raw: 9,
                set: vec!["fan".into(), "overheat".into()]
            }
        );
        assert_eq!(d("version", &[0x0A02]), Value::Pair(10, 2));
        assert_eq!(d("serial", &[0x1234, 0x5678]), Value::Number(12345678.0));
        assert_eq!(d("serial", &[0x12A4, 0x5678]), Value::Invalid);
        assert_eq!(d("energy", &[0, 0, 0, 10]), Value::Number(1.0));
        assert_eq!(d("energy", &[0, 10]), Value::Invalid, "wrong length");
    }

    #[test]
    fn lookups_keep_the_tables_apart() {
        let p = sample();
        assert_eq!(
            p.at(Table::Holding, 10).map(|r| r.name.as_str()),
            Some("model")
        );
        assert_eq!(
            p.at(Table::Holding, 13).map(|r| r.name.as_str()),
            Some("model")
        );
        assert_eq!(
            p.at(Table::Input, 10).map(|r| r.name.as_str()),
            Some("limit")
        );
        assert_eq!(p.at(Table::Holding, 14), None);
        assert_eq!(p.at(Table::Input, 9), None);
        assert_eq!(
            p.at(Table::Holding, 1).map(|r| r.name.as_str()),
            Some("power")
        );
        let names: Vec<_> = p
            .overlapping(Table::Holding, 1, 10)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["power", "temp", "model"]);
    }

    #[test]
    fn writes_are_checked_against_access_function_and_range() {
        let p = sample();
        // FC06 to 10 is the input-table limit (0..100), not the holding model string.
        let ok = p.check_write(6, 10, &[85]).expect("85 % is a valid limit");
        assert_eq!(ok[0].name, "limit");
        assert!(matches!(
            p.check_write(6, 10, &[101]),
            Err(WriteRefusal::OutOfRange { .. })
        ));
        // FC16 to 10 would be the model string: read-only in this profile.
        assert!(matches!(
            p.check_write(16, 10, &[1, 2, 3, 4]),
            Err(WriteRefusal::ReadOnly(_))
        ));
        assert!(matches!(
            p.check_write(6, 0, &[1]),
            Err(WriteRefusal::ReadOnly(_))
        ));
        assert!(matches!(
            p.check_write(6, 11, &[2]),
            Err(WriteRefusal::NotInEnum { .. })
        ));
        assert!(p.check_write(6, 11, &[1]).is_ok());
        assert!(p.check_write(6, 20, &[0]).is_ok(), "write-only command");
        assert!(matches!(
            p.check_write(6, 21, &[0]),
            Err(WriteRefusal::Unknown(21))
        ));
        assert!(matches!(
            p.check_write(16, 20, &[0]),
            Err(WriteRefusal::WrongFunction { .. })
        ));
    }

    #[test]
    fn invalid_profiles_name_the_line() {
        let cases = [
            ("overlap", "  - {name: a, address: 0, function: input, type: u32}\n  - {name: b, address: 1, function: input, type: u16}\n", "overlaps a"),
            ("write overlap", "  - {name: a, address: 0, function: input, type: u16, access: rw}\n  - {name: b, address: 0, function: holding, type: u16, access: w}\n", "same function code"),
            ("dup", "  - {name: a, address: 0, function: input, type: u16}\n  - {name: a, address: 5, function: input, type: u16}\n", "name used twice"),
            ("words", "  - {name: a, address: 0, function: input, type: u32, words: 3}\n", "has 2 word(s)"),
            ("ascii", "  - {name: a, address: 0, function: input, type: ascii}\n", "need `words"),
            ("enum", "  - {name: a, address: 0, function: input, type: u16, enum: nope}\n", "not defined"),
            ("range", "  - {name: a, address: 0, function: input, type: u16, access: rw, range: [5, 1]}\n", "is empty"),
            ("fc6", "  - {name: a, address: 0, function: holding, type: u32, access: rw, writes: [6]}\n", "one word"),
            ("ro", "  - {name: a, address: 0, function: holding, type: u16, writes: [6]}\n", "read-only"),
            ("end", "  - {name: a, address: 65535, function: holding, type: u32}\n", "past address"),
            ("scale", "  - {name: a, address: 0, function: holding, type: u16, scale: 0}\n", "non-zero"),
        ];
        for (what, regs, want) in cases {
            let text = format!("name: t\nregisters:\n{regs}");
            let e = parse(&text, "t.yaml").expect_err(what).to_string();
            assert!(e.contains(want), "{what}: {e}");
            assert!(e.starts_with("t.yaml:"), "{what}: {e}");
        }
        let e = parse(
            "name: t\nregisters:\n  - {name: a, address: 0, function: input, type: f32}\n",
            "t.yaml",
        )
        .expect_err("unknown type")
        .to_string();
        assert!(e.contains("t.yaml") && e.contains("f32"), "{e}");
    }

    #[test]
    fn ids_are_lowercase_with_one_underscore_between_words() {
        assert_eq!(id_slug("active_power_import_l1"), "active_power_import_l1");
        assert_eq!(id_slug("Active_Power__L1"), "active_power_l1");
        assert_eq!(id_slug("_x_"), "x");
        assert_eq!(id_slug("battery-2"), "battery_2");
        assert_eq!(id_slug("KOSTAL"), "kostal");
        assert_eq!(id_slug("Active power + L1"), id_slug("Active power - L1"));
        assert_eq!(id_slug("___"), "");
    }

    #[test]
    fn a_value_name_used_twice_is_refused_with_the_file_and_line_of_both() {
        // Two u8pair registers whose bytes share names: two values under one key and one id.
        let text = "name: t\nregisters:\n  \
            - {name: full, address: 0, function: holding, type: u8pair, hi: {name: arm_version}, lo: {name: arm_test}}\n  \
            - {name: other, address: 1, function: input, type: u16}\n  \
            - {name: both, address: 9, function: input, type: u8pair, hi: {name: dsp_version}, lo: {name: arm_version}}\n";
        let e = parse(text, "t.yaml")
            .expect_err("duplicate byte")
            .to_string();
        assert_eq!(
            e,
            "t.yaml:5: arm_version: name used twice, also at t.yaml:3"
        );
        // A register named like a byte of another.
        let text = "name: t\nregisters:\n  \
            - {name: a, address: 0, function: holding, type: u8pair, hi: {name: hi_byte}, lo: {name: lo_byte}}\n  \
            - {name: lo_byte, address: 1, function: holding, type: u16}\n";
        let e = parse(text, "t.yaml")
            .expect_err("register like a byte")
            .to_string();
        assert_eq!(e, "t.yaml:4: lo_byte: name used twice, also at t.yaml:3");
        // Names that differ only in case or underscores give one entity id.
        let text = "name: t\nregisters:\n  \
            - {name: Power_L1, address: 0, function: input, type: u16}\n  \
            - {name: power__l1, address: 1, function: input, type: u16}\n";
        let e = parse(text, "t.yaml").expect_err("same id").to_string();
        assert!(
            e.starts_with("t.yaml:4: power__l1: the same id as Power_L1 at t.yaml:3"),
            "{e}"
        );
        // A byte's name follows the rules of a register's.
        let text = "name: t\nregisters:\n  \
            - {name: a, address: 0, function: holding, type: u8pair, hi: {name: hi byte}, lo: {name: lo}}\n";
        let e = parse(text, "t.yaml")
            .expect_err("bad byte name")
            .to_string();
        assert!(e.starts_with("t.yaml:3: a: \"hi byte\": a name is"), "{e}");
    }

    #[test]
    fn the_short_name_is_given_or_the_first_word_of_the_name() {
        let regs = "registers:\n  - {name: a, address: 0, function: input, type: u16}\n";
        let p = parse(&format!("name: KOSTAL Smart Meter\n{regs}"), "t.yaml").expect("valid");
        assert_eq!(p.short_name, "kostal");
        let p = parse(&format!("name: X\nshort_name: ksem\n{regs}"), "t.yaml").expect("valid");
        assert_eq!(p.short_name, "ksem");
        assert!(p.show().contains("entity ids: sensor.ksem_<name>"));
        let p = parse(&format!("name: '+'\n{regs}"), "t.yaml").expect("valid");
        assert_eq!(p.short_name, "device");
        for bad in ["KSEM", "k sem", "_k", "a__b", "''"] {
            let e = parse(&format!("name: X\nshort_name: {bad}\n{regs}"), "t.yaml")
                .expect_err(bad)
                .to_string();
            assert!(e.starts_with("t.yaml:2: short_name"), "{bad}: {e}");
        }
    }

    #[test]
    fn show_lists_every_register() {
        let p = sample();
        let text = p.show();
        for r in &p.registers {
            assert!(text.contains(&r.name), "{} missing in\n{text}", r.name);
        }
        assert!(text.contains("10 registers"));
    }
}
