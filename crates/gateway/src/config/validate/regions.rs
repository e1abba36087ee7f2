//! The `regions:` rules: names, bounds, overlaps, sources and their sections, staleness
//! and static values. Touches nothing.
//!
//! [`Validator::regions`] walks the list; each concern of one entry has its own step, in
//! the order the messages come: name, extent, source, function, `every`,
//! `fallback_poll`, `values`, staleness (`max_age`, `on_stale`), overlap.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::config::schema::{DurationText, RawRegion, SourceText};
use crate::config::{ConfigError, OnStale, Region, Sources, Table};

use super::{line, DeviceScope, Validator};

/// One `regions:` entry being validated: what it says, where, and how its keys read.
struct Entry<'r> {
    /// The entry as written.
    raw: &'r RawRegion,
    /// Its line.
    line: u64,
    /// `regions[i]` (with the device's prefix), before the name is known to be good.
    index_key: String,
}

impl Entry<'_> {
    /// The key of one of its fields, e.g. `regions[0] (live).every`.
    fn key(&self, field: &str) -> String {
        format!("{} ({}).{field}", self.index_key, self.raw.name)
    }
}

/// What the list's entries may use: the sections the config has, and the device whose
/// regions they are (if any).
struct Sections<'d> {
    /// A `push:` section.
    push: bool,
    /// A `poll:` section.
    poll: bool,
    /// A `rtu_poll:` section.
    rtu_poll: bool,
    /// The device of `devices:` the list belongs to.
    device: Option<&'d DeviceScope<'d>>,
}

/// The regions validated so far, with their lines.
type Earlier = [(Region, u64)];

/// The topic level under which MQTT commands arrive (`<topic>/set/<register>`).
const MQTT_COMMAND_LEVEL: &str = "set";

