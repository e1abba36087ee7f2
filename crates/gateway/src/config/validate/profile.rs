//! The rules that need the register profile: `writable:` entries as written, and
//! [`check_against_profile`] once the profile is loaded. Touches nothing.

use serde_saphyr::Spanned;

use crate::config::schema::{RawConfig, WritableText};
use crate::config::{Config, ConfigError, Table, WritableEntry, WritableTarget};

use super::{line, Validator};

impl Validator<'_> {
    /// The top-level `writable:` (one-device form).
    pub(super) fn writable(&mut self, raw: &RawConfig) -> Result<Vec<WritableEntry>, ConfigError> {
        self.writable_list(
            raw.writable.as_ref(),
            raw.tcp_server.is_some(),
            raw.rtu_poll.is_some(),
            raw.profile.is_some(),
            "writable",
        )
    }

    /// A `writable:` list (top level or a device's) under `key`.
    pub(super) fn writable_list(
        &mut self,
        list: Option<&Spanned<Vec<Spanned<WritableText>>>>,
        have_tcp: bool,
        have_bus: bool,
        have_profile: bool,
        key: &str,
    ) -> Result<Vec<WritableEntry>, ConfigError> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        if list.value.is_empty() {
            return Ok(Vec::new());
        }
        let l = line(list);
        if !have_tcp {
            return Err(self.err(
                l,
                key,
                "writes come from LAN clients: needs a `tcp_server:` section",
            ));
        }
        if !have_bus {
            return Err(self.err(
                l,
                key,
                "writes go to the device's bus: needs an `rtu_poll:` section",
            ));
        }
        if !have_profile {
            return Err(self.err(
                l,
                key,
                "needs a `profile:` that says which registers are writable and their ranges",
            ));
        }
        let mut out: Vec<WritableEntry> = Vec::new();
        for e in &list.value {
            let target = match &e.value {
                WritableText::Address(a) => WritableTarget::Address(*a),
                WritableText::Name(n) if n.trim().is_empty() => {
                    return Err(self.err(line(e), key, "empty register name"))
                }
                WritableText::Name(n) => WritableTarget::Name(n.trim().to_string()),
            };
            if out.iter().any(|o| o.target == target) {
                return Err(self.err(line(e), key, format!("{target} is listed twice")));
            }
            out.push(WritableEntry {
                target,
                line: line(e),
            });
        }
        Ok(out)
    }
}

/// Check a config against its loaded profile: every region that names a function covers
/// registers of that table, and every `writable:` entry is writable in the profile.
/// Returns warnings; errors carry the line of the offending entry.
pub fn check_against_profile(
    config: &Config,
    profile: &crate::control::profile::Profile,
    origin: &str,
) -> Result<Vec<String>, ConfigError> {
    check_device_against_profile(config, None, profile, origin)
}

/// [`check_against_profile`] for one device of `devices:` (`Some(index)`: its regions and
/// its `writable:`), or for the whole one-device config (`None`).
pub fn check_device_against_profile(
    config: &Config,
    device: Option<usize>,
    profile: &crate::control::profile::Profile,
    origin: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let err = |line: u64, key: String, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        line,
        key,
        message,
    };
    let regions = config
        .regions
        .iter()
        .filter(|r| device.is_none_or(|d| r.device == d));
    for r in regions {
        let l = config.region_lines.get(&r.name).copied().unwrap_or(0);
        let Some(f) = r.table else { continue };
        if r.source.fixed {
            continue;
        }
        if profile.overlapping(f, r.start, r.count).next().is_none() {
            let other = match f {
                Table::Input => Table::Holding,
                Table::Holding => Table::Input,
            };
            let hint = if profile
                .overlapping(other, r.start, r.count)
                .next()
                .is_some()
            {
                format!("; the profile has {} registers there", other.as_str())
            } else {
                String::new()
            };
            return Err(err(
                l,
                format!("regions ({}).function", r.name),
                format!(
                    "the profile `{}` has no {} registers in {}..{}{hint}",
                    profile.name,
                    f.as_str(),
                    r.start,
                    r.end() - 1
                ),
            ));
        }
        // A multi-word value cut by the region's edge would be served torn.
        for reg in profile.overlapping(f, r.start, r.count) {
            if reg.address < r.start || reg.end() > r.end() {
                warnings.push(format!(
                    "{origin}:{l}: regions ({}): {} ({}..{}) is cut by the region's edge",
                    r.name,
                    reg.name,
                    reg.address,
                    reg.end() - 1
                ));
            }
        }
    }
    let (writable, key) = match device.and_then(|d| config.devices.get(d)) {
        Some(d) => (&d.writable, format!("devices ({}).writable", d.name)),
        None => (&config.writable, "writable".to_string()),
    };
    crate::control::writes::WritePolicy::resolve(profile, writable)
        .map_err(|(line, message)| err(line, key.clone(), message))?;
    Ok(warnings)
}
