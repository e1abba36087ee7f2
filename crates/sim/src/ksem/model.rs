//! [`KsemModel`]: a pure, seeded household (voltages, frequency, base load, kettle,
//! induction hob, fridge, a slow PV cycle so both import and export show within minutes)
//! rendered into the KSEM register map (`shared/reference/ksem-g2.md` §2–4 and §8, plus
//! the SunSpec chain of `sunspec`), and
//! [`SharedModel`], how the slave and the pusher share it. No I/O; the system clock only
//! for registers 8245..8248.

use std::f64::consts::TAU;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BLOCKS, MEASURING_INTERVAL_MS, MODBUS_SPEC_VERSION, PRODUCT_ID};

/// Manufacturer id at 8192: no source shows the real value, so 0.
const MANUFACTURER_ID: u16 = 0;
/// Product version at 8194 (encoding unknown; small integer).
const PRODUCT_VERSION: u16 = 2;
/// Firmware version at 8195 (encoding unknown; 2.1.0 read as 0x0210).
const FIRMWARE_VERSION: u16 = 0x0210;
const VENDOR_NAME: &str = "KOSTAL";
const PRODUCT_NAME: &str = "KOSTAL Smart Energy Meter";

/// Dynamics are advanced in sub-steps of at most this many seconds.
const MAX_SUBSTEP_S: f64 = 0.5;
const GRID_U_MEAN: f64 = 232.5;
const U_MIN: f64 = 225.2;
const U_MAX: f64 = 244.8;
const F_MIN: f64 = 49.955;
const F_MAX: f64 = 50.045;
/// Voltage drop per watt drawn on a phase (rise when exporting).
const U_DROP_PER_W: f64 = 0.0005;
const BASE_MIN_W: f64 = 50.0;
const BASE_MAX_W: f64 = 100.0;
const KETTLE_MEAN_GAP_S: f64 = 180.0;
const HOB_MEAN_GAP_S: f64 = 200.0;
/// Default PV cycle: import → export → import over four minutes.
const DEFAULT_PV_PERIOD_S: f64 = 240.0;

/// One appliance with a fixed draw for a while.
#[derive(Debug, Clone, Copy)]
struct Kettle {
    /// Phase it draws from (0..3).
    phase: usize,
    /// Draw while on.
    power_w: f64,
    /// Time left until it switches off.
    remaining_s: f64,
}

/// Induction hob: pulses at power for `duty` of each `period_s`.
#[derive(Debug, Clone, Copy)]
struct Hob {
    /// Phase it draws from (0..3).
    phase: usize,
    /// Draw while pulsing.
    power_w: f64,
    /// Pulse period.
    period_s: f64,
    /// Fraction of the period at power.
    duty: f64,
    /// Time into the current period.
    elapsed_s: f64,
    /// Time left until the cooking ends.
    remaining_s: f64,
}

/// Electrical state of one phase after the last step.
#[derive(Debug, Clone, Copy, Default)]
struct PhaseNow {
    /// Volts.
    u: f64,
    /// Watts, + import, − export.
    p: f64,
    /// Reactive power magnitude, var.
    q: f64,
}

impl PhaseNow {
    fn s(&self) -> f64 {
        self.p.hypot(self.q)
    }
}

/// Energy counters in 0.1 Wh (varh, VAh), kept as f64 so fractions are not lost.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Active energy imported (A+).
    a_plus: f64,
    /// Active energy exported (A−).
    a_minus: f64,
    /// Reactive energy while importing (R+).
    r_plus: f64,
    /// Reactive energy while exporting (R−).
    r_minus: f64,
    /// Apparent energy while importing (S+).
    s_plus: f64,
    /// Apparent energy while exporting (S−).
    s_minus: f64,
}

impl Counters {
    /// Add `h` seconds of (p, q, s); q and s follow the direction of p.
    fn integrate(&mut self, p: f64, q: f64, s: f64, h: f64) {
        let k = h / 360.0;
        if p >= 0.0 {
            self.a_plus += p * k;
            self.r_plus += q.abs() * k;
            self.s_plus += s * k;
        } else {
            self.a_minus += -p * k;
            self.r_minus += q.abs() * k;
            self.s_minus += s * k;
        }
    }