impl Validator<'_> {
    pub(super) fn regions(
        &mut self,
        raw: &Spanned<Vec<Spanned<RawRegion>>>,
        have_push: bool,
        have_poll: bool,
        device: Option<&DeviceScope<'_>>,
    ) -> Result<Vec<Region>, ConfigError> {
        let prefix = device.map_or_else(String::new, |d| d.key.clone());
        if raw.value.is_empty() {
            return Err(self.err(
                line(raw),
                &format!("{prefix}regions"),
                "at least one region is needed",
            ));
        }
        let sections = Sections {
            push: have_push,
            poll: have_poll,
            rtu_poll: self.have_rtu_poll,
            device,
        };
        let mut out: Vec<(Region, u64)> = Vec::new();
        for (i, sr) in raw.value.iter().enumerate() {
            let entry = Entry {
                raw: &sr.value,
                line: line(sr),
                index_key: format!("{prefix}regions[{i}]"),
            };
            let region = self.region(&entry, &sections, &out)?;
            self.no_overlap(&entry, &region, &out)?;
            out.push((region, entry.line));
        }
        let mut regions: Vec<Region> = out.into_iter().map(|(r, _)| r).collect();
        if let Some(d) = device {
            // Unique across the bus (logs, reload, the image's index); labels show the parts.
            for r in &mut regions {
                r.name = format!("{}.{}", d.name, r.name);
                r.device = d.index;
            }
        }
        regions.sort_by_key(|r| r.start);
        Ok(regions)
    }

    /// One entry, every rule but the overlap with the earlier ones.
    fn region(
        &mut self,
        e: &Entry<'_>,
        sections: &Sections<'_>,
        earlier: &Earlier,
    ) -> Result<Region, ConfigError> {
        self.region_name(e, earlier)?;
        let count = self.region_count(e)?;
        let source = self.region_source(e, sections)?;
        let function = self.region_function(e, source, earlier)?;
        let every = self.region_every(e, source)?;
        let fallback_poll = self.region_fallback_poll(e, source, sections.poll)?;
        let values = self.region_values(e, source, count)?;
        let (max_age, on_stale) = self.staleness(e, source, every, fallback_poll)?;
        Ok(Region {
            name: e.raw.name.clone(),
            start: e.raw.start,
            count,
            source,
            every,
            max_age,
            on_stale,
            fallback_poll,
            values,
            table: function,
            device: 0,
        })
    }

    /// A name, not used by an earlier entry (nor `set` with `mqtt:`).
    fn region_name(&self, e: &Entry<'_>, earlier: &Earlier) -> Result<(), ConfigError> {
        if e.raw.name.trim().is_empty() {
            return Err(self.err(
                e.line,
                &format!("{}.name", e.index_key),
                "must not be empty",
            ));
        }
        if let Some((other, _)) = earlier.iter().find(|(o, _)| o.name == e.raw.name) {
            return Err(self.err(
                e.line,
                &e.key("name"),
                format!("`{}` is used twice", other.name),
            ));
        }
        if self.have_mqtt && e.raw.name == MQTT_COMMAND_LEVEL {
            // <topic>/set/state would fall under the command subscription <topic>/set/+.
            return Err(self.err(
                e.line,
                &e.key("name"),
                "`set` is the MQTT command level (<topic>/set/<register>); a region named so \
                 would publish its state where commands are taken: choose another name",
            ));
        }
        Ok(())
    }

    /// `count`: at least one register, none past 65535.
    fn region_count(&self, e: &Entry<'_>) -> Result<u16, ConfigError> {
        let count = e.raw.count.value;
        if count == 0 {
            return Err(self.err(line(&e.raw.count), &e.key("count"), "must be at least 1"));
        }
        if u32::from(e.raw.start) + u32::from(count) > 65_536 {
            return Err(self.err(
                line(&e.raw.count),
                &e.key("count"),
                "region runs past register 65535",
            ));
        }
        Ok(count)
    }

    /// `source` (a device's default: `rtu_poll`), which a device restricts and whose
    /// sections must exist.
    fn region_source(
        &self,
        e: &Entry<'_>,
        sections: &Sections<'_>,
    ) -> Result<Sources, ConfigError> {
        let (source, at) = match (&e.raw.source, sections.device) {
            (Some(s), _) => (self.sources(s, &e.key("source"))?, line(s)),
            (None, Some(_)) => (
                Sources {
                    rtu_poll: true,
                    ..Sources::default()
                },
                e.line,
            ),
            (None, None) => {
                return Err(self.err(
                    e.line,
                    &e.key("source"),
                    "missing; write push, poll, static, [push, poll] or rtu_poll",
                ))
            }
        };
        if sections.device.is_some() && !(source.rtu_poll || source.fixed) {
            return Err(self.err(
                at,
                &e.key("source"),
                "a device's regions are polled on its bus (rtu_poll, the default) or static",
            ));
        }
        // (the source uses it, the config has it, what is missing)
        let needs = [
            (
                source.push,
                sections.push,
                "takes pushes but there is no `push:` section",
            ),
            (
                source.poll,
                sections.poll,
                "is polled but there is no `poll:` section",
            ),
            (
                source.rtu_poll,
                sections.rtu_poll,
                "is polled over RTU but there is no `rtu_poll:` section",
            ),
        ];
        if let Some((_, _, missing)) = needs.iter().find(|(uses, has, _)| *uses && !*has) {
            return Err(self.err(at, &e.key("source"), *missing));
        }
        Ok(source)
    }

    /// `function`: needed by RTU polling, and written by every entry or by none.
    fn region_function(
        &self,
        e: &Entry<'_>,
        source: Sources,
        earlier: &Earlier,
    ) -> Result<Option<Table>, ConfigError> {
        let function = e.raw.function.as_ref().map(|f| f.value);
        if source.rtu_poll && function.is_none() {
            return Err(self.err(
                e.line,
                &e.key("function"),
                "a region polled over RTU needs `function: input` (read with FC04) or `function: holding` (FC03)",
            ));
        }
        if let Some((o, ol)) = earlier
            .iter()
            .find(|(o, _)| o.table.is_some() != function.is_some())
        {
            return Err(self.err(
                e.raw.function.as_ref().map_or(e.line, line),
                &e.key("function"),
                format!(
                    "either every region names its function or none does; region `{}` (line {ol}) {}",
                    o.name,
                    if o.table.is_some() { "does" } else { "does not" }
                ),
            ));
        }
        Ok(function)
    }

    /// `every`: what a polled region needs and no other has.
    fn region_every(
        &self,
        e: &Entry<'_>,
        source: Sources,
    ) -> Result<Option<Duration>, ConfigError> {
        let every = e
            .raw
            .every
            .as_ref()
            .map(|d| self.positive(d, &e.key("every")))
            .transpose()?;
        let polled = source.poll || source.rtu_poll;
        if polled && every.is_none() {
            return Err(self.err(
                e.line,
                &e.key("every"),
                "a polled region needs `every`, e.g. every: 10s",
            ));
        }
        if let (false, Some(d)) = (polled, &e.raw.every) {
            return Err(self.err(
                line(d),
                &e.key("every"),
                "only polled regions have `every`; for a push region use fallback_poll",
            ));
        }
        Ok(every)
    }

    /// `fallback_poll`: only for push-alone regions, and only with a `poll:` section.
    fn region_fallback_poll(
        &self,
        e: &Entry<'_>,
        source: Sources,
        have_poll: bool,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(f) = &e.raw.fallback_poll else {
            return Ok(None);
        };
        let fallback_poll = self.positive(f, &e.key("fallback_poll"))?;
        if !source.push || source.poll {
            return Err(self.err(
                line(f),
                &e.key("fallback_poll"),
                "only for regions whose source is push alone",
            ));
        }
        if !have_poll {
            return Err(self.err(
                line(f),
                &e.key("fallback_poll"),
                "needs a `poll:` section to poll from",
            ));
        }
        Ok(Some(fallback_poll))
    }

    /// `values`: what a static region needs (inside the region) and no other has.
    fn region_values(
        &self,
        e: &Entry<'_>,
        source: Sources,
        count: u16,
    ) -> Result<BTreeMap<u16, u16>, ConfigError> {
        let v = match (&e.raw.values, source.fixed) {
            (Some(v), true) => v,
            (Some(v), false) => {
                return Err(self.err(
                    line(v),
                    &e.key("values"),
                    "only static regions have `values`",
                ))
            }
            (None, true) => {
                return Err(self.err(
                    e.line,
                    &e.key("values"),
                    "a static region needs `values`, e.g. values: {8244: 200}",
                ))
            }
            (None, false) => return Ok(BTreeMap::new()),
        };
        let start = e.raw.start;
        let end = u32::from(start) + u32::from(count);
        if let Some(a) = v.value.keys().find(|&&a| a < start || u32::from(a) >= end) {
            return Err(self.err(
                line(v),
                &e.key("values"),
                format!("address {a} lies outside the region {start}..{}", end - 1),
            ));
        }
        Ok(v.value.clone())
    }

    /// `max_age` and `on_stale` (defaults by source), with the warnings about them and
    /// about a `fallback_poll` slower than the region ages.
    fn staleness(
        &mut self,
        e: &Entry<'_>,
        source: Sources,
        every: Option<Duration>,
        fallback_poll: Option<Duration>,
    ) -> Result<(Duration, OnStale), ConfigError> {
        let (default_age, default_stale) = default_staleness(source, every);
        let max_age = match &e.raw.max_age {
            Some(m) => self.max_age(e, m, source, every)?,
            None => default_age,
        };
        if let Some(f) = fallback_poll {
            if f > max_age {
                self.warn(e.line, &e.key("fallback_poll"), format_args!("{f:?} is longer than max_age {max_age:?}; the fallback cannot keep the region fresh"));
            }
        }
        let on_stale = e.raw.on_stale.unwrap_or(default_stale);
        if source.push && !source.poll && on_stale == OnStale::Serve {
            self.warn(
                e.line,
                &e.key("on_stale"),
                "serve: a control loop may be fed old numbers when the KSEM stops pushing",
            );
        }
        Ok((max_age, on_stale))
    }

    /// A written `max_age`: warned about when shorter than the poll interval, ignored
    /// (with a warning) on a static region.
    fn max_age(
        &mut self,
        e: &Entry<'_>,
        m: &Spanned<DurationText>,
        source: Sources,
        every: Option<Duration>,
    ) -> Result<Duration, ConfigError> {
        let v = self.positive(m, &e.key("max_age"))?;
        if let Some(every) = every {
            if v < every {
                self.warn(line(m), &e.key("max_age"), format_args!("{v:?} is shorter than the poll interval {every:?}; the region will be stale between polls"));
            }
        }
        if source.fixed {
            self.warn(
                line(m),
                &e.key("max_age"),
                "a static region never ages; max_age is ignored",
            );
            return Ok(Duration::MAX);
        }
        Ok(v)
    }

    /// Regions of one table may not share a register; regions of different tables (input,
    /// holding) may share numbers.
    fn no_overlap(
        &self,
        e: &Entry<'_>,
        region: &Region,
        earlier: &Earlier,
    ) -> Result<(), ConfigError> {
        let Some((o, ol)) = earlier.iter().find(|(o, _)| {
            o.table == region.table
                && u32::from(o.start) < region.end()
                && u32::from(region.start) < o.end()
        }) else {
            return Ok(());
        };
        Err(self.err(
            e.line,
            &e.key("start"),
            format!(
                "{}..{} overlaps region `{}` ({}..{}, line {ol})",
                region.start,
                region.end() - 1,
                o.name,
                o.start,
                o.end() - 1
            ),
        ))
    }

    pub(super) fn sources(
        &self,
        s: &Spanned<SourceText>,
        key: &str,
    ) -> Result<Sources, ConfigError> {
        let names: Vec<&str> = match &s.value {
            SourceText::One(one) => vec![one.as_str()],
            SourceText::Many(many) => many.iter().map(String::as_str).collect(),
        };
        let mut out = Sources::default();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(self.err(line(s), key, format!("`{n}` is listed twice")));
            }
            match n.trim() {
                "push" => out.push = true,
                "poll" => out.poll = true,
                "static" => out.fixed = true,
                "rtu_poll" => out.rtu_poll = true,
                other => {
                    return Err(self.err(
                        line(s),
                        key,
                        format!("unknown source `{other}`; use push, poll, static, [push, poll] or rtu_poll"),
                    ))
                }
            }
        }
        if names.is_empty() {
            return Err(self.err(
                line(s),
                key,
                "empty; use push, poll, static or [push, poll]",
            ));
        }
        if out.fixed && (out.push || out.poll) {
            return Err(self.err(line(s), key, "static cannot be combined with push or poll"));
        }
        if out.rtu_poll && names.len() > 1 {
            return Err(self.err(
                line(s),
                key,
                "rtu_poll cannot be combined with other sources",
            ));
        }
        Ok(out)
    }
}

/// The `max_age` and `on_stale` of a region that writes neither: push 2 s / silence;
/// polled 3 × every / serve; static never ages. RTU-polled regions: 3 × every / exception
/// (0B over TCP: the device is silent).
fn default_staleness(source: Sources, every: Option<Duration>) -> (Duration, OnStale) {
    let three_polls = every.unwrap_or(Duration::from_secs(1)).saturating_mul(3);
    if source.rtu_poll {
        (three_polls, OnStale::Exception)
    } else if source.poll {
        (three_polls, OnStale::Serve)
    } else if source.push {
        (Duration::from_secs(2), OnStale::Silence)
    } else {
        (Duration::MAX, OnStale::Serve)
    }
}
