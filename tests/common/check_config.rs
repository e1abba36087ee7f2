//! Invariants of config and profile parsing on arbitrary text.
//!
//! Shared by the libFuzzer target `fuzz/fuzz_targets/config_parse.rs` and the proptest suite
//! `tests/props/prop_config.rs` (included by path). Panics on a violation:
//! - `config::parse` and `profile::parse` never panic and are deterministic;
//! - an error names the origin (`file:line: key: what` or the parser's snippet);
//! - an accepted config is usable as the gateway would use it: regions non-empty, sorted
//!   apart, no overlap, inside 0..65536, unique names, sources backed by their sections,
//!   static values inside their region, push limits in range, an image can be built from it
//!   and every region's words can be read back; nothing in it names a file to write;
//! - an accepted profile answers lookups consistently (`get`, `at`, `check_write` on every
//!   register) and its listing renders.
#![allow(dead_code)]

use std::time::Duration;

use airbridge::config::{self, Config};
use airbridge::control::profile::{self, Table};
use airbridge::image::Image;

const ORIGIN: &str = "fuzz.yaml";

/// Check both parsers on `data` (as UTF-8, lossily: the loader reads text).
pub fn check_bytes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_text(&text);
}

pub fn check_text(text: &str) {
    match config::parse(text, ORIGIN) {
        Ok(loaded) => {
            check_config(&loaded.config);
            let again = config::parse(text, ORIGIN).expect("accepted once, accepted twice");
            assert_eq!(
                format!("{:?}", again.config),
                format!("{:?}", loaded.config),
                "parse is deterministic"
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(ORIGIN),
                "error does not name its origin: {msg}"
            );
        }
    }
    match profile::parse(text, ORIGIN) {
        Ok(p) => check_profile(&p),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(ORIGIN),
                "error does not name its origin: {msg}"
            );
        }
    }
}

/// What the rest of the gateway relies on in a parsed config.
pub fn check_config(c: &Config) {
    assert!(!c.regions.is_empty(), "no regions accepted");
    let mut spans: Vec<(u32, u32, &str)> = Vec::new();
    for r in &c.regions {
        assert!(r.count >= 1, "{}: count 0", r.name);
        assert!(r.end() <= 65_536, "{}: runs past 65535", r.name);
        assert!(!r.name.trim().is_empty(), "empty region name");
        let s = r.source;
        assert!(s.push || s.poll || s.fixed, "{}: no source", r.name);
        assert!(!(s.fixed && (s.push || s.poll)), "{}: static mixed", r.name);
        assert!(
            !s.push || c.push.is_some(),
            "{}: push without push:",
            r.name
        );
        assert!(
            !s.poll || c.poll.is_some(),
            "{}: poll without poll:",
            r.name
        );
        if s.poll {
            assert!(
                r.every.is_some_and(|e| !e.is_zero()),
                "{}: polled without every",
                r.name
            );
        }
        assert!(
            r.fallback_poll.is_none() || (s.push && !s.poll),
            "{}: fallback",
            r.name
        );
        for &a in r.values.keys() {
            assert!(r.contains(a), "{}: static value at {a} outside", r.name);
        }
        spans.push((u32::from(r.start), r.end(), &r.name));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "regions {} and {} overlap",
            w[0].2,
            w[1].2
        );
        assert_ne!(w[0].2, w[1].2, "duplicate region name");
    }
    if let Some(p) = &c.push {
        assert!((1..=1024).contains(&p.max_connections), "max_connections");
        assert!(!p.idle_timeout.is_zero(), "idle_timeout 0");
    }
    if let Some(p) = &c.poll {
        assert!(!p.timeout.is_zero(), "poll timeout 0");
    }
    assert!(
        c.rtu.frame_timeout <= Duration::from_secs(1),
        "frame_timeout > 1s"
    );
    assert!(c.rtu.baud > 0, "baud 0");
    // The gateway builds its image from the regions: every word is readable, statics
    // carry their values.
    let image = Image::new(&c.regions);
    let snap = image.load();
    for r in &c.regions {
        let mut a = u32::from(r.start);
        while a < r.end() {
            let n = (r.end() - a).min(125) as u16;
            let words = image
                .read_words(&snap, image.table_for(3), a as u16, n)
                .unwrap_or_else(|| panic!("{}: {a}+{n} not readable", r.name));
            assert_eq!(words.len(), usize::from(n));
            a += u32::from(n);
        }
        for (&a, &v) in &r.values {
            assert_eq!(
                image.read_words(&snap, image.table_for(3), a, 1),
                Some(vec![v]),
                "{}: static",
                r.name
            );
        }
    }
}

pub fn check_profile(p: &profile::Profile) {
    for r in &p.registers {
        assert!(r.words >= 1, "{}: 0 words", r.name);
        assert!(r.end() <= 65_536, "{}: past 65535", r.name);
        assert_eq!(
            p.get(&r.name).map(|g| &g.name),
            Some(&r.name),
            "get({})",
            r.name
        );
        if r.access.readable() {
            let at = p.at(r.table, r.address).map(|g| &g.name);
            assert_eq!(at, Some(&r.name), "at({:?}, {})", r.table, r.address);
            assert!(p
                .overlapping(r.table, r.address, r.words)
                .any(|g| g.name == r.name));
        }
        // Decoding any words never panics.
        let _ = r.decode(&vec![0xFFFF; usize::from(r.words)]);
        let _ = r.decode(&[]);
        for fc in [6u8, 16] {
            let _ = p.check_write(fc, r.address, &vec![0; usize::from(r.words)]);
        }
    }
    for f in [Table::Holding, Table::Input] {
        let _ = p.at(f, 0);
        let _ = p.at(f, u16::MAX);
    }
    let _ = p.check_write(16, u16::MAX, &[1, 2]);
    let _ = p.show();
}
