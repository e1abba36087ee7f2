//! The rules that need the register profile: `writable:` entries as written, and
//! [`check_against_profile`] once the profile is loaded. Touches nothing.

use crate::config::schema::{RawConfig, WritableText};
use crate::config::{Config, ConfigError, Function, WritableEntry, WritableTarget};

use super::{line, Validator};

impl Validator<'_> {
    pub(super) fn writable(&mut self, raw: &RawConfig) -> Result<Vec<WritableEntry>, ConfigError> {
        let Some(list) = &raw.writable else {
            return Ok(Vec::new());
        };
        if list.value.is_empty() {
            return Ok(Vec::new());
        }
        let l = line(list);
        if raw.tcp_server.is_none() {
            return Err(self.err(
                l,
                "writable",
                "writes come from LAN clients: needs a `tcp_server:` section",
            ));
        }
        if raw.rtu_poll.is_none() {
            return Err(self.err(
                l,
                "writable",
                "writes go to the device's bus: needs an `rtu_poll:` section",
            ));
        }
        if raw.profile.is_none() {
            return Err(self.err(
                l,
                "writable",
                "needs a `profile:` that says which registers are writable and their ranges",
            ));
        }
        let mut out: Vec<WritableEntry> = Vec::new();
        for e in &list.value {
            let target = match &e.value {
                WritableText::Address(a) => WritableTarget::Address(*a),
                WritableText::Name(n) if n.trim().is_empty() => {
                    return Err(self.err(line(e), "writable", "empty register name"))
                }
                WritableText::Name(n) => WritableTarget::Name(n.trim().to_string()),
            };
            if out.iter().any(|o| o.target == target) {
                return Err(self.err(line(e), "writable", format!("{target} is listed twice")));
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
    let mut warnings = Vec::new();
    let err = |line: u64, key: String, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        line,
        key,
        message,
    };
    for r in &config.regions {
        let l = config.region_lines.get(&r.name).copied().unwrap_or(0);
        let Some(f) = r.function else { continue };
        if r.source.fixed {
            continue;
        }
        if profile.overlapping(f, r.start, r.count).next().is_none() {
            let other = match f {
                Function::Input => Function::Holding,
                Function::Holding => Function::Input,
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
    crate::control::writes::WritePolicy::resolve(profile, &config.writable)
        .map_err(|(line, message)| err(line, "writable".into(), message))?;
    Ok(warnings)
}