    /// Write the six counters at `base` (+0, +4, +8, +12, +32, +36), U64 each.
    fn put(&self, w: &mut [u16], base: usize) {
        put_u64(w, base, self.a_plus);
        put_u64(w, base + 4, self.a_minus);
        put_u64(w, base + 8, self.r_plus);
        put_u64(w, base + 12, self.r_minus);
        put_u64(w, base + 32, self.s_plus);
        put_u64(w, base + 36, self.s_minus);
    }
}

/// A household behind a KSEM G2: deterministic for a given seed and sequence of steps
/// (apart from registers 8245..8248, which carry the system clock).
#[derive(Debug, Clone)]
pub struct KsemModel {
    /// The only source of randomness (seeded).
    rng: fastrand::Rng,
    /// Simulated time since start, s.
    t_s: f64,
    /// Grid voltage common to all phases, V (slow random walk).
    grid_u: f64,
    /// Per-phase offset from `grid_u`, V.
    u_offset: [f64; 3],
    /// Where each offset drifts to.
    u_offset_target: [f64; 3],
    /// Grid frequency, Hz.
    freq: f64,
    /// Base load per phase, W.
    base_w: [f64; 3],
    /// Where each base load drifts to.
    base_target_w: [f64; 3],
    /// Power factor of the base load per phase.
    base_pf: [f64; 3],
    /// Phase the fridge is on.
    fridge_phase: usize,
    /// The fridge's compressor runs.
    fridge_on: bool,
    /// Time until the compressor switches.
    fridge_timer_s: f64,
    /// A kettle boiling, if any.
    kettle: Option<Kettle>,
    /// The hob cooking, if any.
    hob: Option<Hob>,
    /// Length of one PV cycle, s (import and export within minutes).
    pv_period_s: f64,
    /// PV power at the top of the cycle, W.
    pv_peak_w: f64,
    /// PV's share of each phase (sums to 1).
    pv_share: [f64; 3],
    /// Cloud factor on PV (0.6..1, slow random walk).
    cloud: f64,
    /// Electrical state after the last step.
    now: [PhaseNow; 3],
    /// Energy counters of the sum of the phases.
    total: Counters,
    /// Energy counters per phase.
    phase_counters: [Counters; 3],
    /// Serial number served at 8228.
    serial: String,
}

