//! The register image: the one place where data from the sources meets the servers.
//!
//! Owns the words of every configured region and when each region was last written.
//! Writers (the push server, the poller) build a new [`Snapshot`] and publish it with one
//! atomic pointer swap; readers (the RTU slave, the push server's diagnostic reads) load a
//! snapshot without locking and build their whole reply from it. A reader therefore never sees
//! half of a push, a region polled in several chunks, or a torn 32/64-bit value. It touches
//! no I/O; the clock is passed in by the caller (tokio's, so tests can pause it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use tokio::time::Instant;

use airbridge_modbus::model::{OnStale, Region, Table};

/// The fixed shape of one region (from the config).
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// The config's name, for logs, `/status` and metrics.
    pub name: String,
    /// First register address.
    pub start: u16,
    /// Registers in the region (its words are exactly this many).
    pub count: u16,
    /// Freshness limit as configured at start (see [`Freshness`] for the one in force).
    pub max_age: Duration,
    /// What a stale read gets, as configured at start.
    pub on_stale: OnStale,
    /// Push writes may land here.
    pub accepts_push: bool,
    /// The table it serves (`None`: the one untyped table of a KSEM layout).
    pub table: Option<Table>,
    /// The device on the RTU bus it belongs to (0 in a KSEM or one-device config): each
    /// device has its own tables, so two devices may use the same addresses.
    pub device: usize,
}

/// Which table a read is served from: one device's input or holding table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTable {
    /// The device (index in `Config::devices`; 0 in a KSEM or one-device config).
    pub device: usize,
    /// Its input or holding table (`None`: the one untyped table of a KSEM layout).
    pub table: Option<Table>,
}

/// A table of device 0: what every reader of a one-device image means.
impl From<Option<Table>> for DeviceTable {
    fn from(table: Option<Table>) -> Self {
        DeviceTable { device: 0, table }
    }
}

impl RegionSpec {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// A region's freshness rule. The config's values at start; a hot reload replaces them
/// (see [`Image::set_freshness`]), so read them with [`Image::freshness`] rather than from
/// [`RegionSpec`], which keeps the values the image was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Older than this since its last write, the region is stale.
    pub max_age: Duration,
    /// What a read of the region gets while it is stale.
    pub on_stale: OnStale,
}

/// The contents of one region at one moment.
#[derive(Debug, Clone)]
pub struct RegionState {
    /// The region's words; shared between snapshots until the region is written again.
    pub words: Arc<[u16]>,
    /// Last complete write of any kind; `None` until the region was filled once.
    pub written: Option<Instant>,
    /// Last push write into this region (fallback polling keys off this, not `written`).
    pub pushed: Option<Instant>,
}

/// One consistent view of the whole image.
#[derive(Debug)]
pub struct Snapshot {
    /// Incremented by every commit.
    pub generation: u64,
    /// Every region has been filled at least once.
    pub warm: bool,
    /// Each region's contents, in the order of [`Image::specs`].
    pub regions: Box<[RegionState]>,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Part of the range lies outside the push regions (push answers 02).
    #[error("the range is not entirely inside regions that accept pushes")]
    NotWritable,
    /// A poll commit for a region index the image does not have.
    #[error("no such region")]
    NoRegion,
    /// A poll commit whose words do not fill the region exactly.
    #[error("length does not match the region")]
    Length,
}

/// What must have been filled before a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmUp {
    /// Every region of the image: the RTU slave serves the inverter the whole meter or
    /// nothing.
    Image,
    /// The regions the read touches: for LAN clients of a device, one region the device
    /// refuses must not take the others down.
    Touched,
}

/// Why a read cannot be answered with data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRefusal {
    /// Some address lies outside every region (exception 02).
    OutsideRegions,
    /// Not every region has been filled yet: stay silent.
    WarmingUp,
    /// A touched region is older than its `max_age`, and its policy is not `serve`.
    Stale(OnStale),
}

/// The register image shared by sources and servers.
#[derive(Debug)]
pub struct Image {
    /// The regions' fixed shape, by index (never changes after start).
    specs: Box<[RegionSpec]>,
    /// The snapshot readers load; writers replace it whole with one pointer swap.
    current: ArcSwap<Snapshot>,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
    /// When the image was made: start-to-ready is measured from here.
    created: Instant,
    /// Flips to `true` once, when every region has been filled.
    warm: tokio::sync::watch::Sender<bool>,
    /// Freshness rules in force, by region index (replaced whole by a reload).
    rules: ArcSwap<Vec<Freshness>>,
}

