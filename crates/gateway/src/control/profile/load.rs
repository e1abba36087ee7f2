//! Loading a profile: [`load`] reads the file, [`parse`] deserialises the file as written
//! (the `Raw*` serde types) and `build` validates it into a [`Profile`], every error
//! naming the line. Reads only the file it is given.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{id_slug, Access, Byte, Kind, Profile, ProfileError, Register, Table};

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

/// The profile file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    /// `name:`, the device.
    name: String,
    /// `short_name:`, the device kind in entity ids (`ksem`); spanned for messages.
    #[serde(default)]
    short_name: Option<Spanned<String>>,
    /// `source:`, where the facts come from.
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
    /// `registers:`, spanned for messages.
    registers: Vec<Spanned<RawRegister>>,
}

/// One `registers:` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    /// `name:`, unique in the profile.
    name: String,
    /// `label:`.
    #[serde(default)]
    label: Option<String>,
    /// `address:`, the first word.
    address: u16,
    /// `function:`, input or holding.
    function: Table,
    /// `type:`.
    #[serde(rename = "type")]
    kind: Kind,
    /// `words:`, needed by sized types (ascii, bcd).
    #[serde(default)]
    words: Option<u16>,
    /// `scale:` (default 1).
    #[serde(default)]
    scale: Option<f64>,
    /// `unit:`.
    #[serde(default)]
    unit: Option<String>,
    /// `access:` (default r).
    #[serde(default)]
    access: Access,
    /// `writes:`, the function codes that write it.
    #[serde(default)]
    writes: Option<Vec<u8>>,
    /// `range:`, allowed raw values for writes.
    #[serde(default)]
    range: Option<(i64, i64)>,
    /// `enum:`, inline or the name of a shared table.
    #[serde(default, rename = "enum")]
    enumeration: Option<NameTable<u64>>,
    /// `bits:`, inline or the name of a shared table.
    #[serde(default)]
    bits: Option<NameTable<u32>>,
    /// `hi:` of a `u8pair`.
    #[serde(default)]
    hi: Option<RawByte>,
    /// `lo:` of a `u8pair`.
    #[serde(default)]
    lo: Option<RawByte>,
    /// `note:`.
    #[serde(default)]
    note: Option<String>,
}

/// An inline table or the name of a shared one.
#[derive(Deserialize)]
#[serde(untagged)]
enum NameTable<K: Ord> {
    /// The name of a table under `enums:` / `bits:`.
    Named(String),
    /// The table itself.
    Inline(BTreeMap<K, String>),
}

/// `hi:` / `lo:` of a `u8pair` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawByte {
    /// `name:` of the byte.
    name: String,
    /// `scale:` (default 1).
    #[serde(default)]
    scale: Option<f64>,
    /// `unit:`.
    #[serde(default)]
    unit: Option<String>,
    /// `note:`.
    #[serde(default)]
    note: Option<String>,
}

fn build(raw: RawProfile, origin: &str) -> Result<Profile, ProfileError> {
    let short_name = short_name(&raw, origin)?;
    let mut registers = Vec::with_capacity(raw.registers.len());
    let mut lines = Vec::with_capacity(raw.registers.len());
    for spanned in raw.registers {
        let line = spanned.referenced.line();
        let name = spanned.value.name.clone();
        let register = register(spanned.value, &raw.enums, &raw.bits).map_err(|message| {
            ProfileError::Invalid {
                path: origin.to_string(),
                line,
                message: format!("{name}: {message}"),
            }
        })?;
        registers.push(register);
        lines.push(line);
    }
    unique_names(&registers, &lines, origin)?;
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].table, registers[i].address));
    let registers: Vec<Register> = order.iter().map(|&i| registers[i].clone()).collect();
    let lines: Vec<u64> = order.iter().map(|&i| lines[i]).collect();
    // A clash between registers `i` and `j`, at the later line of the two.
    let invalid = |(i, j, message): (usize, usize, String)| ProfileError::Invalid {
        path: origin.to_string(),
        line: lines[i].max(lines[j]),
        message,
    };
    let by_name = registers
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    // Readable registers of one table may not overlap: a read has one meaning.
    let readable: Vec<usize> = (0..registers.len())
        .filter(|&i| registers[i].access.readable())
        .collect();
    if let Some(clash) = read_overlap(&registers, &readable) {
        return Err(invalid(clash));
    }
    // Writable registers sharing a write function code may not overlap, in any table:
    // a write has one meaning.
    let writable: Vec<usize> = (0..registers.len())
        .filter(|&i| registers[i].access.writable())
        .collect();
    if let Some(clash) = write_overlap(&registers, &writable) {
        return Err(invalid(clash));
    }
    Ok(Profile {
        name: raw.name,
        short_name,
        source: raw.source,
        registers,
        by_name,
        readable,
        writable,
    })
}

