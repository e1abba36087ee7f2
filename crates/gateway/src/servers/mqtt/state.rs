//! State payloads: what a region's words mean, as one JSON object per region.
//!
//! Owns the plan (which profile registers each image region holds whole, under which JSON
//! key) and the decoding of a region's words into `{"active_power_import": 1234.5, …}`.
//! Pure: no I/O, no clock; it reads the [`RegionSpec`]s and words it is given.

use serde_json::{Map, Value as Json};

use crate::control::profile::{round, Kind, Profile, Register, Table, Value};
use crate::image::RegionSpec;

/// Which part of a register a field shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The register's decoded value.
    Whole,
    /// The high byte of a `u8pair` register (its `hi` name and scale).
    Hi,
    /// The low byte of a `u8pair` register.
    Lo,
}

/// One named value of a region's state message.
#[derive(Debug, Clone)]
pub struct Field {
    /// The JSON key: the register's name (a byte's own name for `u8pair`).
    pub key: String,
    /// The profile register it decodes (unit, scale, label, enum).
    pub register: Register,
    /// Offset of the register's first word within the region's words.
    pub offset: usize,
    /// Whole register or one byte of it.
    pub part: Part,
}

impl Field {
    /// The unit of this field (a byte's own unit for `u8pair`).
    pub fn unit(&self) -> Option<&str> {
        match (self.part, &self.register.hi, &self.register.lo) {
            (Part::Hi, Some(b), _) | (Part::Lo, _, Some(b)) => b.unit.as_deref(),
            _ => self.register.unit.as_deref(),
        }
    }

    /// The profile's label of this value (a `u8pair`'s label names the pair, not a byte).
    pub fn label(&self) -> Option<&str> {
        match self.part {
            Part::Whole => self.register.label.as_deref(),
            Part::Hi | Part::Lo => None,
        }
    }

    /// The value is a number with a unit or a plain number (not a text, enum or bit set).
    pub fn numeric(&self) -> bool {
        self.part != Part::Whole
            || (!matches!(self.register.kind, Kind::Ascii | Kind::U8pair)
                && self.register.enumeration.is_none()
                && self.register.bits.is_none())
    }

    /// This field's JSON value from the region's words.
    pub fn value(&self, region_words: &[u16]) -> Json {
        let n = usize::from(self.register.words);
        let Some(words) = region_words.get(self.offset..self.offset + n) else {
            return Json::Null;
        };
        match (self.register.decode(words), self.part) {
            (Value::Number(v), _) => number(v),
            (Value::Text(t), _) => Json::String(t),
            (Value::Enum { label: Some(l), .. }, _) => Json::String(l),
            (Value::Enum { raw, label: None }, _) | (Value::Bits { raw, .. }, _) => {
                number(raw as f64)
            }
            (Value::Pair(hi, _), Part::Hi) => byte(hi, self.register.hi.as_ref()),
            (Value::Pair(_, lo), Part::Lo) => byte(lo, self.register.lo.as_ref()),
            (Value::Pair(..), Part::Whole) | (Value::Invalid, _) => Json::Null,
        }
    }
}

fn byte(b: u8, spec: Option<&crate::control::profile::Byte>) -> Json {
    number(f64::from(b) * spec.map_or(1.0, |s| s.scale))
}

/// A JSON number, integral when the value is (1234 rather than 1234.0); `null` if not finite.
fn number(v: f64) -> Json {
    // `round` works at 1e-6: beyond 1e9 it would add float noise (a u64 of milliseconds).
    let v = if v.abs() < 1e9 { round(v) } else { v };
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Json::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
    }
}

/// One region that has named values.
#[derive(Debug, Clone)]
pub struct RegionPlan {
    /// Index of the region in the image ([`crate::image::Image::specs`]).
    pub index: usize,
    /// The region's name (its topic level).
    pub name: String,
    /// Its values, in address order.
    pub fields: Vec<Field>,
}

