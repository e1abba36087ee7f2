//! Register profiles: what the words of a device mean.
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
//! registers:
//!   - {name: active_power_import, address: 0, function: holding, type: u32, scale: 0.1, unit: W}
//!   - {name: working_mode, address: 3044, function: input, type: u16, access: rw, writes: [6],
//!      enum: {0: self-consumption, 1: peak shift, 2: battery priority}}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use crate::model::Function;

/// How the words of a register encode its value. Multi-word numbers are big-endian,
/// high word first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    U16,
    S16,
    U32,
    S32,
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
    #[default]
    R,
    Rw,
    W,
}

impl Access {
    pub fn writable(self) -> bool {
        matches!(self, Access::Rw | Access::W)
    }
    pub fn readable(self) -> bool {
        matches!(self, Access::R | Access::Rw)
    }
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
    pub name: String,
    pub scale: f64,
    pub unit: Option<String>,
    pub note: Option<String>,
}

/// One register (or multi-word value) of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    pub name: String,
    pub label: Option<String>,
    pub address: u16,
    pub function: Function,
    pub kind: Kind,
    pub words: u16,
    pub scale: f64,
    pub unit: Option<String>,
    pub access: Access,
    /// Function codes that write it (6, 16); empty for read-only registers.
    pub writes: Vec<u8>,
    /// Allowed raw values (inclusive), checked on writes.
    pub range: Option<(i64, i64)>,
    /// Raw value → meaning.
    pub enumeration: Option<BTreeMap<u64, String>>,
    /// Bit number → meaning (bit 0 = least significant).
    pub bits: Option<BTreeMap<u32, String>>,
    pub hi: Option<Byte>,
    pub lo: Option<Byte>,
    pub note: Option<String>,
}

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

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `raw * scale`, in the register's unit.
    Number(f64),
    Text(String),
    Enum {
        raw: i128,
        label: Option<String>,
    },
    Bits {
        raw: i128,
        set: Vec<String>,
    },
    Pair(u8, u8),
    /// The words do not encode a value of this type (bad BCD digit, wrong length).
    Invalid,
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

/// Why a write is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteRefusal {
    #[error("register {0} is not in the profile")]
    Unknown(u16),
    #[error("{0} is read-only")]
    ReadOnly(String),
    #[error("{name} is not written with function code {fc}")]
    WrongFunction { name: String, fc: u8 },
    #[error("the write covers only part of {0}")]
    Partial(String),
    #[error("{name}: {raw} is outside {lo}..={hi}")]
    OutOfRange {
        name: String,
        raw: i128,
        lo: i64,
        hi: i64,
    },
    #[error("{name}: {raw} is not one of its documented values")]
    NotInEnum { name: String, raw: i128 },
}

/// A loaded, validated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub source: Option<String>,
    /// Sorted by (function, address).
    pub registers: Vec<Register>,
    by_name: HashMap<String, usize>,
    /// Indices of readable registers (r, rw), sorted by (function, address).
    readable: Vec<usize>,
    /// Indices of writable registers (rw, w).
    writable: Vec<usize>,
}

/// A profile error, with where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: u64,
        message: String,
    },
}

/// Read and validate a profile file.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Validate a profile given as text; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
    let raw: RawProfile = serde_saphyr::from_str(text).map_err(|e| ProfileError::Parse {
        path: origin.to_string(),
        message: e.render_with_options(serde_saphyr::render_options! {
            source_name: Some(origin),
        }),
    })?;
    build(raw, origin)
}

impl Profile {
    /// The register named `name`.
    pub fn get(&self, name: &str) -> Option<&Register> {
        self.by_name.get(name).map(|&i| &self.registers[i])
    }

    /// The readable register of table `function` that contains `address`.
    pub fn at(&self, function: Function, address: u16) -> Option<&Register> {
        // `readable` is sorted by (function, address) and does not overlap within a table:
        // the candidate is the last register starting at or before `address`.
        let i = self.readable.partition_point(|&i| {
            let r = &self.registers[i];
            (r.function, r.address) <= (function, address)
        });
        let r = &self.registers[*self.readable.get(i.checked_sub(1)?)?];
        (r.function == function && r.contains(address)).then_some(r)
    }