/// One `registers:` entry validated on its own; the error says what is wrong with it.
fn register(
    r: RawRegister,
    enums: &BTreeMap<String, BTreeMap<u64, String>>,
    bit_tables: &BTreeMap<String, BTreeMap<u32, String>>,
) -> Result<Register, String> {
    for name in
        std::iter::once(&r.name).chain([&r.hi, &r.lo].into_iter().flatten().map(|b| &b.name))
    {
        if !valid_name(name) {
            return Err(format!(
                "{name:?}: a name is letters, digits and _, with at least one letter or digit"
            ));
        }
    }
    let words = words(&r)?;
    if u32::from(r.address) + u32::from(words) > 0x1_0000 {
        return Err("runs past address 65535".into());
    }
    let scale = r.scale.unwrap_or(1.0);
    if !scale.is_finite() || scale == 0.0 {
        return Err("scale must be a finite non-zero number".into());
    }
    if scale != 1.0 && !r.kind.numeric() {
        return Err("scale applies to numbers only".into());
    }
    let writes = write_codes(r.access, r.writes, words)?;
    if let Some((lo, hi)) = r.range {
        if lo > hi {
            return Err(format!("range [{lo}, {hi}] is empty"));
        }
        if !r.kind.numeric() {
            return Err("range applies to numbers only".into());
        }
    }
    let enumeration = shared_table(r.enumeration, enums, "enum", "enums")?;
    let bits = shared_table(r.bits, bit_tables, "bit", "bits")?;
    if enumeration.is_some() && bits.is_some() {
        return Err("either `enum` or `bits`, not both".into());
    }
    if (r.hi.is_some() || r.lo.is_some()) != (r.kind == Kind::U8pair) {
        return Err("`hi`/`lo` go with type u8pair".into());
    }
    let byte = |b: Option<RawByte>| {
        b.map(|b| Byte {
            name: b.name,
            scale: b.scale.unwrap_or(1.0),
            unit: b.unit,
            note: b.note,
        })
    };
    Ok(Register {
        name: r.name,
        label: r.label,
        address: r.address,
        table: r.function,
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
    })
}

/// The register's size: its type's, or `words:` for the sized types (ascii, bcd).
fn words(r: &RawRegister) -> Result<u16, String> {
    match (r.kind.fixed_words(), r.words) {
        (Some(n), None) => Ok(n),
        (Some(n), Some(w)) if w == n => Ok(n),
        (Some(n), Some(w)) => {
            Err(format!("type {:?} has {n} word(s), not {w}", r.kind).to_lowercase())
        }
        (None, Some(w)) if (1..=125).contains(&w) => Ok(w),
        (None, _) => Err("ascii and bcd need `words: 1..125`".into()),
    }
}

/// The function codes that write a register (default: 6 for one word, 16 for more);
/// none for a read-only one.
fn write_codes(access: Access, writes: Option<Vec<u8>>, words: u16) -> Result<Vec<u8>, String> {
    match (access.writable(), writes) {
        (false, None) => Ok(Vec::new()),
        (false, Some(_)) => Err("`writes` on a read-only register".into()),
        (true, None) => Ok(vec![if words == 1 { 6 } else { 16 }]),
        (true, Some(w)) => {
            if w.is_empty() || w.iter().any(|&fc| fc != 6 && fc != 16) {
                return Err("`writes` lists function codes 6 and/or 16".into());
            }
            if w.contains(&6) && words != 1 {
                return Err("function code 6 writes one word; this register has more".into());
            }
            Ok(w)
        }
    }
}

