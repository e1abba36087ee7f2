//! `devices:`: several devices on the `rtu_poll:` bus, and the normalisation of the
//! one-device form (top-level `profile`/`writable`/regions, `rtu_poll.unit_id`,
//! `tcp_server.unit_id`) into a one-element device list, so the rest of the gateway has one
//! code path. The two forms exclude each other. Touches nothing.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use crate::config::schema::{RawConfig, RawDevice};
use crate::config::{ConfigError, DeviceConfig, ProfileRef, Region, UnitIds};

use super::{line, Validator};

/// A device whose regions are being validated: where its keys and names come from.
pub(super) struct DeviceScope<'a> {
    /// Its index in `Config::devices` (set on its regions).
    pub(super) index: usize,
    /// Its name (prefix of its regions' names).
    pub(super) name: &'a str,
    /// The key prefix of its messages, e.g. `devices[1] (battery2).`.
    pub(super) key: String,
}

/// The KSTAR documents' address range for devices on one bus.
const KSTAR_ADDRESSES: std::ops::RangeInclusive<i64> = 1..=32;

impl Validator<'_> {
    /// `devices:` is written: the one-device keys must not be, and `rtu_poll:` must.
    pub(super) fn devices_exclusive(
        &self,
        raw: &RawConfig,
        list: &Spanned<Vec<Spanned<RawDevice>>>,
    ) -> Result<(), ConfigError> {
        let why = |what: &str| {
            format!("`devices:` and the one-device form exclude each other; give each device its `{what}`")
        };
        if let Some(p) = &raw.profile {
            return Err(self.err(line(p), "profile", why("profile:")));
        }
        if let Some(w) = &raw.writable {
            return Err(self.err(line(w), "writable", why("writable:")));
        }
        if let Some(r) = &raw.regions {
            return Err(self.err(line(r), "regions", why("regions:")));
        }
        let Some(p) = &raw.rtu_poll else {
            return Err(self.err(
                line(list),
                "devices",
                "devices are polled on a bus: needs an `rtu_poll:` section",
            ));
        };
        if line(&p.value.unit_id) != 0 {
            return Err(self.err(line(&p.value.unit_id), "rtu_poll.unit_id", why("unit_id:")));
        }
        if let Some(u) = raw
            .tcp_server
            .as_ref()
            .and_then(|t| t.value.unit_id.as_ref())
        {
            return Err(self.err(line(u), "tcp_server.unit_id", why("tcp_unit_id:")));
        }
        if list.value.is_empty() {
            return Err(self.err(line(list), "devices", "at least one device is needed"));
        }
        Ok(())
    }

    /// The devices of `devices:` and all their regions (named `device.region`).
    pub(super) fn devices(
        &mut self,
        raw: &RawConfig,
        list: &Spanned<Vec<Spanned<RawDevice>>>,
        region_lines: &mut BTreeMap<String, u64>,
    ) -> Result<(Vec<DeviceConfig>, Vec<Region>), ConfigError> {
        let mut devices: Vec<DeviceConfig> = Vec::with_capacity(list.value.len());
        let mut regions = Vec::new();
        for (i, sd) in list.value.iter().enumerate() {
            let d = &sd.value;
            let name = self.device_name(d, i, &devices)?;
            let key = format!("devices[{i}] ({name}).");
            let (unit_id, tcp_unit_id) = self.device_units(d, &key, &devices)?;
            let profile = self.device_profile(d, &key)?;
            let writable = self.writable_list(
                d.writable.as_ref(),
                raw.tcp_server.is_some(),
                true,
                profile.is_some(),
                &format!("{key}writable"),
            )?;
            let dev = DeviceScope {
                index: i,
                name,
                key: key.clone(),
            };
            for r in &d.regions.value {
                region_lines.insert(format!("{name}.{}", r.value.name), line(r));
            }
            regions.extend(self.regions(&d.regions, false, false, Some(&dev))?);
            devices.push(DeviceConfig {
                name: name.to_string(),
                unit_id,
                tcp_unit_id: UnitIds::Only(vec![tcp_unit_id]),
                profile,
                writable,
            });
        }
        Ok((devices, regions))
    }

    /// The name of device `i`: letters, digits, `_` or `-`, not used by an earlier one, nor
    /// one with the same Home Assistant id (its entity ids start with it: `Bat-1` and
    /// `bat_1` are both `bat_1`).
    fn device_name<'d>(
        &self,
        d: &'d RawDevice,
        i: usize,
        earlier: &[DeviceConfig],
    ) -> Result<&'d str, ConfigError> {
        let name = d.name.value.trim();
        if !name.chars().any(|c| c.is_ascii_alphanumeric())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self.err(
                line(&d.name),
                &format!("devices[{i}].name"),
                "must be letters, digits, `_` or `-` (it names the device in metrics and logs)",
            ));
        }
        if earlier.iter().any(|o| o.name == name) {
            return Err(self.err(
                line(&d.name),
                &format!("devices[{i}] ({name}).name"),
                format!("`{name}` is used twice"),
            ));
        }
        let id = crate::control::profile::id_slug(name);
        if let Some(o) = earlier
            .iter()
            .find(|o| crate::control::profile::id_slug(&o.name) == id)
        {
            return Err(self.err(
                line(&d.name),
                &format!("devices[{i}] ({name}).name"),
                format!(
                    "`{name}` and `{}` give the same Home Assistant entity ids (`sensor.{id}_…`); rename one",
                    o.name
                ),
            ));
        }
        Ok(name)
    }

    /// A device's `unit_id` and `tcp_unit_id` (default: its `unit_id`), each its own on
    /// the bus and for LAN clients; a `unit_id` outside KSTAR's range is warned about.
    fn device_units(
        &mut self,
        d: &RawDevice,
        key: &str,
        earlier: &[DeviceConfig],
    ) -> Result<(u8, u8), ConfigError> {
        let unit_id = self.device_unit(&d.unit_id, &format!("{key}unit_id"))?;
        if let Some(o) = earlier.iter().find(|o| o.unit_id == unit_id) {
            return Err(self.err(
                line(&d.unit_id),
                &format!("{key}unit_id"),
                format!("{unit_id} is the address of `{}` too; every device on a bus needs its own address", o.name),
            ));
        }
        if !KSTAR_ADDRESSES.contains(&i64::from(unit_id)) {
            self.warn(
                line(&d.unit_id),
                &format!("{key}unit_id"),
                format_args!("{unit_id} is outside 1..32, the addresses KSTAR devices take"),
            );
        }
        let tcp_unit_id = match &d.tcp_unit_id {
            Some(t) => self.device_unit(t, &format!("{key}tcp_unit_id"))?,
            None => unit_id,
        };
        if let Some(o) = earlier.iter().find(|o| o.tcp_unit_id.accepts(tcp_unit_id)) {
            return Err(self.err(
                d.tcp_unit_id.as_ref().map_or(line(&d.unit_id), line),
                &format!("{key}tcp_unit_id"),
                format!(
                    "{tcp_unit_id} already selects `{}` for LAN clients; give it another `tcp_unit_id`",
                    o.name
                ),
            ));
        }
        Ok((unit_id, tcp_unit_id))
    }

    /// A device's `profile:`, which names a file when written.
    fn device_profile(&self, d: &RawDevice, key: &str) -> Result<Option<ProfileRef>, ConfigError> {
        match &d.profile {
            Some(p) if p.value.trim().is_empty() => Err(self.err(
                line(p),
                &format!("{key}profile"),
                "must name a profile file, e.g. profiles/kstar-hybrid.yaml",
            )),
            Some(p) => Ok(Some(ProfileRef {
                path: p.value.clone().into(),
                line: line(p),
            })),
            None => Ok(None),
        }
    }

    /// A device's RS485 or TCP unit id: 1..=247.
    fn device_unit(&self, v: &Spanned<i64>, key: &str) -> Result<u8, ConfigError> {
        u8::try_from(v.value)
            .ok()
            .filter(|u| (1..=247).contains(u))
            .ok_or_else(|| {
                self.err(
                    line(v),
                    key,
                    format!(
                        "{} is not a device address: 1..247 (0 is broadcast, which never answers)",
                        v.value
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::tests::invalid;
    use crate::config::{parse, UnitIds};

    const BUS: &str = "rtu_poll: {device: /dev/ttyUSB0, baud: 9600}
tcp_server: {listen: '127.0.0.1:0', allow_from: [127.0.0.1]}
";

    fn dev(name: &str, unit: &str) -> String {
        format!("  - name: {name}\n    {unit}\n    regions:\n      - {{name: live, start: 3000, count: 100, function: input, every: 1s}}\n")
    }

    #[test]
    fn two_devices_share_addresses_and_get_their_own_units() {
        let text = format!(
            "{BUS}devices:\n{}{}",
            dev("battery1", "unit_id: 1"),
            dev("battery2", "unit_id: 2\n    tcp_unit_id: 12")
        );
        let loaded = parse(&text, "d.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.warnings.iter().all(|w| !w.contains("unit_id")));
        let c = loaded.config;
        assert_eq!(c.devices.len(), 2);
        assert_eq!((c.devices[0].unit_id, c.devices[1].unit_id), (1, 2));
        assert_eq!(c.devices[0].tcp_unit_id, UnitIds::Only(vec![1]));
        assert_eq!(c.devices[1].tcp_unit_id, UnitIds::Only(vec![12]));
        let names: Vec<(&str, usize)> = c
            .regions
            .iter()
            .map(|r| (r.name.as_str(), r.device))
            .collect();
        assert_eq!(names, [("battery1.live", 0), ("battery2.live", 1)]);
        assert!(c.regions.iter().all(|r| r.source.rtu_poll));
        assert_eq!(c.region_lines.get("battery2.live"), Some(&12));
        // `check` lists the devices; the bus line names no unit of its own.
        let d = c.describe();
        assert!(
            d.contains("\n  battery2: unit 2 tcp unit 12 profile none writable []\n"),
            "{d}"
        );
        assert!(
            d.lines()
                .any(|l| l.starts_with("rtu_poll: ") && !l.contains(" unit ")),
            "{d}"
        );
    }

    #[test]
    fn the_one_device_form_is_one_unnamed_device() {
        let text = format!("{BUS}regions:\n  - {{name: live, start: 3000, count: 100, function: input, source: rtu_poll, every: 1s}}\n");
        let c = parse(&text, "d.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].name, "");
        assert_eq!(c.devices[0].unit_id, 1);
        assert_eq!(c.regions[0].name, "live");
    }

    #[test]
    fn the_two_forms_exclude_each_other() {
        let d = dev("a", "unit_id: 1");
        let (l, key, m) = invalid(&format!("{BUS}profile: p.yaml\ndevices:\n{d}"));
        assert_eq!((l, key.as_str()), (3, "profile"));
        assert!(m.contains("exclude each other"), "{m}");
        let text = format!(
            "rtu_poll: {{device: /dev/ttyUSB0, unit_id: 3}}\ntcp_server: {{listen: '127.0.0.1:0'}}\ndevices:\n{d}"
        );
        assert_eq!(invalid(&text).1, "rtu_poll.unit_id");
        let text = format!(
            "rtu_poll: {{device: /dev/ttyUSB0}}\ntcp_server: {{listen: '127.0.0.1:0', unit_id: 1}}\ndevices:\n{d}"
        );
        assert_eq!(invalid(&text).1, "tcp_server.unit_id");
        let text = format!(
            "{BUS}regions:\n  - {{name: x, start: 0, count: 1, source: static}}\ndevices:\n{d}"
        );
        assert_eq!(invalid(&text).1, "regions");
    }

    #[test]
    fn names_and_unit_ids_are_unique_and_in_range() {
        let two = |a: &str, b: &str| format!("{BUS}devices:\n{a}{b}");
        let (l, key, m) = invalid(&two(&dev("a", "unit_id: 1"), &dev("b", "unit_id: 1")));
        assert_eq!((l, key.as_str()), (9, "devices[1] (b).unit_id"));
        assert!(m.contains("own address"), "{m}");
        let (_, key, _) = invalid(&two(&dev("a", "unit_id: 1"), &dev("a", "unit_id: 2")));
        assert_eq!(key, "devices[1] (a).name");
        // One Home Assistant id for two devices: their entity ids would collide.
        let (_, key, m) = invalid(&two(
            &dev("Bat-1", "unit_id: 1"),
            &dev("bat_1", "unit_id: 2"),
        ));
        assert_eq!(key, "devices[1] (bat_1).name");
        assert!(
            m.contains("`bat_1` and `Bat-1`") && m.contains("sensor.bat_1_"),
            "{m}"
        );
        let (_, key, _) = invalid(&two(&dev("'-'", "unit_id: 1"), ""));
        assert_eq!(key, "devices[0].name");
        let (_, key, _) = invalid(&two(
            &dev("a", "unit_id: 1"),
            &dev("b", "unit_id: 2\n    tcp_unit_id: 1"),
        ));
        assert_eq!(key, "devices[1] (b).tcp_unit_id");
        let (_, key, _) = invalid(&two(&dev("a", "unit_id: 0"), ""));
        assert_eq!(key, "devices[0] (a).unit_id");
        let (_, key, _) = invalid(&two(&dev("a b", "unit_id: 1"), ""));
        assert_eq!(key, "devices[0].name");
        let w = parse(&two(&dev("a", "unit_id: 40"), ""), "d.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
            .warnings;
        assert!(w.iter().any(|w| w.contains("outside 1..32")), "{w:?}");
    }

    #[test]
    fn one_devices_regions_may_not_overlap() {
        let text = format!("{BUS}devices:\n  - name: a\n    unit_id: 1\n    regions:\n      - {{name: x, start: 0, count: 10, function: input, every: 1s}}\n      - {{name: y, start: 5, count: 10, function: input, every: 1s}}\n");
        let (l, key, m) = invalid(&text);
        assert_eq!(
            (l, key.as_str()),
            (8, "devices[0] (a).regions[1] (y).start")
        );
        assert!(m.contains("overlaps"), "{m}");
    }

    #[test]
    fn mqtt_works_with_devices_each_with_its_profile() {
        let with = |name: &str, extra: &str| {
            format!("  - name: {name}\n    unit_id: {}\n    profile: p.yaml\n{extra}    regions:\n      - {{name: live, start: 3000, count: 100, function: input, every: 1s}}\n", name.len())
        };
        let mqtt = "mqtt: {broker: 'mqtt://127.0.0.1', topic: ks, commands: true}\n";
        // Commands, with a `writable:` list on one device: accepted (was refused outright).
        let text = format!(
            "{BUS}{mqtt}devices:\n{}{}",
            with("a", "    writable: [3044]\n"),
            with("bb", "")
        );
        let c = parse(&text, "d.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        assert!(c.mqtt.as_ref().is_some_and(|m| m.commands));
        assert!(c.named_devices());
        // Commands without any device's `writable:` list: refused as in the one-device form.
        let text = format!("{BUS}{mqtt}devices:\n{}{}", with("a", ""), with("bb", ""));
        let (_, key, m) = invalid(&text);
        assert_eq!(key, "mqtt.commands");
        assert!(m.contains("writable"), "{m}");
        // A device without a profile: nothing to name its values by.
        let text = format!(
            "{BUS}{mqtt}devices:\n{}{}",
            with("a", "    writable: [3044]\n"),
            dev("bb", "unit_id: 2")
        );
        let (l, key, m) = invalid(&text);
        assert_eq!((l, key.as_str()), (3, "mqtt"));
        assert!(m.contains("`bb` has no `profile:`"), "{m}");
    }

    #[test]
    fn a_command_warning_names_the_per_device_command_topics() {
        let text = format!(
            "{BUS}mqtt: {{broker: 'mqtts://broker.lan', topic: ks, commands: true}}\ndevices:\n  - name: a\n    unit_id: 1\n    profile: p.yaml\n    writable: [3044]\n    regions:\n      - {{name: live, start: 3000, count: 100, function: input, every: 1s}}\n"
        );
        let w = parse(&text, "d.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
            .warnings;
        let anonymous: Vec<&String> = w.iter().filter(|w| w.contains("mqtt.commands")).collect();
        assert_eq!(anonymous.len(), 1, "{w:?}");
        assert!(
            anonymous[0].starts_with("d.yaml:3: mqtt.commands: on over an anonymous")
                && anonymous[0].contains("ks/+/set/#"),
            "{w:?}"
        );
    }
}