impl KsemModel {
    /// A fresh household; everything random is drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let u_offset_target = [
            rng.f64() * 1.0 - 0.5,
            -0.5 - rng.f64() * 1.5,
            0.5 + rng.f64() * 1.5,
        ];
        let base_target_w = [
            60.0 + rng.f64() * 30.0,
            55.0 + rng.f64() * 30.0,
            50.0 + rng.f64() * 30.0,
        ];
        let base_pf = [
            0.55 + rng.f64() * 0.2,
            0.55 + rng.f64() * 0.2,
            0.55 + rng.f64() * 0.2,
        ];
        let imbalance = [rng.f64() * 0.02, rng.f64() * 0.02, rng.f64() * 0.02];
        let sum: f64 = imbalance.iter().map(|x| 1.0 + x).sum();
        let pv_share = imbalance.map(|x| (1.0 + x) / sum);
        let serial = format!("7502{:04}", seed % 10_000);
        let mut m = Self {
            grid_u: 230.0 + rng.f64() * 5.0,
            u_offset: u_offset_target,
            u_offset_target,
            freq: 49.99 + rng.f64() * 0.02,
            base_w: base_target_w,
            base_target_w,
            base_pf,
            fridge_phase: rng.usize(0..3),
            fridge_on: false,
            fridge_timer_s: 10.0 + rng.f64() * 30.0,
            kettle: None,
            hob: None,
            pv_period_s: DEFAULT_PV_PERIOD_S,
            pv_peak_w: 3500.0 + rng.f64() * 2500.0,
            pv_share,
            cloud: 0.9,
            now: [PhaseNow::default(); 3],
            // Sample counters from ksem-g2.md §8c; per-phase R/S derived from them.
            total: Counters {
                a_plus: 45_678_912.0,
                a_minus: 32_104_567.0,
                r_plus: 12_345_678.0,
                r_minus: 9_876_543.0,
                s_plus: 48_901_234.0,
                s_minus: 33_050_021.0,
            },
            phase_counters: [
                phase_counters(19_213_456.0, 11_027_788.0),
                phase_counters(15_982_233.0, 10_765_544.0),
                phase_counters(11_499_911.0, 10_421_199.0),
            ],
            serial,
            t_s: 0.0,
            rng,
        };
        m.recompute();
        m
    }

    /// Change the PV cycle (default 240 s: import, then export, then import again).
    pub fn with_pv_period(mut self, period: Duration) -> Self {
        self.pv_period_s = period.as_secs_f64().max(1.0);
        self.recompute();
        self
    }

    /// Advance the household by `dt` and integrate the energy counters.
    pub fn step(&mut self, dt: Duration) {
        let mut left = dt.as_secs_f64();
        while left > 0.0 {
            let h = left.min(MAX_SUBSTEP_S);
            self.advance(h);
            left -= h;
        }
    }

    /// Simulated time since creation.
    pub fn elapsed(&self) -> Duration {
        Duration::from_secs_f64(self.t_s)
    }

    /// Net grid power in W: import minus export (+ import, − export).
    pub fn grid_power_w(&self) -> f64 {
        self.now.iter().map(|p| p.p).sum()
    }

    /// Net power per phase in W (+ import, − export).
    pub fn phase_power_w(&self) -> [f64; 3] {
        self.now.map(|p| p.p)
    }

    /// Phase-to-neutral voltages in V.
    pub fn voltages_v(&self) -> [f64; 3] {
        self.now.map(|p| p.u)
    }

    /// Grid frequency in Hz.
    pub fn frequency_hz(&self) -> f64 {
        self.freq
    }

    /// The serial number served at 8228.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Registers `address .. address + count`, or `None` when `count` is 0 or any
    /// address lies outside 0..=147, 512..=791, 8192..=8249 and 40000..=40178 (a read may not
    /// span two blocks, since the gaps between them are outside).
    pub fn read(&self, address: u16, count: u16) -> Option<Vec<u16>> {
        if count == 0 {
            return None;
        }
        let start = u32::from(address);
        let end = start + u32::from(count) - 1;
        let (first, last) = BLOCKS
            .into_iter()
            .find(|&(f, l)| start >= u32::from(f) && end <= u32::from(l))?;
        let block = match first {
            0 => self.instantaneous_block().to_vec(),
            512 => self.energy_block().to_vec(),
            8192 => self.pnp_block().to_vec(),
            _ => self.sunspec_block().to_vec(),
        };
        debug_assert_eq!(block.len(), usize::from(last - first) + 1);
        let from = usize::from(address - first);
        block
            .get(from..from + usize::from(count))
            .map(<[u16]>::to_vec)
    }

    /// Registers 0..=147.
    pub fn instantaneous_block(&self) -> [u16; 148] {
        let mut w = [0u16; 148];
        let (mut p_sum, mut q_sum, mut s_sum) = (0.0, 0.0, 0.0);
        for (k, ph) in self.now.iter().enumerate() {
            let b = 40 + 40 * k;
            let s = ph.s();
            p_sum += ph.p;
            q_sum += ph.q;
            s_sum += s;
            put_directed(&mut w, b, ph.p, ph.p, 0.1);
            put_directed(&mut w, b + 4, ph.p, ph.q, 0.1);
            put_directed(&mut w, b + 16, ph.p, s, 0.1);
            put_u32(&mut w, b + 20, raw(s / ph.u.max(1.0), 0.001));
            put_u32(&mut w, b + 22, raw(ph.u, 0.001));
            put_u32(&mut w, b + 24, pf_raw(ph.p, s));
        }
        put_directed(&mut w, 0, p_sum, p_sum, 0.1);
        put_directed(&mut w, 4, p_sum, q_sum, 0.1);
        put_directed(&mut w, 16, p_sum, s_sum, 0.1);
        put_u32(&mut w, 24, pf_raw(p_sum, s_sum));
        put_u32(&mut w, 26, raw(self.freq, 0.001));
        w
    }

    /// Registers 512..=791.
    pub fn energy_block(&self) -> [u16; 280] {
        let mut w = [0u16; 280];
        self.total.put(&mut w, 0);
        for (k, c) in self.phase_counters.iter().enumerate() {
            c.put(&mut w, 80 + 80 * k);
        }
        w
    }

    /// Registers 40000..=40178: the SunSpec chain, model 203 from this state's KOSTAL words.
    pub fn sunspec_block(&self) -> [u16; super::sunspec::SUNSPEC_LEN] {
        super::sunspec::chain(
            &self.instantaneous_block(),
            &self.energy_block(),
            &self.serial,
        )
    }

    /// Registers 8192..=8249 (8245..8248 = system clock, Unix ms).
    pub fn pnp_block(&self) -> [u16; 58] {
        let mut w = [0u16; 58];
        w[0] = MANUFACTURER_ID;
        w[1] = PRODUCT_ID;
        w[2] = PRODUCT_VERSION;
        w[3] = FIRMWARE_VERSION;
        put_str(&mut w[4..20], VENDOR_NAME);
        put_str(&mut w[20..36], PRODUCT_NAME);
        put_str(&mut w[36..52], &self.serial);
        w[52] = MEASURING_INTERVAL_MS;
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for (i, word) in w[53..57].iter_mut().enumerate() {
            *word = (ms >> (48 - 16 * i)) as u16;
        }
        w[57] = MODBUS_SPEC_VERSION;
        w
    }

    /// Approximately standard normal noise.
    fn noise(&mut self) -> f64 {
        (self.rng.f64() + self.rng.f64() + self.rng.f64() - 1.5) * 2.0
    }

    /// Move the household `h` seconds on: the grid and the loads drift, the appliances
    /// switch, and the energy counters integrate the new power. The random draws come in
    /// a fixed order, so a seed gives one household.
    fn advance(&mut self, h: f64) {
        self.t_s += h;
        let sq = h.sqrt();
        self.drift_grid(h, sq);
        self.drift_base_load(h, sq);
        self.cycle_fridge(h);
        self.step_kettle(h);
        self.step_hob(h);
        // Clouds.
        let n = self.noise();
        self.cloud += (0.9 - self.cloud) * (h / 20.0) + 0.03 * sq * n;
        self.cloud = self.cloud.clamp(0.6, 1.0);

        self.recompute();
        self.integrate_counters(h);
    }

    /// Grid: common slow voltage drift, per-phase offsets, frequency (`sq` = √h).
    fn drift_grid(&mut self, h: f64, sq: f64) {
        let n = self.noise();
        self.grid_u += (GRID_U_MEAN - self.grid_u) * (h / 120.0) + 0.3 * sq * n;
        self.grid_u = self.grid_u.clamp(228.0, 240.0);
        for k in 0..3 {
            let n = self.noise();
            self.u_offset[k] +=
                (self.u_offset_target[k] - self.u_offset[k]) * (h / 60.0) + 0.05 * sq * n;
            self.u_offset[k] = self.u_offset[k].clamp(-2.5, 2.5);
        }
        let n = self.noise();
        self.freq += (50.0 - self.freq) * (h / 10.0) + 0.004 * sq * n;
        self.freq = self.freq.clamp(F_MIN, F_MAX);
    }

    /// Base load wanders slowly (`sq` = √h).
    fn drift_base_load(&mut self, h: f64, sq: f64) {
        for k in 0..3 {
            let n = self.noise();
            self.base_w[k] += (self.base_target_w[k] - self.base_w[k]) * (h / 30.0) + 2.0 * sq * n;
            self.base_w[k] = self.base_w[k].clamp(BASE_MIN_W, BASE_MAX_W);
        }
    }

    /// Fridge compressor cycles.
    fn cycle_fridge(&mut self, h: f64) {
        self.fridge_timer_s -= h;
        if self.fridge_timer_s <= 0.0 {
            self.fridge_on = !self.fridge_on;
            self.fridge_timer_s = if self.fridge_on {
                40.0 + self.rng.f64() * 30.0
            } else {
                60.0 + self.rng.f64() * 60.0
            };
        }
    }

    /// Kettle: about 2 kW on one phase for one to two minutes.
    fn step_kettle(&mut self, h: f64) {
        match &mut self.kettle {
            Some(k) => {
                k.remaining_s -= h;
                if k.remaining_s <= 0.0 {
                    self.kettle = None;
                }
            }
            None => {
                if self.rng.f64() < h / KETTLE_MEAN_GAP_S {
                    self.kettle = Some(Kettle {
                        phase: self.rng.usize(0..3),
                        power_w: 1800.0 + self.rng.f64() * 400.0,
                        remaining_s: 45.0 + self.rng.f64() * 75.0,
                    });
                }
            }
        }
    }

    /// Induction hob: pulses every 1–3 s for a few minutes.
    fn step_hob(&mut self, h: f64) {
        match &mut self.hob {
            Some(hob) => {
                hob.elapsed_s += h;
                hob.remaining_s -= h;
                if hob.remaining_s <= 0.0 {
                    self.hob = None;
                }
            }
            None => {
                if self.rng.f64() < h / HOB_MEAN_GAP_S {
                    self.hob = Some(Hob {
                        phase: self.rng.usize(0..3),
                        power_w: 1400.0 + self.rng.f64() * 800.0,
                        period_s: 1.0 + self.rng.f64() * 2.0,
                        duty: 0.4 + self.rng.f64() * 0.3,
                        elapsed_s: 0.0,
                        remaining_s: 60.0 + self.rng.f64() * 120.0,
                    });
                }
            }
        }
    }

    /// The energy counters, per phase and total, over `h` seconds of the present power.
    fn integrate_counters(&mut self, h: f64) {
        let mut p_sum = 0.0;
        let mut q_sum = 0.0;
        let mut s_sum = 0.0;
        for (c, ph) in self.phase_counters.iter_mut().zip(self.now.iter()) {
            let s = ph.s();
            c.integrate(ph.p, ph.q, s, h);
            p_sum += ph.p;
            q_sum += ph.q;
            s_sum += s;
        }
        self.total.integrate(p_sum, q_sum, s_sum, h);
    }

    /// Derive per-phase P, Q, U from the appliance state.
    fn recompute(&mut self) {
        let daylight = (-(TAU * self.t_s / self.pv_period_s).cos()).max(0.0);
        let pv_w = self.pv_peak_w * daylight.powf(1.3) * self.cloud;
        for k in 0..3 {
            let mut p_load = self.base_w[k];
            let mut q_load = self.base_w[k] * pf_tan(self.base_pf[k]);
            if self.fridge_on && self.fridge_phase == k {
                p_load += 90.0;
                q_load += 90.0 * pf_tan(0.75);
            }
            if let Some(kettle) = self.kettle.filter(|x| x.phase == k) {
                p_load += kettle.power_w;
            }
            if let Some(hob) = self.hob.filter(|x| x.phase == k) {
                let pos = (hob.elapsed_s % hob.period_s) / hob.period_s;
                if pos < hob.duty {
                    p_load += hob.power_w;
                    q_load += hob.power_w * pf_tan(0.97);
                }
            }
            let p = p_load - pv_w * self.pv_share[k];
            let u = (self.grid_u + self.u_offset[k] - U_DROP_PER_W * p).clamp(U_MIN, U_MAX);
            self.now[k] = PhaseNow { u, p, q: q_load };
        }
    }
}