impl Image {
    /// An empty image for these regions (sorted by start, non-overlapping, as the config
    /// guarantees). Static regions are filled at once with their fixed values.
    pub fn new(regions: &[Region]) -> Self {
        let now = Instant::now();
        let mut sorted: Vec<&Region> = regions.iter().collect();
        // By device and table, then start: each table's regions are contiguous and in
        // address order.
        sorted.sort_by_key(|r| (r.device, r.table, r.start));
        let specs: Box<[RegionSpec]> = sorted
            .iter()
            .map(|r| RegionSpec {
                name: r.name.clone(),
                start: r.start,
                count: r.count,
                max_age: r.max_age,
                on_stale: r.on_stale,
                accepts_push: r.source.push,
                table: r.table,
                device: r.device,
            })
            .collect();
        let states: Box<[RegionState]> = sorted
            .iter()
            .map(|r| {
                let mut words = vec![0u16; usize::from(r.count)];
                for (&a, &v) in &r.values {
                    if let Some(w) = words.get_mut(usize::from(a.wrapping_sub(r.start))) {
                        *w = v;
                    }
                }
                RegionState {
                    words: words.into(),
                    written: r.source.fixed.then_some(now),
                    pushed: None,
                }
            })
            .collect();
        let warm = states.iter().all(|s| s.written.is_some());
        let rules = specs
            .iter()
            .map(|s| Freshness {
                max_age: s.max_age,
                on_stale: s.on_stale,
            })
            .collect();
        Image {
            rules: ArcSwap::from_pointee(rules),
            specs,
            current: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                warm,
                regions: states,
            }),
            writer: Mutex::new(()),
            created: now,
            warm: tokio::sync::watch::Sender::new(warm),
        }
    }

    /// The regions, in address order; indices match [`Snapshot::regions`].
    pub fn specs(&self) -> &[RegionSpec] {
        &self.specs
    }

    /// Index of the region called `name`.
    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Resolves once every region has been filled (at once if it already has).
    pub async fn wait_warm(&self) {
        let mut rx = self.warm.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = rx.wait_for(|w| *w).await;
    }

    /// When the image was created (start-up).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// The current snapshot, without locking or allocating.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// An owned handle on the current snapshot (for slower readers).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Apply a push write of `values` at `address`, atomically, refreshing the age of every
    /// touched region. The whole range must lie inside regions that accept pushes (adjacent
    /// regions may be spanned); otherwise nothing is written.
    pub fn write_push(&self, address: u16, values: &[u16], now: Instant) -> Result<(), WriteError> {
        if values.is_empty() {
            return Err(WriteError::NotWritable);
        }
        let touched = self
            .covering(self.table_for(3), address, values.len())
            .ok_or(WriteError::NotWritable)?;
        if !self.specs[touched.clone()].iter().all(|s| s.accepts_push) {
            return Err(WriteError::NotWritable);
        }
        self.commit(|regions| {
            for i in touched.clone() {
                let spec = &self.specs[i];
                let state = &mut regions[i];
                let mut words = state.words.to_vec();
                copy_overlap(&mut words, spec.start, address, values);
                state.words = words.into();
                state.written = Some(now);
                state.pushed = Some(now);
            }
            true
        });
        Ok(())
    }

    /// Replace a whole region with words polled since `started`, atomically.
    ///
    /// A push into the region after `started` is newer than the polled words: then nothing is
    /// written and `Ok(false)` is returned, so a slow poll never rolls pushed values back.
    pub fn commit_poll(
        &self,
        region: usize,
        words: &[u16],
        started: Instant,
        now: Instant,
    ) -> Result<bool, WriteError> {
        let spec = self.specs.get(region).ok_or(WriteError::NoRegion)?;
        if words.len() != usize::from(spec.count) {
            return Err(WriteError::Length);
        }
        Ok(self.commit(|regions| {
            let state = &mut regions[region];
            if state.pushed.is_some_and(|p| p > started) {
                return false;
            }
            state.words = words.into();
            state.written = Some(now);
            true
        }))
    }

    /// Publish what `change` makes of a copy of the current regions, unless it returns
    /// `false`. Returns whether anything was published.
    fn commit(&self, change: impl FnOnce(&mut [RegionState]) -> bool) -> bool {
        // A poisoned lock only means another writer panicked between load and store; the
        // published snapshot is still whole, so carry on with it.
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load();
        let mut regions: Box<[RegionState]> = old.regions.clone();
        if !change(&mut regions) {
            return false;
        }
        let warm = old.warm || regions.iter().all(|s| s.written.is_some());
        self.current.store(Arc::new(Snapshot {
            generation: old.generation.wrapping_add(1),
            warm,
            regions,
        }));
        if warm && !old.warm {
            self.warm.send_replace(true);
        }
        true
    }

    /// The table a read with function code `fc` (3 or 4) is served from: in an image whose
    /// regions name their tables, FC03 → holding and FC04 → input; otherwise the one table.
    pub fn table_for(&self, fc: u8) -> Option<Table> {
        match (self.specs.first().and_then(|s| s.table), fc) {
            (None, _) => None,
            (Some(_), 4) => Some(Table::Input),
            (Some(_), _) => Some(Table::Holding),
        }
    }

    /// The table device `device` serves to a read with function code `fc` (see
    /// [`Image::table_for`]).
    pub fn device_table(&self, device: usize, fc: u8) -> DeviceTable {
        DeviceTable {
            device,
            table: self.table_for(fc),
        }
    }

    /// The regions `[first, last]` of `table` that cover `address .. address + len` without
    /// a gap, or `None` if any address is outside every region of it.
    pub fn covering(
        &self,
        table: impl Into<DeviceTable>,
        address: u16,
        len: usize,
    ) -> Option<std::ops::Range<usize>> {
        let t: DeviceTable = table.into();
        let in_table = |s: &RegionSpec| s.table == t.table && s.device == t.device;
        let end = u32::from(address) + u32::try_from(len).ok()?;
        if len == 0 || end > 65_536 {
            return None;
        }
        let first = self.specs.iter().position(|s| {
            in_table(s) && u32::from(s.start) <= u32::from(address) && u32::from(address) < s.end()
        })?;
        let mut last = first;
        while self.specs[last].end() < end {
            let next = self.specs.get(last + 1)?;
            if !in_table(next) || u32::from(next.start) != self.specs[last].end() {
                return None;
            }
            last += 1;
        }
        Some(first..last + 1)
    }

    /// Check a read of `count` words of `table` at `address` against regions, warm-up (as
    /// `warm_up` says) and freshness, in that order. `Ok` carries the touched regions.
    pub fn check_read(
        &self,
        snap: &Snapshot,
        table: impl Into<DeviceTable>,
        address: u16,
        count: u16,
        now: Instant,
        warm_up: WarmUp,
    ) -> Result<std::ops::Range<usize>, ReadRefusal> {
        let touched = self
            .covering(table, address, usize::from(count))
            .ok_or(ReadRefusal::OutsideRegions)?;
        let filled = match warm_up {
            WarmUp::Image => snap.warm,
            WarmUp::Touched => touched
                .clone()
                .all(|i| snap.regions.get(i).and_then(|r| r.written).is_some()),
        };
        if !filled {
            return Err(ReadRefusal::WarmingUp);
        }
        let mut verdict = OnStale::Serve;
        // The rules in force (hot reload), not the ones at start.
        let rules = self.rules.load();
        for i in touched.clone() {
            if let Some(rule) = Self::stale_by(&rules, snap, i, now) {
                verdict = verdict.max(rule.on_stale);
            }
        }
        match verdict {
            OnStale::Serve => Ok(touched),
            v => Err(ReadRefusal::Stale(v)),
        }
    }

    /// Region `i` is older than its `max_age` (or was never filled).
    pub fn is_stale(&self, snap: &Snapshot, i: usize, now: Instant) -> bool {
        match (
            snap.regions.get(i).and_then(|r| r.written),
            self.rules.load().get(i),
        ) {
            (Some(w), Some(rule)) => now.saturating_duration_since(w) > rule.max_age,
            _ => true,
        }
    }

    /// The rule of region `i` if the region is stale under it (or was never filled).
    fn stale_by(rules: &[Freshness], snap: &Snapshot, i: usize, now: Instant) -> Option<Freshness> {
        let rule = *rules.get(i)?;
        match snap.regions.get(i).and_then(|r| r.written) {
            Some(w) if now.saturating_duration_since(w) <= rule.max_age => None,
            _ => Some(rule),
        }
    }

    /// The freshness rule in force for region `i`.
    pub fn freshness(&self, i: usize) -> Option<Freshness> {
        self.rules.load().get(i).copied()
    }

    /// Replace the freshness rules (hot reload): each region of `regions` found here by
    /// name gets its `max_age` and `on_stale`; others keep theirs. The next read uses them.
    /// Returns how many regions were matched.
    pub fn set_freshness(&self, regions: &[Region]) -> usize {
        let mut rules: Vec<Freshness> = self.rules.load().as_ref().clone();
        let mut matched = 0;
        for r in regions {
            if let Some(rule) = self.region_index(&r.name).and_then(|i| rules.get_mut(i)) {
                *rule = Freshness {
                    max_age: r.max_age,
                    on_stale: r.on_stale,
                };
                matched += 1;
            }
        }
        self.rules.store(Arc::new(rules));
        matched
    }

    /// Age of region `i`, `None` if it was never filled.
    pub fn age(&self, snap: &Snapshot, i: usize, now: Instant) -> Option<Duration> {
        snap.regions
            .get(i)?
            .written
            .map(|w| now.saturating_duration_since(w))
    }

    /// Visit the words `address .. address + count` of `snap` in order, region by region.
    /// The caller has checked the range with [`Image::check_read`] or [`Image::covering`].
    pub fn for_each_word(
        &self,
        snap: &Snapshot,
        touched: std::ops::Range<usize>,
        address: u16,
        count: u16,
        mut f: impl FnMut(u16),
    ) {
        let mut addr = u32::from(address);
        let end = addr + u32::from(count);
        for i in touched {
            let spec = &self.specs[i];
            let words = &snap.regions[i].words;
            let from = (addr - u32::from(spec.start)) as usize;
            let to = (end.min(spec.end()) - u32::from(spec.start)) as usize;
            for &w in words.get(from..to).unwrap_or(&[]) {
                f(w);
            }
            addr = spec.end();
        }
    }

    /// Copy `count` words of `table` at `address` into a vector (status, write logs; not the
    /// RTU reply path).
    pub fn read_words(
        &self,
        snap: &Snapshot,
        table: impl Into<DeviceTable>,
        address: u16,
        count: u16,
    ) -> Option<Vec<u16>> {
        let touched = self.covering(table, address, usize::from(count))?;
        let mut out = Vec::with_capacity(usize::from(count));
        self.for_each_word(snap, touched, address, count, |w| out.push(w));
        Some(out)
    }
}

