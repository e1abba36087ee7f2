//! Home Assistant discovery: the retained config payloads that make every named value an
//! entity of one device.
//!
//! Owns the topic layout of the gateway (state, availability, command and result topics),
//! the choice of `device_class`/`state_class` from a unit, and the `device` block. Pure: it
//! builds JSON from the plan, the profile and values the caller read from the image.

use serde_json::{json, Map, Value as Json};

use super::state::{Field, RegionPlan};
use crate::config::MqttConfig;
use crate::control::profile::{id_slug, Register};

/// The topics of one HA device, from the config.
///
/// The one-device form: `<topic>/<region>/state`, `<topic>/set/<register>`, node
/// `<topic>`. With `devices:`, each device one level down: `<topic>/<device>/<region>/state`,
/// `<topic>/<device>/set/<register>`, node `<topic>_<device>` (device names are letters,
/// digits, `_` and `-`, so every level is a valid topic level and object id).
#[derive(Debug, Clone)]
pub struct Topics {
    /// Base topic (`airbridge`): the gateway's own status lives here.
    pub base: String,
    /// Where this device's state, availability and command topics live: the base topic, or
    /// `<base>/<device>` with `devices:`.
    pub prefix: String,
    /// Discovery prefix (`homeassistant`), `None` when discovery is off.
    pub discovery: Option<String>,
    /// The node id in discovery topics: the base topic with `/` as `_` (and `_<device>`).
    pub node: String,
}

impl Topics {
    /// The topics of the one-device form.
    pub fn new(cfg: &MqttConfig) -> Self {
        Topics {
            base: cfg.topic.clone(),
            prefix: cfg.topic.clone(),
            discovery: cfg.discovery.clone(),
            node: sanitize(&cfg.topic),
        }
    }
    /// The topics of device `name` of `devices:` (the one-device form for an empty name).
    pub fn device(cfg: &MqttConfig, name: &str) -> Self {
        let mut t = Topics::new(cfg);
        if !name.is_empty() {
            t.prefix = format!("{}/{name}", t.base);
            t.node = format!("{}_{}", t.node, sanitize(name));
        }
        t
    }
    /// The gateway's availability (`online`/`offline`, retained; the last will).
    pub fn gateway(&self) -> String {
        format!("{}/status", self.base)
    }
    /// A region's state messages (JSON).
    pub fn state(&self, region: &str) -> String {
        format!("{}/{}/state", self.prefix, region)
    }
    /// A region's availability (`online` while fresh, `offline` when stale; retained).
    pub fn availability(&self, region: &str) -> String {
        format!("{}/{}/availability", self.prefix, region)
    }
    /// The command topic of a register (a value to write).
    pub fn command(&self, register: &str) -> String {
        format!("{}/set/{}", self.prefix, register)
    }
    /// Every command topic of this device (the subscription).
    pub fn commands(&self) -> String {
        format!("{}/set/+", self.prefix)
    }
    /// The register a message on `topic` commands, if it is one of this device's command
    /// topics.
    pub fn command_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/set/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }
    /// Where a command's outcome is published.
    pub fn result(&self, register: &str) -> String {
        format!("{}/set/{}/result", self.prefix, register)
    }
    /// Home Assistant's birth/will topic (`online` after it starts).
    pub fn ha_status(&self) -> Option<String> {
        self.discovery.as_ref().map(|d| format!("{d}/status"))
    }
    /// The retained config topic of one entity.
    pub fn config(&self, component: &str, object: &str) -> Option<String> {
        self.discovery
            .as_ref()
            .map(|d| format!("{d}/{component}/{}/{object}/config", self.node))
    }
}

/// Only `[A-Za-z0-9_-]`, as Home Assistant wants node and object ids.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `device` block shared by every entity.
#[derive(Debug, Clone, PartialEq)]
pub struct HaDevice {
    /// Stable identifier: from the meter's serial number where the image has one.
    pub id: String,
    /// The name Home Assistant shows for the device.
    pub name: String,
    /// The maker, from the profile.
    pub manufacturer: String,
    /// The model, from the profile.
    pub model: String,
    /// Firmware version, where the image has one.
    pub sw_version: Option<String>,
    /// Serial number, where the image has one.
    pub serial_number: Option<String>,
    /// What its entity ids start with: the profile's `short_name` (`ksem`), or the device's
    /// name with `devices:` (`battery1`), as an id.
    pub entity_prefix: String,
}