/// tan(acos(pf)): reactive per active power for a load of that power factor.
fn pf_tan(pf: f64) -> f64 {
    let pf = pf.clamp(0.01, 1.0);
    (1.0 - pf * pf).sqrt() / pf
}

fn phase_counters(a_plus: f64, a_minus: f64) -> Counters {
    Counters {
        a_plus,
        a_minus,
        r_plus: a_plus * 0.27,
        r_minus: a_minus * 0.3,
        s_plus: a_plus * 1.07,
        s_minus: a_minus * 1.03,
    }
}

/// Non-negative engineering value → raw U32 at `scale` (e.g. 0.1 W).
fn raw(value: f64, scale: f64) -> u32 {
    // `as` saturates (and maps NaN to 0).
    (value / scale).round().max(0.0) as u32
}

/// |P|/S ×1000, 1000 when there is (almost) nothing flowing.
fn pf_raw(p: f64, s: f64) -> u32 {
    if s < 0.5 {
        1000
    } else {
        raw((p.abs() / s).min(1.0), 0.001)
    }
}

fn put_u32(w: &mut [u16], at: usize, v: u32) {
    w[at] = (v >> 16) as u16;
    w[at + 1] = v as u16;
}

/// Magnitude `mag` into the "+" register (at) when `direction` ≥ 0, else into "−" (at + 2).
fn put_directed(w: &mut [u16], at: usize, direction: f64, mag: f64, scale: f64) {
    let v = raw(mag.abs(), scale);
    if direction >= 0.0 {
        put_u32(w, at, v);
        put_u32(w, at + 2, 0);
    } else {
        put_u32(w, at, 0);
        put_u32(w, at + 2, v);
    }
}