/// Copy the part of `values` (starting at register `address`) that overlaps `words`
/// (starting at register `start`).
fn copy_overlap(words: &mut [u16], start: u16, address: u16, values: &[u16]) {
    let w_start = u32::from(start);
    let w_end = w_start + words.len() as u32;
    let v_start = u32::from(address);
    let v_end = v_start + values.len() as u32;
    let lo = w_start.max(v_start);
    let hi = w_end.min(v_end);
    if lo >= hi {
        return;
    }
    let dst = &mut words[(lo - w_start) as usize..(hi - w_start) as usize];
    dst.copy_from_slice(&values[(lo - v_start) as usize..(hi - v_start) as usize]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;
    use std::collections::BTreeMap;

    fn region(name: &str, start: u16, count: u16, push: bool, on_stale: OnStale) -> Region {
        Region {
            name: name.into(),
            start,
            count,
            source: Sources {
                push,
                poll: !push,
                fixed: false,
                rtu_poll: false,
            },
            every: (!push).then_some(Duration::from_secs(10)),
            max_age: Duration::from_secs(2),
            on_stale,
            fallback_poll: None,
            values: BTreeMap::new(),
            table: None,
            device: 0,
        }
    }

    fn ksem_like() -> Image {
        Image::new(&[
            region("phases", 40, 108, true, OnStale::Silence),
            region("totals", 0, 40, true, OnStale::Silence),
            region("energy", 512, 280, false, OnStale::Exception),
        ])
    }

    #[test]
    fn devices_have_their_own_tables_at_the_same_addresses() {
        let on = |name: &str, device: usize| Region {
            table: Some(Table::Input),
            device,
            ..region(name, 3000, 10, false, OnStale::Exception)
        };
        let img = Image::new(&[on("b.live", 1), on("a.live", 0)]);
        let t = |device| DeviceTable {
            device,
            table: Some(Table::Input),
        };
        let a = img.region_index("a.live");
        let b = img.region_index("b.live");
        assert_eq!(img.covering(t(0), 3000, 10).map(|r| r.start), a);
        assert_eq!(img.covering(t(1), 3002, 8).map(|r| r.start), b);
        assert_eq!(img.covering(t(2), 3000, 1), None, "no such device");
        assert_eq!(img.device_table(1, 4), t(1));
        // Adjacent in the specs, but another device's: never spanned.
        assert_eq!(img.covering(t(0), 3005, 10), None);
        img.commit_poll(b.unwrap_or(9), &[7; 10], Instant::now(), Instant::now())
            .unwrap_or_else(|e| panic!("{e}"));
        let snap = img.load();
        assert_eq!(img.read_words(&snap, t(1), 3000, 2), Some(vec![7, 7]));
        assert_eq!(img.read_words(&snap, t(0), 3000, 2), Some(vec![0, 0]));
    }

    #[test]
    fn covering_requires_contiguous_regions() {
        let img = ksem_like();
        assert_eq!(img.covering(None, 0, 40), Some(0..1));
        assert_eq!(
            img.covering(None, 30, 20),
            Some(0..2),
            "spans adjacent regions"
        );
        assert_eq!(img.covering(None, 0, 148), Some(0..2));
        assert_eq!(
            img.covering(None, 100, 50),
            None,
            "runs past 147 into the gap"
        );
        assert_eq!(img.covering(None, 148, 1), None);
        assert_eq!(img.covering(None, 511, 2), None);
        assert_eq!(img.covering(None, 512, 280), Some(2..3));
        assert_eq!(img.covering(None, 790, 3), None);
        assert_eq!(img.covering(None, 0, 0), None);
        assert_eq!(img.covering(None, 65_535, 2), None);
    }

    #[test]
    fn push_write_lands_atomically_and_refreshes_ages() {
        let img = ksem_like();
        let t0 = Instant::now();
        let vals: Vec<u16> = (0..20).collect();
        img.write_push(30, &vals, t0)
            .expect("spans totals and phases");
        let snap = img.load();
        assert_eq!(snap.generation, 1);
        assert_eq!(img.read_words(&snap, None, 30, 20), Some(vals));
        assert_eq!(
            img.read_words(&snap, None, 0, 2),
            Some(vec![0, 0]),
            "unwritten words read 0"
        );
        assert_eq!(snap.regions[0].written, Some(t0));
        assert_eq!(snap.regions[1].pushed, Some(t0));
        assert!(snap.regions[2].written.is_none());
        assert!(!snap.warm, "energy not filled yet");
    }

    #[test]
    fn push_outside_push_regions_writes_nothing() {
        let img = ksem_like();
        let t0 = Instant::now();
        assert_eq!(
            img.write_push(512, &[1, 2], t0),
            Err(WriteError::NotWritable),
            "poll-only region"
        );
        assert_eq!(
            img.write_push(146, &[1, 2, 3], t0),
            Err(WriteError::NotWritable),
            "runs past 147"
        );
        assert_eq!(
            img.write_push(200, &[1], t0),
            Err(WriteError::NotWritable),
            "no region"
        );
        assert_eq!(img.write_push(0, &[], t0), Err(WriteError::NotWritable));
        assert_eq!(img.load().generation, 0, "nothing committed");
    }

    #[test]
    fn warm_up_then_staleness_strictest_wins() {
        let img = ksem_like();
        let t0 = Instant::now();
        img.write_push(0, &[7; 148], t0).expect("push");
        let snap = img.load_full();
        assert_eq!(
            img.check_read(&snap, None, 0, 10, t0, WarmUp::Image),
            Err(ReadRefusal::WarmingUp)
        );
        assert_eq!(
            img.check_read(&snap, None, 300, 1, t0, WarmUp::Image),
            Err(ReadRefusal::OutsideRegions),
            "address checked before warm-up"
        );
        img.commit_poll(2, &[1; 280], t0, t0).expect("poll");
        let snap = img.load_full();
        assert!(snap.warm);
        assert_eq!(
            img.check_read(&snap, None, 0, 10, t0, WarmUp::Image),
            Ok(0..1)
        );
        let later = t0 + Duration::from_millis(2001);
        assert_eq!(
            img.check_read(&snap, None, 0, 10, later, WarmUp::Image),
            Err(ReadRefusal::Stale(OnStale::Silence))
        );
        assert_eq!(
            img.check_read(&snap, None, 512, 10, later, WarmUp::Image),
            Err(ReadRefusal::Stale(OnStale::Exception))
        );
        // A fresh push makes totals fresh again; energy still stale.
        img.write_push(0, &[8; 40], later).expect("push");
        let snap = img.load_full();
        assert_eq!(
            img.check_read(&snap, None, 0, 10, later, WarmUp::Image),
            Ok(0..1)
        );
        assert_eq!(
            img.check_read(&snap, None, 30, 20, later, WarmUp::Image),
            Err(ReadRefusal::Stale(OnStale::Silence)),
            "phases still stale"
        );
        assert!(snap.warm, "warm stays warm");
        assert_eq!(img.age(&snap, 0, later), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn wait_warm_resolves_when_the_last_region_is_filled() {
        let img = Arc::new(ksem_like());
        let waiter = tokio::spawn({
            let img = Arc::clone(&img);
            async move { img.wait_warm().await }
        });
        img.write_push(0, &[1; 148], Instant::now()).expect("push");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "energy still empty");
        img.commit_poll(2, &[1; 280], Instant::now(), Instant::now())
            .expect("poll");
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resolves")
            .expect("join");
        img.wait_warm().await; // already warm: immediate
    }

    #[test]
    fn commit_poll_checks_length_and_keeps_push_time() {
        let img = ksem_like();
        let t0 = Instant::now();
        assert_eq!(
            img.commit_poll(2, &[1; 279], t0, t0),
            Err(WriteError::Length)
        );
        assert_eq!(
            img.commit_poll(9, &[1; 280], t0, t0),
            Err(WriteError::NoRegion)
        );
        img.commit_poll(0, &[3; 40], t0, t0)
            .expect("fallback poll of totals");
        let snap = img.load();
        assert_eq!(snap.regions[0].written, Some(t0));
        assert_eq!(snap.regions[0].pushed, None, "a poll is not a push");
    }

    #[test]
    fn a_poll_never_rolls_back_a_push_that_landed_while_it_ran() {
        let img = ksem_like();
        let started = Instant::now();
        let pushed_at = started + Duration::from_millis(5);
        img.write_push(0, &[0x2222; 40], pushed_at)
            .expect("push during the poll");
        let done = started + Duration::from_millis(10);
        assert_eq!(
            img.commit_poll(0, &[0x1111; 40], started, done),
            Ok(false),
            "superseded"
        );
        let snap = img.load();
        assert_eq!(img.read_words(&snap, None, 0, 1), Some(vec![0x2222]));
        assert_eq!(snap.regions[0].written, Some(pushed_at));
        // A poll started after the push commits.
        assert_eq!(img.commit_poll(0, &[0x3333; 40], done, done), Ok(true));
        assert_eq!(img.read_words(&img.load(), None, 0, 1), Some(vec![0x3333]));
    }

    #[test]
    fn static_regions_are_filled_at_start() {
        let mut r = region("identity", 8192, 58, false, OnStale::Serve);
        r.source = Sources {
            push: false,
            poll: false,
            fixed: true,
            rtu_poll: false,
        };
        r.values.insert(8244, 200);
        let img = Image::new(&[r]);
        let snap = img.load();
        assert!(snap.warm);
        assert_eq!(img.read_words(&snap, None, 8243, 2), Some(vec![0, 200]));
    }

    /// Writers publish words that encode (generation, address); readers check that every
    /// snapshot holds exactly one generation across both regions and every 32/64-bit value.
    #[test]
    fn concurrent_readers_never_see_mixed_generations() {
        let img = Arc::new(ksem_like());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2u16)
            .map(|w| {
                let img = Arc::clone(&img);
                std::thread::spawn(move || {
                    for g in 1..=3000u16 {
                        let gen = g * 2 + w; // unique per writer and write
                        let vals: Vec<u16> = (0..148u16).map(|a| gen ^ (a << 3)).collect();
                        img.write_push(0, &vals, Instant::now()).expect("push");
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let img = Arc::clone(&img);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut checked = 0u64;
                    let mut last_gen = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let snap = img.load();
                        assert!(snap.generation >= last_gen, "generations go forward");
                        last_gen = snap.generation;
                        if snap.generation == 0 {
                            continue; // the empty start image does not carry the encoding
                        }
                        let words = img.read_words(&snap, None, 0, 148).expect("in range");
                        let gen = words[0];
                        for (a, &w) in words.iter().enumerate() {
                            assert_eq!(
                                w ^ ((a as u16) << 3),
                                gen,
                                "word {a} from another generation"
                            );
                        }
                        checked += 1;
                    }
                    checked
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().expect("reader") > 0);
        }
        assert_eq!(img.load().generation, 6000);
    }
}
