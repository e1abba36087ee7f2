//! The `regions:` rules: names, bounds, overlaps, sources and their sections, staleness
//! and static values. Touches nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::config::schema::{RawRegion, SourceText};
use crate::config::{ConfigError, OnStale, Region, Sources};

use super::{line, Device, Validator};

impl Validator<'_> {
    pub(super) fn regions(
        &mut self,
        raw: &Spanned<Vec<Spanned<RawRegion>>>,
        have_push: bool,
        have_poll: bool,
        device: Option<&Device<'_>>,
    ) -> Result<Vec<Region>, ConfigError> {
        let prefix = device.map_or_else(String::new, |d| d.key.clone());
        if raw.value.is_empty() {
            return Err(self.err(
                line(raw),
                &format!("{prefix}regions"),
                "at least one region is needed",
            ));
        }
        let mut out: Vec<(Region, u64)> = Vec::new();
        for (i, sr) in raw.value.iter().enumerate() {
            let r = &sr.value;
            let l = line(sr);
            let key = |k: &str| format!("{prefix}regions[{i}] ({}).{k}", r.name);
            if r.name.trim().is_empty() {
                return Err(self.err(
                    l,
                    &format!("{prefix}regions[{i}].name"),
                    "must not be empty",
                ));
            }
            if let Some((other, _)) = out.iter().find(|(o, _)| o.name == r.name) {
                return Err(self.err(l, &key("name"), format!("`{}` is used twice", other.name)));
            }
            let count = r.count.value;
            if count == 0 {
                return Err(self.err(line(&r.count), &key("count"), "must be at least 1"));
            }
            if u32::from(r.start) + u32::from(count) > 65_536 {
                return Err(self.err(
                    line(&r.count),
                    &key("count"),
                    "region runs past register 65535",
                ));
            }
            let (source, source_line) = match (&r.source, device) {
                (Some(s), _) => (self.sources(s, &key("source"))?, line(s)),
                (None, Some(_)) => (
                    Sources {
                        rtu_poll: true,
                        ..Sources::default()
                    },
                    l,
                ),
                (None, None) => {
                    return Err(self.err(
                        l,
                        &key("source"),
                        "missing; write push, poll, static, [push, poll] or rtu_poll",
                    ))
                }
            };
            if device.is_some() && !(source.rtu_poll || source.fixed) {
                return Err(self.err(
                    source_line,
                    &key("source"),
                    "a device's regions are polled on its bus (rtu_poll, the default) or static",
                ));
            }
            if source.push && !have_push {
                return Err(self.err(
                    source_line,
                    &key("source"),
                    "takes pushes but there is no `push:` section",
                ));
            }
            if source.poll && !have_poll {
                return Err(self.err(
                    source_line,
                    &key("source"),
                    "is polled but there is no `poll:` section",
                ));
            }
            if source.rtu_poll && !self.have_rtu_poll {
                return Err(self.err(
                    source_line,
                    &key("source"),
                    "is polled over RTU but there is no `rtu_poll:` section",
                ));
            }
            let function = r.function.as_ref().map(|f| f.value);
            if source.rtu_poll && function.is_none() {
                return Err(self.err(
                    l,
                    &key("function"),
                    "a region polled over RTU needs `function: input` (read with FC04) or `function: holding` (FC03)",
                ));
            }
            if let Some((o, ol)) = out
                .iter()
                .find(|(o, _)| o.table.is_some() != function.is_some())
            {
                return Err(self.err(
                    r.function.as_ref().map_or(l, line),
                    &key("function"),
                    format!(
                        "either every region names its function or none does; region `{}` (line {ol}) {}",
                        o.name,
                        if o.table.is_some() { "does" } else { "does not" }
                    ),
                ));
            }
            let every = r
                .every
                .as_ref()
                .map(|e| self.positive(e, &key("every")))
                .transpose()?;
            if source.rtu_poll && every.is_none() {
                return Err(self.err(
                    l,
                    &key("every"),
                    "a polled region needs `every`, e.g. every: 10s",
                ));
            }
            if source.poll && every.is_none() {
                return Err(self.err(
                    l,
                    &key("every"),
                    "a polled region needs `every`, e.g. every: 10s",
                ));
            }
            if !source.poll && !source.rtu_poll {
                if let Some(e) = &r.every {
                    return Err(self.err(
                        line(e),
                        &key("every"),
                        "only polled regions have `every`; for a push region use fallback_poll",
                    ));
                }
            }
            let fallback_poll = r
                .fallback_poll
                .as_ref()
                .map(|e| self.positive(e, &key("fallback_poll")))
                .transpose()?;
            if let Some(f) = &r.fallback_poll {
                if !source.push || source.poll {
                    return Err(self.err(
                        line(f),
                        &key("fallback_poll"),
                        "only for regions whose source is push alone",
                    ));
                }
                if !have_poll {
                    return Err(self.err(
                        line(f),
                        &key("fallback_poll"),
                        "needs a `poll:` section to poll from",
                    ));
                }
            }
            let values = match (&r.values, source.fixed) {
                (Some(v), true) => {
                    for &a in v.value.keys() {
                        if a < r.start || u32::from(a) >= u32::from(r.start) + u32::from(count) {
                            return Err(self.err(
                                line(v),
                                &key("values"),
                                format!(
                                    "address {a} lies outside the region {}..{}",
                                    r.start,
                                    u32::from(r.start) + u32::from(count) - 1
                                ),
                            ));
                        }
                    }
                    v.value.clone()
                }
                (Some(v), false) => {
                    return Err(self.err(
                        line(v),
                        &key("values"),
                        "only static regions have `values`",
                    ))
                }
                (None, true) => {
                    return Err(self.err(
                        l,
                        &key("values"),
                        "a static region needs `values`, e.g. values: {8244: 200}",
                    ))
                }
                (None, false) => BTreeMap::new(),
            };
            // Defaults: push 2 s / silence; polled 3 × every / serve; static never ages.
            // RTU-polled regions: 3 × every / exception (0B over TCP: the device is silent).
            let (default_age, default_stale) = if source.rtu_poll {
                (
                    every.unwrap_or(Duration::from_secs(1)).saturating_mul(3),
                    OnStale::Exception,
                )
            } else if source.poll {
                (
                    every.unwrap_or(Duration::from_secs(1)).saturating_mul(3),
                    OnStale::Serve,
                )
            } else if source.push {
                (Duration::from_secs(2), OnStale::Silence)
            } else {
                (Duration::MAX, OnStale::Serve)
            };
            let max_age = match &r.max_age {
                Some(m) => {
                    let v = self.positive(m, &key("max_age"))?;
                    if let Some(e) = every {
                        if v < e {
                            self.warn(line(m), &key("max_age"), format_args!("{v:?} is shorter than the poll interval {e:?}; the region will be stale between polls"));
                        }
                    }
                    if source.fixed {
                        self.warn(
                            line(m),
                            &key("max_age"),
                            "a static region never ages; max_age is ignored",
                        );
                        Duration::MAX
                    } else {
                        v
                    }
                }
                None => default_age,
            };
            if let Some(f) = fallback_poll {
                if f > max_age {
                    self.warn(l, &key("fallback_poll"), format_args!("{f:?} is longer than max_age {max_age:?}; the fallback cannot keep the region fresh"));
                }
            }
            let on_stale = r.on_stale.unwrap_or(default_stale);
            if source.push && !source.poll && on_stale == OnStale::Serve {
                self.warn(
                    l,
                    &key("on_stale"),
                    "serve: a control loop may be fed old numbers when the KSEM stops pushing",
                );
            }
            let region = Region {
                name: r.name.clone(),
                start: r.start,
                count,
                source,
                every,
                max_age,
                on_stale,
                fallback_poll,
                values,
                table: function,
                device: 0,
            };
            // Regions of different tables (input, holding) may share numbers.
            if let Some((o, ol)) = out.iter().find(|(o, _)| {
                o.table == region.table
                    && u32::from(o.start) < region.end()
                    && u32::from(region.start) < o.end()
            }) {
                return Err(self.err(
                    l,
                    &key("start"),
                    format!(
                        "{}..{} overlaps region `{}` ({}..{}, line {ol})",
                        region.start,
                        region.end() - 1,
                        o.name,
                        o.start,
                        o.end() - 1
                    ),
                ));
            }
            out.push((region, l));
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