impl HaDevice {
    /// The device from the profile (its name and `short_name`) and the identity values read
    /// from the image (`values`: every field of every filled region, by key).
    pub fn new(
        profile_name: &str,
        short_name: &str,
        node: &str,
        values: &Map<String, Json>,
    ) -> HaDevice {
        let text = |keys: &[&str]| {
            keys.iter().find_map(|k| match values.get(*k) {
                Some(Json::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
                Some(Json::Number(n)) => Some(n.to_string()),
                _ => None,
            })
        };
        let serial = text(&["serial_number", "serial"]);
        let manufacturer = text(&["vendor_name", "manufacturer"]).unwrap_or_else(|| {
            profile_name
                .split_whitespace()
                .next()
                .unwrap_or("airbridge")
                .to_string()
        });
        let model = text(&[
            "product_name",
            "inverter_model",
            "machine_model",
            "inverter_model_name",
        ])
        .unwrap_or_else(|| profile_name.to_string());
        let sw_version = text(&[
            "firmware_version",
            "arm_version",
            "arm_version_input",
            "software_version",
        ]);
        let id = match &serial {
            Some(s) => format!("airbridge_{}", sanitize(s)),
            None => format!("airbridge_{node}"),
        };
        HaDevice {
            id,
            name: profile_name.to_string(),
            manufacturer,
            model,
            sw_version,
            serial_number: serial,
            entity_prefix: id_slug(short_name),
        }
    }

    /// Device `name` of `devices:` (node `<topic>_<device>`): named after it, its entity ids
    /// start with it, and identified by the node, plus the serial number where its profile
    /// has one. The node alone keeps two devices apart even if they report the same serial
    /// number (or none).
    pub fn named(
        name: &str,
        profile_name: &str,
        node: &str,
        values: &Map<String, Json>,
    ) -> HaDevice {
        let mut d = HaDevice::new(profile_name, name, node, values);
        d.id = match &d.serial_number {
            Some(s) => format!("airbridge_{node}_{}", sanitize(s)),
            None => format!("airbridge_{node}"),
        };
        d.name = name.to_string();
        d
    }

    /// The entity id Home Assistant gives a new entity of `component` for value `name`:
    /// `sensor.ksem_active_power_import_l1`.
    pub fn entity_id(&self, component: &str, name: &str) -> String {
        format!("{component}.{}", self.object_id(name))
    }

    /// The entity id without its domain (`ksem_active_power_import_l1`): Home Assistant's
    /// `object_id` before 2025.10.
    fn object_id(&self, name: &str) -> String {
        format!("{}_{}", self.entity_prefix, id_slug(name))
    }

    /// `default_entity_id` (Home Assistant 2025.10 and later) and `object_id` (before; it
    /// stops working in 2026.4): both name the same id, so every release agrees. They apply
    /// when Home Assistant first sees an entity; it keeps an existing entity's id.
    fn ids(&self, m: &mut Map<String, Json>, component: &str, name: &str) {
        m.insert(
            "default_entity_id".into(),
            json!(self.entity_id(component, name)),
        );
        m.insert("object_id".into(), json!(self.object_id(name)));
    }

    fn json(&self) -> Json {
        let mut d = json!({
            "identifiers": [self.id],
            "name": self.name,
            "manufacturer": self.manufacturer,
            "model": self.model,
        });
        if let Some(v) = &self.sw_version {
            d["sw_version"] = json!(v);
        }
        if let Some(s) = &self.serial_number {
            d["serial_number"] = json!(s);
        }
        d
    }
}

/// `device_class` and `state_class` for a unit (and the register's name, for a power factor).
pub fn classes(unit: Option<&str>, name: &str) -> (Option<&'static str>, Option<&'static str>) {
    const M: Option<&str> = Some("measurement");
    const T: Option<&str> = Some("total_increasing");
    match unit {
        Some("W" | "kW") => (Some("power"), M),
        Some("Wh" | "kWh" | "MWh") => (Some("energy"), T),
        // `reactive_energy` exists only in recent Home Assistant releases; an unknown class
        // would make the whole entity invalid.
        Some("varh" | "kvarh" | "VAh") => (None, T),
        Some("V") => (Some("voltage"), M),
        Some("A") => (Some("current"), M),
        Some("Hz") => (Some("frequency"), M),
        Some("var" | "kvar") => (Some("reactive_power"), M),
        Some("VA" | "kVA") => (Some("apparent_power"), M),
        Some("°C") => (Some("temperature"), M),
        Some("ms" | "s" | "min" | "h") if !name.contains("time") => (Some("duration"), M),
        Some(_) => (None, M),
        None if name.contains("power_factor") => (Some("power_factor"), M),
        None => (None, None),
    }
}

/// The name Home Assistant shows for value `name`: its profile `label` where that reads as
/// the name (`Current L1` for `current_l1`), else the name in words (`active_power_import_l1`
/// → `Active power import L1`; the label `Active power + L1` would read like the export's).
/// Names are unique by id, so every display name is too.
pub fn display_name(name: &str, label: Option<&str>) -> String {
    if let Some(l) = label.filter(|l| id_slug(l) == id_slug(name)) {
        return l.to_string();
    }
    let words: Vec<String> = name
        .split('_')
        .filter(|w| !w.is_empty())
        .enumerate()
        .map(|(i, w)| {
            let letters = w.chars().take_while(char::is_ascii_alphabetic).count();
            // A phase or string number reads in capitals: l1 → L1, pv2 → PV2.
            if (1..=2).contains(&letters) && letters < w.len() {
                w.to_ascii_uppercase()
            } else if i == 0 {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            } else {
                w.to_string()
            }
        })
        .collect();
    words.join(" ")
}

/// Every entity's shared keys: availability (gateway and region, both needed), device, origin.
fn common(topics: &Topics, device: &HaDevice, region: &str) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert(
        "availability".into(),
        json!([
            {"topic": topics.gateway()},
            {"topic": topics.availability(region)},
        ]),
    );
    m.insert("availability_mode".into(), json!("all"));
    m.insert("device".into(), device.json());
    m.insert(
        "origin".into(),
        json!({"name": "airbridge", "sw_version": env!("CARGO_PKG_VERSION")}),
    );
    m
}