/// An `enum:` or `bits:` table: inline, or the name of one under `enums:` / `bits:`
/// (`section`); `what` names the kind in the message.
fn shared_table<K: Ord + Clone>(
    table: Option<NameTable<K>>,
    shared: &BTreeMap<String, BTreeMap<K, String>>,
    what: &str,
    section: &str,
) -> Result<Option<BTreeMap<K, String>>, String> {
    match table {
        None => Ok(None),
        Some(NameTable::Inline(t)) => Ok(Some(t)),
        Some(NameTable::Named(n)) => shared
            .get(&n)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("{what} table {n:?} is not defined under `{section}:`")),
    }
}

/// A clash between two registers (by index in address order) and what it is.
type Clash = (usize, usize, String);

/// A register's or a byte's name: letters, digits and `_`, at least one letter or digit (so
/// it has an id, see [`id_slug`]).
fn valid_name(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().any(|c| c.is_ascii_alphanumeric())
}

/// `short_name:` as written (it must already be an id), or the first word of `name:` as one
/// (`KOSTAL Smart Energy Meter` → `kostal`), or `device`.
fn short_name(raw: &RawProfile, origin: &str) -> Result<String, ProfileError> {
    match &raw.short_name {
        Some(s) if !s.value.is_empty() && id_slug(&s.value) == s.value => Ok(s.value.clone()),
        Some(s) => Err(ProfileError::Invalid {
            path: origin.to_string(),
            line: s.referenced.line(),
            message: format!(
                "short_name {:?}: lowercase letters and digits, words joined by one _ (e.g. ksem)",
                s.value
            ),
        }),
        None => {
            let first = id_slug(raw.name.split_whitespace().next().unwrap_or(""));
            Ok(if first.is_empty() {
                "device".into()
            } else {
                first
            })
        }
    }
}

/// Every value name of the profile is unique: register names and the byte names of
/// `u8pair` registers are keys of one state message and ids of one Home Assistant device,
/// so two of them may neither be equal nor give the same id ([`id_slug`]). `registers` and
/// `lines` are in file order; the message names the file and line of both.
fn unique_names(registers: &[Register], lines: &[u64], origin: &str) -> Result<(), ProfileError> {
    let mut seen: HashMap<String, (&str, u64)> = HashMap::new();
    for (r, &line) in registers.iter().zip(lines) {
        let bytes = [&r.hi, &r.lo]
            .into_iter()
            .flatten()
            .map(|b| b.name.as_str());
        for name in std::iter::once(r.name.as_str()).chain(bytes) {
            let Some(&(other, first)) = seen.get(&id_slug(name)) else {
                seen.insert(id_slug(name), (name, line));
                continue;
            };
            let message = if other == name {
                format!("{name}: name used twice, also at {origin}:{first}")
            } else {
                format!(
                    "{name}: the same id as {other} at {origin}:{first} (ids are lowercase, \
                     one _ between words)"
                )
            };
            return Err(ProfileError::Invalid {
                path: origin.to_string(),
                line,
                message,
            });
        }
    }
    Ok(())
}

/// Two registers that share an address.
fn overlap(a: &Register, b: &Register) -> bool {
    a.end() > u32::from(b.address) && b.end() > u32::from(a.address)
}

/// A register as messages name it: `name (table first..last)`.
fn describe(r: &Register) -> String {
    format!(
        "{} ({} {}..{})",
        r.name,
        r.table.as_str(),
        r.address,
        r.end() - 1
    )
}

/// Two readable registers (`readable`: their indices, in address order) of one table that
/// overlap.
fn read_overlap(registers: &[Register], readable: &[usize]) -> Option<Clash> {
    readable.windows(2).find_map(|w| {
        let (p, r) = (&registers[w[0]], &registers[w[1]]);
        (p.table == r.table && overlap(p, r)).then(|| {
            (
                w[0],
                w[1],
                format!("{} overlaps {}", describe(r), describe(p)),
            )
        })
    })
}

/// Two writable registers (`writable`: their indices) that overlap and share a write
/// function code.
fn write_overlap(registers: &[Register], writable: &[usize]) -> Option<Clash> {
    for (k, &i) in writable.iter().enumerate() {
        for &j in &writable[k + 1..] {
            let (a, b) = (&registers[i], &registers[j]);
            if overlap(a, b) && a.writes.iter().any(|fc| b.writes.contains(fc)) {
                return Some((i, j, format!("{} and {} are both written at the same address with the same function code", describe(a), describe(b))));
            }
        }
    }
    None
}