    /// Readable registers of `function` that overlap `start..start+count`.
    pub fn overlapping(
        &self,
        function: Function,
        start: u16,
        count: u16,
    ) -> impl Iterator<Item = &Register> {
        let end = u32::from(start) + u32::from(count);
        self.readable
            .iter()
            .map(|&i| &self.registers[i])
            .filter(move |r| {
                r.function == function && u32::from(r.address) < end && r.end() > u32::from(start)
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

    /// A human-readable listing (`airbridge profile show`).
    pub fn show(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.name);
        if let Some(s) = &self.source {
            let _ = writeln!(out, "source: {s}");
        }
        let _ = writeln!(
            out,
            "{:<8} {:>5} {:>3}  {:<7} {:>5} {:<6} {:<6} {:<11} name",
            "table", "addr", "n", "type", "scale", "unit", "access", "range"
        );
        for r in &self.registers {
            let range = r
                .range
                .map(|(a, b)| format!("{a}..{b}"))
                .unwrap_or_default();
            let writes = if r.writes.is_empty() {
                String::new()
            } else {
                format!(
                    " [fc {}]",
                    r.writes
                        .iter()
                        .map(u8::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            };
            let extra = if r.enumeration.is_some() {
                " (enum)"
            } else if r.bits.is_some() {
                " (bits)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:<8} {:>5} {:>3}  {:<7} {:>5} {:<6} {:<6} {:<11} {}{}{}",
                r.function.as_str(),
                r.address,
                r.words,
                format!("{:?}", r.kind).to_lowercase(),
                round(r.scale),
                r.unit.as_deref().unwrap_or("-"),
                format!("{}{}", r.access.as_str(), writes),
                range,
                r.name,
                extra,
                r.label
                    .as_deref()
                    .map(|l| format!("  {l}"))
                    .unwrap_or_default(),
            );
        }
        let _ = writeln!(out, "{} registers", self.registers.len());
        out
    }
}

// ---------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    source: Option<String>,
    /// Free text about the profile (not used by the gateway).
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    /// Named value tables referenced by `enum: NAME`.
    #[serde(default)]
    enums: BTreeMap<String, BTreeMap<u64, String>>,
    /// Named bit tables referenced by `bits: NAME`.
    #[serde(default)]
    bits: BTreeMap<String, BTreeMap<u32, String>>,
    registers: Vec<Spanned<RawRegister>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    name: String,
    #[serde(default)]
    label: Option<String>,
    address: u16,
    function: Function,
    #[serde(rename = "type")]
    kind: Kind,
    #[serde(default)]
    words: Option<u16>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    access: Access,
    #[serde(default)]
    writes: Option<Vec<u8>>,
    #[serde(default)]
    range: Option<(i64, i64)>,
    #[serde(default, rename = "enum")]
    enumeration: Option<Table<u64>>,
    #[serde(default)]
    bits: Option<Table<u32>>,
    #[serde(default)]
    hi: Option<RawByte>,
    #[serde(default)]
    lo: Option<RawByte>,
    #[serde(default)]
    note: Option<String>,
}

/// An inline table or the name of a shared one.
#[derive(Deserialize)]
#[serde(untagged)]
enum Table<K: Ord> {
    Named(String),
    Inline(BTreeMap<K, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawByte {
    name: String,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

fn build(raw: RawProfile, origin: &str) -> Result<Profile, ProfileError> {
    let mut registers = Vec::with_capacity(raw.registers.len());
    let mut lines = Vec::with_capacity(raw.registers.len());
    for spanned in raw.registers {
        let line = spanned.referenced.line();
        let r = spanned.value;
        let err = |message: String| ProfileError::Invalid {
            path: origin.to_string(),
            line,
            message: format!("{}: {message}", r.name),
        };
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err("a name is letters, digits and _".into()));
        }
        let words = match (r.kind.fixed_words(), r.words) {
            (Some(n), None) => n,
            (Some(n), Some(w)) if w == n => n,
            (Some(n), Some(w)) => {
                return Err(err(
                    format!("type {:?} has {n} word(s), not {w}", r.kind).to_lowercase()
                ))
            }
            (None, Some(w)) if (1..=125).contains(&w) => w,
            (None, _) => return Err(err("ascii and bcd need `words: 1..125`".into())),
        };
        if u32::from(r.address) + u32::from(words) > 0x1_0000 {
            return Err(err("runs past address 65535".into()));
        }
        let scale = r.scale.unwrap_or(1.0);
        if !scale.is_finite() || scale == 0.0 {
            return Err(err("scale must be a finite non-zero number".into()));
        }
        if scale != 1.0 && !r.kind.numeric() {
            return Err(err("scale applies to numbers only".into()));
        }
        let writes = match (r.access.writable(), r.writes) {
            (false, None) => Vec::new(),
            (false, Some(_)) => return Err(err("`writes` on a read-only register".into())),
            (true, None) => vec![if words == 1 { 6 } else { 16 }],
            (true, Some(w)) => {
                if w.is_empty() || w.iter().any(|&fc| fc != 6 && fc != 16) {
                    return Err(err("`writes` lists function codes 6 and/or 16".into()));
                }
                if w.contains(&6) && words != 1 {
                    return Err(err(
                        "function code 6 writes one word; this register has more".into(),
                    ));
                }
                w
            }
        };
        if let Some((lo, hi)) = r.range {
            if lo > hi {
                return Err(err(format!("range [{lo}, {hi}] is empty")));
            }
            if !r.kind.numeric() {
                return Err(err("range applies to numbers only".into()));
            }
        }
        let enumeration =
            match r.enumeration {
                None => None,
                Some(Table::Inline(t)) => Some(t),
                Some(Table::Named(n)) => Some(raw.enums.get(&n).cloned().ok_or_else(|| {
                    err(format!("enum table {n:?} is not defined under `enums:`"))
                })?),
            };
        let bits = match r.bits {
            None => None,
            Some(Table::Inline(t)) => Some(t),
            Some(Table::Named(n)) => Some(
                raw.bits
                    .get(&n)
                    .cloned()
                    .ok_or_else(|| err(format!("bit table {n:?} is not defined under `bits:`")))?,
            ),
        };
        if enumeration.is_some() && bits.is_some() {
            return Err(err("either `enum` or `bits`, not both".into()));
        }
        if (r.hi.is_some() || r.lo.is_some()) != (r.kind == Kind::U8pair) {
            return Err(err("`hi`/`lo` go with type u8pair".into()));
        }
        let byte = |b: Option<RawByte>| {
            b.map(|b| Byte {
                name: b.name,
                scale: b.scale.unwrap_or(1.0),
                unit: b.unit,
                note: b.note,
            })
        };
        registers.push(Register {
            name: r.name.clone(),
            label: r.label,
            address: r.address,
            function: r.function,
            kind: r.kind,
            words,
            scale,
            unit: r.unit,
            access: r.access,
            writes,
            range: r.range,
            enumeration,
            bits,
            hi: byte(r.hi),
            lo: byte(r.lo),
            note: r.note,
        });
        lines.push(line);
    }
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].function, registers[i].address));
    let registers: Vec<Register> = order.iter().map(|&i| registers[i].clone()).collect();
    let lines: Vec<u64> = order.iter().map(|&i| lines[i]).collect();
    let invalid = |i: usize, j: usize, message: String| ProfileError::Invalid {
        path: origin.to_string(),
        line: lines[i].max(lines[j]),
        message,
    };
    let mut by_name = HashMap::with_capacity(registers.len());
    for (i, r) in registers.iter().enumerate() {
        if let Some(prev) = by_name.insert(r.name.clone(), i) {
            let first = lines[i].min(lines[prev]);
            return Err(invalid(
                i,
                prev,
                format!("{}: name used twice (line {first})", r.name),
            ));
        }
    }
    let overlap = |a: &Register, b: &Register| {
        a.end() > u32::from(b.address) && b.end() > u32::from(a.address)
    };
    let describe = |r: &Register| {
        format!(
            "{} ({} {}..{})",
            r.name,
            r.function.as_str(),
            r.address,
            r.end() - 1
        )
    };
    // Readable registers of one table may not overlap: a read has one meaning.
    let readable: Vec<usize> = (0..registers.len())
        .filter(|&i| registers[i].access.readable())
        .collect();
    for w in readable.windows(2) {
        let (p, r) = (&registers[w[0]], &registers[w[1]]);
        if p.function == r.function && overlap(p, r) {
            return Err(invalid(
                w[0],
                w[1],
                format!("{} overlaps {}", describe(r), describe(p)),
            ));
        }
    }
    // Writable registers sharing a write function code may not overlap, in any table:
    // a write has one meaning.
    let writable: Vec<usize> = (0..registers.len())
        .filter(|&i| registers[i].access.writable())
        .collect();
    for (k, &i) in writable.iter().enumerate() {
        for &j in &writable[k + 1..] {
            let (a, b) = (&registers[i], &registers[j]);
            if overlap(a, b) && a.writes.iter().any(|fc| b.writes.contains(fc)) {
                return Err(invalid(i, j, format!("{} and {} are both written at the same address with the same function code", describe(a), describe(b))));
            }
        }
    }
    Ok(Profile {
        name: raw.name,
        source: raw.source,
        registers,
        by_name,
        readable,
        writable,
    })
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
            p.at(Function::Holding, 10).map(|r| r.name.as_str()),
            Some("model")
        );
        assert_eq!(
            p.at(Function::Holding, 13).map(|r| r.name.as_str()),
            Some("model")
        );
        assert_eq!(
            p.at(Function::Input, 10).map(|r| r.name.as_str()),
            Some("limit")
        );
        assert_eq!(p.at(Function::Holding, 14), None);
        assert_eq!(p.at(Function::Input, 9), None);
        assert_eq!(
            p.at(Function::Holding, 1).map(|r| r.name.as_str()),
            Some("power")
        );
        let names: Vec<_> = p
            .overlapping(Function::Holding, 1, 10)
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
    fn show_lists_every_register() {
        let p = sample();
        let text = p.show();
        for r in &p.registers {
            assert!(text.contains(&r.name), "{} missing in\n{text}", r.name);
        }
        assert!(text.contains("10 registers"));
    }
}
