//! The simulated KSEM's SunSpec chain at 40000..=40178 (`shared/reference/ksem-g2.md` §5,
//! `ecosystem.md` "SunSpec"), in the layout of KSEM firmware ≥ 2.6.0: "SunS", common
//! model 1 (L = 66, with the Pad register that shifted everything after it by one), meter
//! model 203 (wye three-phase, int16 + scale factors, L = 105), end marker 0xFFFF, L = 0.
//!
//! Model 203 is rendered from the KOSTAL map's own words (blocks 0..=147 and 512..=791 of
//! the same model state), so a SunSpec reader and the inverter see the same measurement:
//! W = (P+ − P−) / 10 rounded to whole watts, TotWhImp = A+ / 10 in Wh. Points the KSEM
//! map has no source for (quadrant VArh counters, events) read "not implemented"
//! (0x8000 for int16, 0 for acc32). Pure: no I/O.

/// First register of the chain ("SunS").
pub const SUNSPEC_START: u16 = 40_000;
/// Registers in the chain: 2 + (2 + 66) + (2 + 105) + 2.
pub const SUNSPEC_LEN: usize = 179;
/// Length of common model 1 since firmware 2.6.0 (65 before: no Pad).
pub const COMMON_LEN: u16 = 66;
/// Length of meter model 203.
pub const METER_LEN: u16 = 105;
/// Offset of model 203's first data word (its `A`) within the chain: 40072.
pub const METER_DATA: usize = 2 + 2 + COMMON_LEN as usize + 2;

/// int16 "not implemented".
const NI16: u16 = 0x8000;
/// Scale factors (10^sf): currents in 0.01 A, voltages in 0.1 V, frequency in 0.01 Hz,
/// powers in W, power factor in 0.001, energies in Wh.
const A_SF: i16 = -2;
const V_SF: i16 = -1;
const HZ_SF: i16 = -2;
const W_SF: i16 = 0;
const PF_SF: i16 = -3;
const WH_SF: i16 = 0;

/// The chain for the KOSTAL words `instant` (0..=147) and `energy` (512..=791).
pub fn chain(instant: &[u16; 148], energy: &[u16; 280], serial: &str) -> [u16; SUNSPEC_LEN] {
    let mut w = [0u16; SUNSPEC_LEN];
    w[0] = 0x5375; // "Su"
    w[1] = 0x6E53; // "nS"
    w[2] = 1;
    w[3] = COMMON_LEN;
    let common = &mut w[4..4 + usize::from(COMMON_LEN)];
    put_str(&mut common[0..16], "KOSTAL");
    put_str(&mut common[16..32], "KOSTAL Smart Energy Meter");
    put_str(&mut common[40..48], "2.6.0");
    put_str(&mut common[48..64], serial);
    common[64] = 1; // DA
    common[65] = NI16; // Pad
    let at = 4 + usize::from(COMMON_LEN);
    w[at] = 203;
    w[at + 1] = METER_LEN;
    meter(
        &mut w[METER_DATA..METER_DATA + usize::from(METER_LEN)],
        instant,
        energy,
    );
    w[SUNSPEC_LEN - 2] = 0xFFFF;
    w[SUNSPEC_LEN - 1] = 0;
    w
}

/// Model 203's 105 data words.
fn meter(m: &mut [u16], instant: &[u16; 148], energy: &[u16; 280]) {
    let u32_at = |w: &[u16], at: usize| (u32::from(w[at]) << 16) | u32::from(w[at + 1]);
    let u64_at = |w: &[u16], at: usize| {
        w[at..at + 4]
            .iter()
            .fold(0u64, |acc, &x| (acc << 16) | u64::from(x))
    };
    // A signed KOSTAL pair (+ at `at`, − at `at + 2`, 0.1 units) in whole units.
    let directed = |at: usize| {
        let v = f64::from(u32_at(instant, at)) - f64::from(u32_at(instant, at + 2));
        v / 10.0
    };
    let phase = |k: usize| 40 + 40 * k;
    let currents: [f64; 3] = [0, 1, 2].map(|k| f64::from(u32_at(instant, phase(k) + 20)) / 1000.0);
    let volts: [f64; 3] = [0, 1, 2].map(|k| f64::from(u32_at(instant, phase(k) + 22)) / 1000.0);
    m[0] = int16(currents.iter().sum(), A_SF);
    for k in 0..3 {
        m[1 + k] = int16(currents[k], A_SF);
    }
    m[4] = sf(A_SF);
    m[5] = int16(volts.iter().sum::<f64>() / 3.0, V_SF);
    for k in 0..3 {
        m[6 + k] = int16(volts[k], V_SF);
    }
    // Phase-to-phase voltages: the KOSTAL map has none.
    for x in &mut m[9..13] {
        *x = NI16;
    }
    m[13] = sf(V_SF);
    m[14] = int16(f64::from(u32_at(instant, 26)) / 1000.0, HZ_SF);
    m[15] = sf(HZ_SF);
    // W, VA, VAR: total then phases, signed like P (+ import).
    for (base, kostal) in [(16, 0), (21, 16), (26, 4)] {
        m[base] = int16(directed(kostal), W_SF);
        for k in 0..3 {
            m[base + 1 + k] = int16(directed(phase(k) + kostal), W_SF);
        }
        m[base + 4] = sf(W_SF);
    }
    m[31] = int16(f64::from(u32_at(instant, 24)) / 1000.0, PF_SF);
    for k in 0..3 {
        m[32 + k] = int16(f64::from(u32_at(instant, phase(k) + 24)) / 1000.0, PF_SF);
    }
    m[35] = sf(PF_SF);
    // Energies (acc32, Wh): KOSTAL U64 in 0.1 Wh; total at 512, phases at 592 + 80 k.
    let wh = |at: usize| u32::try_from(u64_at(energy, at) / 10).unwrap_or(u32::MAX);
    let counters = |m: &mut [u16], base: usize, kostal: usize| {
        put_u32(m, base, wh(kostal));
        for k in 0..3 {
            put_u32(m, base + 2 + 2 * k, wh(80 + 80 * k + kostal));
        }
    };
    counters(m, 36, 4); // TotWhExp: A−
    counters(m, 44, 0); // TotWhImp: A+
    m[52] = sf(WH_SF);
    counters(m, 53, 36); // TotVAhExp: S−
    counters(m, 61, 32); // TotVAhImp: S+
    m[69] = sf(WH_SF);
    // TotVArh by quadrant (70..=101): not in the KOSTAL map, acc32 "not implemented" = 0.
    m[102] = sf(WH_SF);
    // Evt (103..=104): no events.
}