/// The retained discovery config of one sensor: (topic, payload).
pub fn sensor(
    topics: &Topics,
    device: &HaDevice,
    region: &RegionPlan,
    field: &Field,
) -> Option<(String, Json)> {
    let object = sanitize(&field.key);
    let topic = topics.config("sensor", &object)?;
    let mut m = common(topics, device, &region.name);
    m.insert(
        "name".into(),
        json!(display_name(&field.key, field.label())),
    );
    m.insert("unique_id".into(), json!(format!("{}_{object}", device.id)));
    device.ids(&mut m, "sensor", &field.key);
    m.insert("state_topic".into(), json!(topics.state(&region.name)));
    m.insert(
        "value_template".into(),
        json!(format!("{{{{ value_json.{} }}}}", field.key)),
    );
    if field.numeric() {
        let (dc, sc) = classes(field.unit(), &field.key);
        if let Some(u) = field.unit() {
            m.insert("unit_of_measurement".into(), json!(u));
        }
        if let Some(dc) = dc {
            m.insert("device_class".into(), json!(dc));
        }
        if let Some(sc) = sc {
            m.insert("state_class".into(), json!(sc));
        }
    }
    Some((topic, Json::Object(m)))
}

/// The retained discovery config of a command entity for a writable register: a `select`
/// for an enum, a `number` from the profile's range otherwise. `state`: the region and field
/// where its value is read back, if it is readable.
pub fn command(
    topics: &Topics,
    device: &HaDevice,
    register: &Register,
    state: Option<(&RegionPlan, &Field)>,
) -> Option<(String, Json)> {
    let object = sanitize(&register.name);
    let component = if register.enumeration.is_some() {
        "select"
    } else {
        "number"
    };
    let topic = topics.config(component, &object)?;
    let region = state.map_or("commands", |(r, _)| r.name.as_str());
    let mut m = common(topics, device, region);
    if state.is_none() {
        // Write-only: only the gateway's availability applies.
        m.insert("availability".into(), json!([{"topic": topics.gateway()}]));
    }
    let name = display_name(&register.name, register.label.as_deref());
    m.insert("name".into(), json!(format!("{name} (set)")));
    m.insert(
        "unique_id".into(),
        json!(format!("{}_{object}_set", device.id)),
    );
    device.ids(&mut m, component, &register.name);
    m.insert(
        "command_topic".into(),
        json!(topics.command(&register.name)),
    );
    if let Some((r, f)) = state {
        m.insert("state_topic".into(), json!(topics.state(&r.name)));
        m.insert(
            "value_template".into(),
            json!(format!("{{{{ value_json.{} }}}}", f.key)),
        );
    } else {
        m.insert("optimistic".into(), json!(true));
    }
    if let Some(table) = &register.enumeration {
        let options: Vec<&String> = table.values().collect();
        m.insert("options".into(), json!(options));
    } else {
        let scale = register.scale;
        let (lo, hi) = register.range.unwrap_or(match register.kind {
            crate::control::profile::Kind::S16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
            _ => (0, i64::from(u16::MAX)),
        });
        m.insert(
            "min".into(),
            json!(crate::control::profile::round(lo as f64 * scale)),
        );
        m.insert(
            "max".into(),
            json!(crate::control::profile::round(hi as f64 * scale)),
        );
        m.insert("step".into(), json!(scale));
        m.insert("mode".into(), json!("box"));
        if let Some(u) = &register.unit {
            m.insert("unit_of_measurement".into(), json!(u));
        }
    }
    Some((topic, Json::Object(m)))
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::spec;
    use super::*;
    use airbridge_modbus::model::Table;
    use std::time::Duration;

    fn cfg() -> MqttConfig {
        MqttConfig {
            host: "h".into(),
            port: 1883,
            tls: false,
            client_id: "c".into(),
            username: None,
            password_file: None,
            ca_file: None,
            topic: "home/meter".into(),
            interval: Duration::from_secs(1),
            discovery: Some("homeassistant".into()),
            commands: false,
        }
    }

    fn load(name: &str) -> crate::control::profile::Profile {
        let p = format!("{}/../../profiles/{name}", env!("CARGO_MANIFEST_DIR"));
        crate::control::profile::load(std::path::Path::new(&p)).unwrap()
    }

    #[test]
    fn a_power_sensor_carries_every_key() {
        let topics = Topics::new(&cfg());
        let p = load("ksem-g2.yaml");
        let plan = super::super::state::plan(&[spec("totals", 0, 40, None)], &p);
        let mut ident = Map::new();
        ident.insert("serial_number".into(), json!("7310000123"));
        ident.insert("vendor_name".into(), json!("KOSTAL"));
        ident.insert("product_name".into(), json!("KOSTAL Smart Energy Meter"));
        ident.insert("firmware_version".into(), json!(258));
        let dev = HaDevice::new(&p.name, &p.short_name, &topics.node, &ident);
        let f = plan[0].field("active_power_import").unwrap();
        let (topic, c) = sensor(&topics, &dev, &plan[0], f).unwrap();
        assert_eq!(
            topic,
            "homeassistant/sensor/home_meter/active_power_import/config"
        );
        // The label reads as the name (it slugs to `active_power_import`): kept.
        assert_eq!(c["name"], "Active power + (import)");
        assert_eq!(c["unique_id"], "airbridge_7310000123_active_power_import");
        assert_eq!(c["default_entity_id"], "sensor.ksem_active_power_import");
        assert_eq!(c["object_id"], "ksem_active_power_import");
        assert_eq!(c["state_topic"], "home/meter/totals/state");
        assert_eq!(c["value_template"], "{{ value_json.active_power_import }}");
        assert_eq!(c["unit_of_measurement"], "W");
        assert_eq!(c["device_class"], "power");
        assert_eq!(c["state_class"], "measurement");
        assert_eq!(c["availability_mode"], "all");
        assert_eq!(
            c["availability"],
            json!([{"topic": "home/meter/status"}, {"topic": "home/meter/totals/availability"}])
        );
        assert_eq!(c["device"]["identifiers"], json!(["airbridge_7310000123"]));
        assert_eq!(c["device"]["manufacturer"], "KOSTAL");
        assert_eq!(c["device"]["model"], "KOSTAL Smart Energy Meter");
        assert_eq!(c["device"]["sw_version"], "258");
    }

    #[test]
    fn classes_from_units() {
        assert_eq!(
            classes(Some("Wh"), "x"),
            (Some("energy"), Some("total_increasing"))
        );
        assert_eq!(
            classes(Some("kWh"), "x"),
            (Some("energy"), Some("total_increasing"))
        );
        assert_eq!(
            classes(Some("V"), "x"),
            (Some("voltage"), Some("measurement"))
        );
        assert_eq!(
            classes(Some("A"), "x"),
            (Some("current"), Some("measurement"))
        );
        assert_eq!(
            classes(Some("Hz"), "x"),
            (Some("frequency"), Some("measurement"))
        );
        assert_eq!(
            classes(Some("var"), "x"),
            (Some("reactive_power"), Some("measurement"))
        );
        assert_eq!(
            classes(Some("VA"), "x"),
            (Some("apparent_power"), Some("measurement"))
        );
        assert_eq!(classes(Some("%"), "x"), (None, Some("measurement")));
        assert_eq!(
            classes(None, "power_factor_l1"),
            (Some("power_factor"), Some("measurement"))
        );
        assert_eq!(classes(None, "manufacturer_id"), (None, None));
        assert_eq!(
            classes(Some("ms"), "unix_time_ms"),
            (None, Some("measurement"))
        );
    }

    #[test]
    fn without_a_serial_the_device_is_the_node_and_text_has_no_unit() {
        let topics = Topics::new(&cfg());
        let p = load("ksem-g2.yaml");
        let dev = HaDevice::new(&p.name, &p.short_name, &topics.node, &Map::new());
        assert_eq!(dev.id, "airbridge_home_meter");
        assert_eq!(dev.manufacturer, "KOSTAL");
        let plan = super::super::state::plan(&[spec("identity", 8192, 57, None)], &p);
        let f = plan[0].field("serial_number").unwrap();
        let (_, c) = sensor(&topics, &dev, &plan[0], f).unwrap();
        assert!(c.get("unit_of_measurement").is_none());
        assert!(c.get("state_class").is_none());
        let mut off = cfg();
        off.discovery = None;
        assert!(sensor(&Topics::new(&off), &dev, &plan[0], f).is_none());
    }

    #[test]
    fn kstar_commands_are_numbers_from_the_range_and_selects_from_the_enum() {
        let topics = Topics::new(&cfg());
        let p = load("kstar-hybrid.yaml");
        let plan =
            super::super::state::plan(&[spec("settings", 3125, 125, Some(Table::Input))], &p);
        let dev = HaDevice::new(&p.name, &p.short_name, &topics.node, &Map::new());
        let r = p.get("active_power_setting").unwrap();
        let f = plan[0].field("active_power_setting").unwrap();
        let (topic, c) = command(&topics, &dev, r, Some((&plan[0], f))).unwrap();
        assert_eq!(
            topic,
            "homeassistant/number/home_meter/active_power_setting/config"
        );
        assert_eq!(c["command_topic"], "home/meter/set/active_power_setting");
        assert_eq!(c["min"], json!(0.0));
        assert_eq!(c["max"], json!(100.0));
        assert_eq!(c["unit_of_measurement"], "%");
        assert_eq!(c["state_topic"], "home/meter/settings/state");
        assert_eq!(c["default_entity_id"], "number.kstar_active_power_setting");
        assert_eq!(c["object_id"], "kstar_active_power_setting");
        assert_eq!(
            c["unique_id"],
            "airbridge_home_meter_active_power_setting_set"
        );
        let w = p.get("working_mode").unwrap();
        let (topic, c) = command(&topics, &dev, w, None).unwrap();
        assert_eq!(topic, "homeassistant/select/home_meter/working_mode/config");
        assert_eq!(c["default_entity_id"], "select.kstar_working_mode");
        assert_eq!(c["options"].as_array().unwrap().len(), 3);
        assert_eq!(c["availability"], json!([{"topic": "home/meter/status"}]));
    }

    #[test]
    fn each_device_of_devices_has_its_own_topics_node_and_ids() {
        let c = cfg();
        // The one-device form's topics are what they always were.
        let one = Topics::device(&c, "");
        assert_eq!(one.state("live"), Topics::new(&c).state("live"));
        assert_eq!(one.node, "home_meter");
        assert_eq!(
            one.command_name("home/meter/set/working_mode"),
            Some("working_mode")
        );
        let (a, b) = (
            Topics::device(&c, "battery1"),
            Topics::device(&c, "battery2"),
        );
        assert_eq!(a.gateway(), "home/meter/status");
        assert_eq!(a.state("live"), "home/meter/battery1/live/state");
        assert_eq!(
            a.availability("live"),
            "home/meter/battery1/live/availability"
        );
        assert_eq!(a.commands(), "home/meter/battery1/set/+");
        assert_eq!(
            a.result("working_mode"),
            "home/meter/battery1/set/working_mode/result"
        );
        assert_eq!(
            a.config("sensor", "pv1_voltage").as_deref(),
            Some("homeassistant/sensor/home_meter_battery1/pv1_voltage/config")
        );
        // A command is routed by its device level only.
        assert_eq!(a.command_name("home/meter/battery1/set/x"), Some("x"));
        assert_eq!(b.command_name("home/meter/battery1/set/x"), None);
        assert_eq!(a.command_name("home/meter/battery1/set/x/result"), None);
        assert_eq!(a.command_name("home/meter/battery10/set/x"), None);
        assert_eq!(a.command_name("home/meter/battery1/set/"), None);
        for t in [&a, &b] {
            for topic in [t.state("live"), t.commands(), t.result("x")] {
                assert!(!topic.contains('#') && !topic.contains('.'), "{topic}");
            }
        }

        // Same profile, same serial (or none): still two HA devices, and no entity shared.
        let p = load("kstar-hybrid.yaml");
        let plan = super::super::state::plan(&[spec("live", 3000, 125, Some(Table::Input))], &p);
        let f = &plan[0].fields[0];
        let mut serial = Map::new();
        serial.insert("serial_number".into(), json!("KS-1"));
        for values in [Map::new(), serial] {
            let da = HaDevice::named("battery1", &p.name, &a.node, &values);
            let db = HaDevice::named("battery2", &p.name, &b.node, &values);
            assert_ne!(da.id, db.id);
            assert_eq!(da.name, "battery1");
            let (ta, ca) = sensor(&a, &da, &plan[0], f).unwrap();
            let (tb, cb) = sensor(&b, &db, &plan[0], f).unwrap();
            assert_ne!(ta, tb);
            assert_ne!(ca["unique_id"], cb["unique_id"]);
            assert_ne!(ca["device"]["identifiers"], cb["device"]["identifiers"]);
            assert_eq!(ca["state_topic"], "home/meter/battery1/live/state");
            let id = format!("sensor.battery1_{}", f.key);
            assert_eq!(ca["default_entity_id"], json!(id));
            assert_ne!(ca["default_entity_id"], cb["default_entity_id"]);
            assert_eq!(
                ca["availability"][1]["topic"],
                "home/meter/battery1/live/availability"
            );
        }
        let with = HaDevice::named("battery1", &p.name, &a.node, &{
            let mut m = Map::new();
            m.insert("serial_number".into(), json!("KS 1"));
            m
        });
        assert_eq!(with.id, "airbridge_home_meter_battery1_KS_1");
        assert_eq!(with.serial_number.as_deref(), Some("KS 1"));
    }

    #[test]
    fn display_names_read_as_the_value_name() {
        assert_eq!(
            display_name("active_power_import_l1", Some("Active power + L1")),
            "Active power import L1"
        );
        assert_eq!(
            display_name("active_power_export_l1", Some("Active power - L1")),
            "Active power export L1"
        );
        // A label that reads as the name is kept, with its capitals and signs.
        assert_eq!(display_name("current_l1", Some("Current L1")), "Current L1");
        assert_eq!(
            display_name("active_power_import", Some("Active power + (import)")),
            "Active power + (import)"
        );
        assert_eq!(display_name("bat_soc", Some("Battery SOC")), "Bat soc");
        assert_eq!(display_name("pv1_voltage", None), "PV1 voltage");
        assert_eq!(display_name("dsp2_version", None), "Dsp2 version");
        assert_eq!(display_name("x__y_", None), "X y");
    }

    /// Every entity of `profile` on one device: (component, config) of every readable value
    /// (a region per table over the whole address space) and of every writable register.
    fn every_entity(profile: &str, device: &str) -> Vec<(String, Json)> {
        let c = cfg();
        let p = load(profile);
        let topics = Topics::device(&c, device);
        let specs = [
            spec("input", 0, u16::MAX, Some(Table::Input)),
            spec("holding", 0, u16::MAX, Some(Table::Holding)),
        ];
        let plan = super::super::state::plan(&specs, &p);
        let dev = if device.is_empty() {
            HaDevice::new(&p.name, &p.short_name, &topics.node, &Map::new())
        } else {
            HaDevice::named(device, &p.name, &topics.node, &Map::new())
        };
        let mut out = Vec::new();
        for r in &plan {
            for f in &r.fields {
                out.push(sensor(&topics, &dev, r, f).unwrap());
            }
        }
        for reg in p.registers.iter().filter(|r| r.access.writable()) {
            out.push(command(&topics, &dev, reg, None).unwrap());
        }
        out
    }

    #[test]
    fn every_shipped_profile_gives_unique_ids_of_the_documented_form() {
        let entity_id = |id: &str, prefix: &str| {
            let (domain, object) = id.split_once('.').unwrap_or(("", ""));
            ["sensor", "number", "select"].contains(&domain)
                && object.starts_with(&format!("{prefix}_"))
                && object.split('_').all(|w| {
                    !w.is_empty()
                        && w.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                })
        };
        for (profile, prefix) in [
            ("ksem-g2.yaml", "ksem"),
            ("kstar-hybrid.yaml", "kstar"),
            ("kstar-ksg1-60k.yaml", "kstar"),
            ("kstar-ksg1-250k.yaml", "kstar"),
        ] {
            for (device, prefix) in [("", prefix), ("battery1", "battery1")] {
                let all = every_entity(profile, device);
                let mut ids = std::collections::HashSet::new();
                let mut unique_ids = std::collections::HashSet::new();
                let mut topics = std::collections::HashSet::new();
                let mut names = std::collections::HashSet::new();
                for (topic, c) in &all {
                    let id = c["default_entity_id"].as_str().unwrap();
                    assert!(entity_id(id, prefix), "{profile}: {id}");
                    assert_eq!(Some(id.split_once('.').unwrap().1), c["object_id"].as_str());
                    assert!(ids.insert(id.to_string()), "{profile}: {id} twice");
                    let uid = c["unique_id"].as_str().unwrap().to_string();
                    assert!(unique_ids.insert(uid.clone()), "{profile}: {uid} twice");
                    assert!(topics.insert(topic.clone()), "{profile}: {topic} twice");
                    // Display names slug apart too (HA's own ids would not collide either).
                    let domain = id.split_once('.').unwrap().0;
                    let name = format!("{domain}.{}", id_slug(c["name"].as_str().unwrap()));
                    assert!(names.insert(name.clone()), "{profile}: {name} twice");
                }
                assert!(all.len() > 60, "{profile}: {} entities", all.len());
            }
        }
        // The documented examples.
        let ksem = every_entity("ksem-g2.yaml", "");
        let id = |c: &Json| c["default_entity_id"].as_str().unwrap_or("").to_string();
        let ids: Vec<String> = ksem.iter().map(|(_, c)| id(c)).collect();
        for want in [
            "sensor.ksem_active_power_import_l1",
            "sensor.ksem_active_power_export_l1",
            "sensor.ksem_active_energy_import",
        ] {
            assert!(ids.iter().any(|i| i == want), "{want} missing");
        }
        let hybrid = every_entity("kstar-hybrid.yaml", "battery1");
        let ids: Vec<String> = hybrid.iter().map(|(_, c)| id(c)).collect();
        for want in [
            "sensor.battery1_arm_version",
            "sensor.battery1_arm_version_input",
            "select.battery1_working_mode",
        ] {
            assert!(ids.iter().any(|i| i == want), "{want} missing");
        }
    }
}