impl RegionPlan {
    /// The state message of this region from its words.
    pub fn payload(&self, words: &[u16]) -> Map<String, Json> {
        self.fields
            .iter()
            .map(|f| (f.key.clone(), f.value(words)))
            .collect()
    }

    /// The field called `key`.
    pub fn field(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.key == key)
    }
}

/// For every region, the readable profile registers it holds whole. Regions of the one
/// untyped table of a KSEM layout read the profile's holding registers (FC03, what the
/// inverter reads). Registers cut by a region's edge are left out (they would be torn), and
/// so are regions without any named value.
#[cfg(test)]
pub fn plan(specs: &[RegionSpec], profile: &Profile) -> Vec<RegionPlan> {
    plan_device(specs, profile, 0, "")
}

/// [`plan`] for the regions of device `device` only (index in `Config::devices`), named
/// without the `<name>.` prefix `devices:` gives them (`battery1.live` → `live`).
pub fn plan_device(
    specs: &[RegionSpec],
    profile: &Profile,
    device: usize,
    name: &str,
) -> Vec<RegionPlan> {
    let mut out = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        if spec.device != device {
            continue;
        }
        let table = spec.table.unwrap_or(Table::Holding);
        let end = u32::from(spec.start) + u32::from(spec.count);
        let mut fields = Vec::new();
        for r in profile.overlapping(table, spec.start, spec.count) {
            if r.address < spec.start || r.end() > end {
                continue;
            }
            let offset = usize::from(r.address - spec.start);
            match (r.kind, &r.hi, &r.lo) {
                (Kind::U8pair, Some(hi), Some(lo)) => {
                    for (b, part) in [(hi, Part::Hi), (lo, Part::Lo)] {
                        fields.push(Field {
                            key: b.name.clone(),
                            register: r.clone(),
                            offset,
                            part,
                        });
                    }
                }
                _ => fields.push(Field {
                    key: r.name.clone(),
                    register: r.clone(),
                    offset,
                    part: Part::Whole,
                }),
            }
        }
        if !fields.is_empty() {
            let short = spec
                .name
                .strip_prefix(name)
                .and_then(|n| n.strip_prefix('.'))
                .filter(|_| !name.is_empty())
                .unwrap_or(&spec.name);
            out.push(RegionPlan {
                index,
                name: short.to_string(),
                fields,
            });
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use airbridge_modbus::model::OnStale;
    use std::time::Duration;

    /// A push region `name` of `count` registers at `start` (max_age 2s), for the MQTT tests.
    pub(in crate::servers::mqtt) fn spec(
        name: &str,
        start: u16,
        count: u16,
        table: Option<Table>,
    ) -> RegionSpec {
        RegionSpec {
            name: name.into(),
            start,
            count,
            max_age: Duration::from_secs(2),
            on_stale: OnStale::Silence,
            accepts_push: true,
            table,
            device: 0,
        }
    }

    fn ksem() -> Profile {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../profiles/ksem-g2.yaml");
        crate::control::profile::load(std::path::Path::new(path)).unwrap()
    }

    #[test]
    fn ksem_totals_decode_scaled_by_register_name() {
        let p = ksem();
        let plan = plan(&[spec("totals", 0, 40, None)], &p);
        assert_eq!(plan.len(), 1);
        let mut words = vec![0u16; 40];
        // active_power_import (u32, 0.1 W) = 12345 → 1234.5 W; frequency (0.001 Hz) 50012.
        words[0] = 0;
        words[1] = 12345;
        words[26] = 0;
        words[27] = 50012;
        // power_factor s32 -0.95
        let pf = (-950i32) as u32;
        words[24] = (pf >> 16) as u16;
        words[25] = pf as u16;
        let m = plan[0].payload(&words);
        assert_eq!(m["active_power_import"], serde_json::json!(1234.5));
        assert_eq!(m["frequency"], serde_json::json!(50.012));
        assert_eq!(m["power_factor"], serde_json::json!(-0.95));
        assert_eq!(m["active_power_export"], serde_json::json!(0));
        // Every named holding register in 0..40 is there, nothing else.
        let names: Vec<&str> = p
            .overlapping(Table::Holding, 0, 40)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(m.len(), names.len());
        for n in names {
            assert!(m.contains_key(n), "{n}");
        }
    }

    #[test]
    fn registers_cut_by_the_edge_are_left_out_and_empty_regions_dropped() {
        let p = ksem();
        // 1..3 cuts active_power_import (0..1) and active_power_export (2..3).
        let plan1 = plan(&[spec("cut", 1, 2, None)], &p);
        assert!(plan1.is_empty());
        let plan2 = plan(&[spec("gap", 30, 5, None), spec("t", 0, 2, None)], &p);
        assert_eq!(plan2.len(), 1);
        assert_eq!(plan2[0].index, 1);
        assert_eq!(plan2[0].fields.len(), 1);
    }

    #[test]
    fn identity_text_and_kstar_enum_and_byte_pairs() {
        let p = ksem();
        let plan = plan(&[spec("identity", 8192, 57, None)], &p);
        let mut words = vec![0u16; 57];
        let serial = b"12345678";
        for (i, pair) in serial.chunks(2).enumerate() {
            words[36 + i] = u16::from_be_bytes([pair[0], pair[1]]);
        }
        let m = plan[0].payload(&words);
        assert_eq!(m["serial_number"], serde_json::json!("12345678"));

        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../profiles/kstar-ksg1-60k.yaml"
        );
        let k = crate::control::profile::load(std::path::Path::new(path)).unwrap();
        let plan = super::plan(&[spec("model", 3200, 6, Some(Table::Holding))], &k);
        let mut words = vec![0u16; 6];
        words[5] = 0x0203;
        let m = plan[0].payload(&words);
        assert_eq!(m["dsp_version"], serde_json::json!(2));
        assert_eq!(m["arm_version"], serde_json::json!(3));
        assert!(!m.contains_key("dsp_arm_version"));

        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../profiles/kstar-hybrid.yaml"
        );
        let h = crate::control::profile::load(std::path::Path::new(path)).unwrap();
        let plan = super::plan(&[spec("live", 3000, 125, Some(Table::Input))], &h);
        let mut words = vec![0u16; 125];
        words[44] = 1; // 3044 working_mode
        let m = plan[0].payload(&words);
        assert_eq!(
            m["working_mode"],
            serde_json::json!("PEAK SFT (peak shift / time-of-use)")
        );
        assert!(!plan[0].field("working_mode").unwrap().numeric());
    }

    #[test]
    fn numbers_are_integral_when_whole_and_null_when_not_finite() {
        assert_eq!(number(1234.0), serde_json::json!(1234));
        assert_eq!(number(0.1 * 3.0), serde_json::json!(0.3));
        assert_eq!(
            number(1_796_134_730_566.0),
            serde_json::json!(1_796_134_730_566i64)
        );
        assert_eq!(number(f64::NAN), Json::Null);
        assert_eq!(number(f64::INFINITY), Json::Null);
    }

    #[test]
    fn a_devices_plan_holds_its_own_regions_under_their_short_names() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../profiles/kstar-hybrid.yaml"
        );
        let h = crate::control::profile::load(std::path::Path::new(path)).unwrap();
        let on = |name: &str, device: usize| RegionSpec {
            device,
            ..spec(name, 3000, 125, Some(Table::Input))
        };
        let specs = [on("battery1.live", 0), on("battery2.live", 1)];
        let p = plan_device(&specs, &h, 1, "battery2");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].index, p[0].name.as_str()), (1, "live"));
        let p = plan_device(&specs, &h, 0, "battery1");
        assert_eq!((p[0].index, p[0].name.as_str()), (0, "live"));
        // The one-device form keeps its names as they are.
        let p = plan(&[spec("live.x", 3000, 125, Some(Table::Input))], &h);
        assert_eq!(p[0].name, "live.x");
    }
}