/// `value` as int16 at scale factor `sf` (saturating; NaN → 0).
fn int16(value: f64, sf: i16) -> u16 {
    let raw = (value / 10f64.powi(i32::from(sf))).round();
    (raw.clamp(f64::from(i16::MIN + 1), f64::from(i16::MAX)) as i16) as u16
}

/// A scale factor's register value (sunssf, int16).
fn sf(sf: i16) -> u16 {
    sf as u16
}

fn put_u32(w: &mut [u16], at: usize, v: u32) {
    w[at] = (v >> 16) as u16;
    w[at + 1] = v as u16;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ksem::KsemModel;
    use std::time::Duration;

    fn s16(w: u16) -> f64 {
        f64::from(w as i16)
    }

    #[test]
    fn the_chain_has_its_markers_and_lengths() {
        let m = KsemModel::new(3);
        let c = chain(&m.instantaneous_block(), &m.energy_block(), m.serial());
        assert_eq!(&c[0..4], &[0x5375, 0x6E53, 1, 66]);
        assert_eq!(
            &c[70..72],
            &[203, 105],
            "model 203 header at 40070/40071 (fw 2.6.0)"
        );
        assert_eq!(&c[177..179], &[0xFFFF, 0], "end marker at 40177/40178");
        assert_eq!(METER_DATA, 72);
    }

    #[test]
    fn model_203_shows_what_the_kostal_map_shows() {
        let mut m = KsemModel::new(7).with_pv_period(Duration::from_secs(20));
        let (mut saw_import, mut saw_export) = (false, false);
        for _ in 0..200 {
            m.step(Duration::from_millis(200));
            let (inst, energy) = (m.instantaneous_block(), m.energy_block());
            let c = chain(&inst, &energy, m.serial());
            let d = &c[METER_DATA..];
            let w = s16(d[16]) * 10f64.powi(i32::from(d[20] as i16));
            let kostal_w = (f64::from((u32::from(inst[0]) << 16) | u32::from(inst[1]))
                - f64::from((u32::from(inst[2]) << 16) | u32::from(inst[3])))
                / 10.0;
            assert!((w - kostal_w).abs() <= 0.5, "W {w} vs KOSTAL {kostal_w}");
            assert!((w - m.grid_power_w()).abs() <= 1.0);
            saw_import |= w > 0.0;
            saw_export |= w < 0.0;
            let phases_w: f64 = (17..20).map(|i| s16(d[i])).sum();
            assert!((phases_w - w).abs() <= 2.0, "{phases_w} vs {w}");
            let volts = s16(d[6]) * 0.1;
            assert!(
                (volts - m.voltages_v()[0]).abs() <= 0.06,
                "{volts}: 0.1 V steps"
            );
            assert!(
                (s16(d[14]) * 0.01 - m.frequency_hz()).abs() <= 0.006,
                "0.01 Hz steps"
            );
            let imp = (u32::from(d[44]) << 16) | u32::from(d[45]);
            let a_plus = energy[0..4]
                .iter()
                .fold(0u64, |acc, &x| (acc << 16) | u64::from(x));
            assert_eq!(u64::from(imp), a_plus / 10, "TotWhImp = A+ in Wh");
        }
        assert!(saw_import && saw_export, "both signs of W shown");
    }
}