fn put_u64(w: &mut [u16], at: usize, value: f64) {
    let v = value.max(0.0) as u64;
    for i in 0..4 {
        w[at + i] = (v >> (48 - 16 * i)) as u16;
    }
}

/// ASCII, two characters per word, high byte first, zero padded.
fn put_str(w: &mut [u16], s: &str) {
    let bytes = s.as_bytes();
    for (i, word) in w.iter_mut().enumerate() {
        let hi = bytes.get(2 * i).copied().unwrap_or(0);
        let lo = bytes.get(2 * i + 1).copied().unwrap_or(0);
        *word = u16::from_be_bytes([hi, lo]);
    }
}

/// The model shared between the stepper, the slave and the pusher.
pub type SharedModel = Arc<Mutex<KsemModel>>;

/// Lock the model; a poisoned lock is still usable (the model has no invariants a
/// panic half-way could break that matter for a simulator).
pub fn lock_model(model: &SharedModel) -> MutexGuard<'_, KsemModel> {
    model.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(200);

    /// The 32-bit value at `at` (high word first).
    pub(in crate::ksem) fn u32_at(w: &[u16], at: usize) -> u32 {
        (u32::from(w[at]) << 16) | u32::from(w[at + 1])
    }

    /// The 64-bit value at `at` (high word first).
    pub(in crate::ksem) fn u64_at(w: &[u16], at: usize) -> u64 {
        w[at..at + 4]
            .iter()
            .fold(0u64, |acc, &x| (acc << 16) | u64::from(x))
    }

    /// All (+, −) register pairs of block 0 that must never both be non-zero.
    const PAIRS: [usize; 12] = [0, 4, 16, 40, 44, 56, 80, 84, 96, 120, 124, 136];

    #[test]
    fn counters_monotonic_and_pairs_exclusive() {
        for seed in [1, 2, 42] {
            let mut m = KsemModel::new(seed);
            let mut prev = m.energy_block();
            let (mut saw_import, mut saw_export) = (false, false);
            for _ in 0..(5 * 60 * 5) {
                m.step(STEP);
                let e = m.energy_block();
                for at in (0..280).step_by(4) {
                    assert!(
                        u64_at(&e, at) >= u64_at(&prev, at),
                        "seed {seed} reg {}",
                        512 + at
                    );
                }
                prev = e;
                let w = m.instantaneous_block();
                for at in PAIRS {
                    assert!(
                        u32_at(&w, at) == 0 || u32_at(&w, at + 2) == 0,
                        "seed {seed} pair {at}: {} / {}",
                        u32_at(&w, at),
                        u32_at(&w, at + 2)
                    );
                }
                saw_import |= u32_at(&w, 0) > 0;
                saw_export |= u32_at(&w, 2) > 0;
            }
            assert!(
                saw_import && saw_export,
                "seed {seed}: both directions in 5 minutes"
            );
        }
    }

    #[test]
    fn energy_integrates_power() {
        let mut m = KsemModel::new(7);
        let before = m.energy_block();
        let mut expected = 0.0;
        for _ in 0..1000 {
            m.step(STEP);
            expected += m.grid_power_w() * STEP.as_secs_f64() / 360.0;
        }
        let after = m.energy_block();
        let net = (u64_at(&after, 0) - u64_at(&before, 0)) as f64
            - (u64_at(&after, 4) - u64_at(&before, 4)) as f64;
        assert!(
            (net - expected).abs() < 2.0,
            "net {net} expected {expected}"
        );
    }

    #[test]
    fn values_plausible_and_consistent() {
        let mut m = KsemModel::new(3);
        for _ in 0..(20 * 60 * 5) {
            m.step(STEP);
            let w = m.instantaneous_block();
            let f = f64::from(u32_at(&w, 26)) * 0.001;
            assert!((49.95..=50.05).contains(&f), "f {f}");
            let mut p_sum = 0.0;
            for k in 0..3 {
                let b = 40 + 40 * k;
                let u = f64::from(u32_at(&w, b + 22)) * 0.001;
                assert!((225.0..=245.0).contains(&u), "U L{} {u}", k + 1);
                let p = (f64::from(u32_at(&w, b)) - f64::from(u32_at(&w, b + 2))) * 0.1;
                let s = f64::from(u32_at(&w, b + 16) + u32_at(&w, b + 18)) * 0.1;
                let i = f64::from(u32_at(&w, b + 20)) * 0.001;
                let pf = f64::from(u32_at(&w, b + 24) as i32) * 0.001;
                assert!(s + 0.2 >= p.abs(), "S {s} < |P| {p}");
                assert!((i * u - s).abs() < 0.01 * s + 1.0, "I·U {} vs S {s}", i * u);
                assert!((0.0..=1.0).contains(&pf));
                p_sum += p;
            }
            let p_total = (f64::from(u32_at(&w, 0)) - f64::from(u32_at(&w, 2))) * 0.1;
            assert!((p_total - p_sum).abs() < 0.5, "{p_total} vs {p_sum}");
            assert!((p_total - m.grid_power_w()).abs() < 0.1);
        }
    }

    #[test]
    fn base_load_in_range_without_appliances() {
        let mut m = KsemModel::new(5);
        for _ in 0..3000 {
            m.step(STEP);
            m.kettle = None;
            m.hob = None;
            m.pv_peak_w = 0.0;
            m.recompute();
            let p = m.grid_power_w();
            assert!((150.0..=400.0).contains(&p), "base load {p}");
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let mut a = KsemModel::new(99);
        let mut b = KsemModel::new(99);
        for _ in 0..500 {
            a.step(STEP);
            b.step(STEP);
        }
        assert_eq!(a.instantaneous_block(), b.instantaneous_block());
        assert_eq!(a.energy_block(), b.energy_block());
        let c = KsemModel::new(100);
        assert_ne!(a.instantaneous_block(), c.instantaneous_block());
    }

    #[test]
    fn identity_block() {
        let m = KsemModel::new(1);
        assert_eq!(m.read(8244, 1), Some(vec![200]));
        assert_eq!(m.read(8193, 1), Some(vec![0x4842]));
        assert_eq!(m.read(8249, 1), Some(vec![7]));
        assert_eq!(m.read(8196, 4), Some(vec![0x4B4F, 0x5354, 0x414C, 0x0000]));
        let name = m.read(8212, 16).unwrap();
        let bytes: Vec<u8> = name.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert!(bytes.starts_with(b"KOSTAL Smart Energy Meter\0"));
        let serial = m.read(8228, 16).unwrap();
        assert_eq!(serial[0], u16::from_be_bytes([b'7', b'5']));
        let t = m.read(8245, 4).unwrap();
        let ms = u64_at(&t, 0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(ms) < 5_000, "{ms} vs {now}");
    }

    #[test]
    fn reads_outside_blocks_are_none() {
        let m = KsemModel::new(1);
        assert_eq!(m.read(0, 148).map(|v| v.len()), Some(148));
        assert_eq!(m.read(512, 280).map(|v| v.len()), Some(280));
        assert_eq!(m.read(8192, 58).map(|v| v.len()), Some(58));
        assert_eq!(m.read(147, 1).map(|v| v.len()), Some(1));
        assert_eq!(m.read(40_000, 125).map(|v| v.len()), Some(125));
        assert_eq!(m.read(40_125, 54).map(|v| v.len()), Some(54));
        for (a, n) in [
            (0, 0),
            (0, 149),
            (146, 4),
            (148, 1),
            (300, 1),
            (511, 2),
            (791, 2),
            (792, 1),
            (8191, 1),
            (8249, 2),
            (8250, 1),
            (39_999, 2),
            (40_178, 2),
            (65535, 1),
            (65535, 65535),
        ] {
            assert_eq!(m.read(a, n), None, "read({a}, {n})");
        }
    }
}
