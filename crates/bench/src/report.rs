//! The bench's markdown: the `bench rtu` table and the `bench e2e` README section. Pure
//! formatting of reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::e2e::E2eReport;
use super::hist::fmt_us;
use super::push::PushBenchReport;
use super::rtu::{wire_time, RtuBenchReport, RtuRangeReport};

/// Markdown table of an RTU report. `wire` = (baud, bits per char) on a real UART.
pub fn rtu_table(report: &RtuBenchReport, wire: Option<(u32, u32)>) -> String {
    let mut s = String::new();
    let wire_cols = wire.is_some();
    s.push_str("| range | requests | ok | timeouts | exceptions | bad frames | stray B | turnaround p50/p90/p99/p99.9/max µs | total p50/p90/p99/p99.9/max µs |");
    if wire_cols {
        s.push_str(" wire: request / reply µs |");
    }
    s.push('\n');
    s.push_str("|---|---|---|---|---|---|---|---|---|");
    if wire_cols {
        s.push_str("---|");
    }
    s.push('\n');
    for r in report.ranges.iter().chain(std::iter::once(&report.all)) {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.range,
            outcome_cells(r),
            r.stray_bytes,
            r.turnaround.compact(),
            r.total.compact()
        );
        if let Some((baud, bpc)) = wire {
            if r.range == "all" {
                s.push_str(" |");
            } else {
                let req = wire_time(8, baud, bpc);
                let rep = wire_time(5 + 2 * usize::from(r.registers), baud, bpc);
                let _ = write!(
                    s,
                    " {:.0} / {:.0} |",
                    req.as_secs_f64() * 1e6,
                    rep.as_secs_f64() * 1e6
                );
            }
        }
        s.push('\n');
    }
    s
}

/// The outcome columns of one range's row: requests | ok | timeouts | exceptions | bad frames.
fn outcome_cells(r: &RtuRangeReport) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        r.requests,
        r.ok,
        r.timeouts + r.partial,
        fmt_exceptions(&r.exceptions),
        r.bad_frames()
    )
}

pub(super) fn fmt_exceptions(e: &BTreeMap<u8, u64>) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter()
        .map(|(c, n)| format!("{n}×{c:02}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The e2e results as markdown, ready to paste into the README.
pub fn e2e_markdown(r: &E2eReport) -> String {
    let mut s = r.run.markdown();
    s.push_str("\n**RTU reads (FC03 from address 0, back to back)**\n\n");
    s.push_str("| load | registers | requests | ok | timeouts | exceptions | bad frames | turnaround p50/p90/p99/p99.9/max µs | total p50/p90/p99/p99.9/max µs |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for c in &r.rtu {
        for x in &c.rtu.ranges {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                c.case,
                x.registers,
                outcome_cells(x),
                x.turnaround.compact(),
                x.total.compact()
            );
        }
    }
    s.push_str("\n**Data age and push**\n\n");
    s.push_str("| measurement | n | p50/p90/p99/p99.9/max µs | notes |\n|---|---|---|---|\n");
    let a = &r.age;
    let _ = writeln!(
        s,
        "| data age: push ack → first RTU reply with that sequence ({} Hz push, reader polling 0..1 back to back) | {} | {} | {} clamped to 0 (seen before the ack); {} unseen at end; {} stale-after-ack reads; read period p50 {} µs |",
        a.rate,
        a.pushes_measured,
        a.age.compact(),
        a.negative_clamped,
        a.pushes_unseen_at_end,
        a.stale_after_ack_reads,
        fmt_us(a.read_period.p50_us)
    );
    for c in &r.rtu {
        if let Some(p) = &c.push {
            let what = format!(
                "push write latency during the RTU flood case ({} conn)",
                p.connections
            );
            let _ = writeln!(s, "{}", push_row(&what, p, false));
        }
    }
    for p in &r.push {
        let what = format!(
            "push throughput, {} conn, max rate, RTU idle",
            p.connections
        );
        let _ = writeln!(s, "{}", push_row(&what, p, true));
    }
    let n = &r.nominal;
    s.push_str("\n**Resources at nominal load** (5 Hz push, inverter polling 0..74 + 74..74 every 160 ms)\n\n");
    s.push_str("| CPU (% of one core) | VmRSS | VmHWM | inverter requests / replies / timeouts | pushes |\n|---|---|---|---|---|\n");
    let _ = writeln!(
        s,
        "| {:.1} % over {:.1} s | {} KiB | {} KiB | {} / {} / {} | {} |",
        n.cpu_pct,
        n.elapsed_s,
        n.vm_rss_kib,
        n.vm_hwm_kib,
        n.inverter_requests,
        n.inverter_replies,
        n.inverter_timeouts,
        n.pushes_ok
    );
    s.push_str("\n(CPU and memory include the bench itself, the simulated KSEM and the simulated inverter: an upper bound for the gateway.)\n");
    let st = &r.startup;
    let _ = writeln!(
        s,
        "\n**Start to ready** ({} starts; KSEM slave already listening, one push sent as soon as the listener is bound)\n\n| measurement | p50/p90/p99/p99.9/max µs |\n|---|---|\n| start → last polled region committed | {} |\n| start → ready (every region filled) | {} |\n| push acknowledged → ready | {} |",
        st.runs,
        st.start_to_polled.compact(),
        st.start_to_ready.compact(),
        st.push_ack_to_ready.compact()
    );
    s
}

/// One push row of the e2e table: `what`, writes, latency, rate (bold with the register
/// rate for a throughput row), errors and exceptions.
fn push_row(what: &str, p: &PushBenchReport, throughput: bool) -> String {
    let rate = if throughput {
        format!(
            "**{:.0} writes/s** ({:.0} registers/s)",
            p.writes_per_s, p.registers_per_s
        )
    } else {
        format!("{:.0} writes/s", p.writes_per_s)
    };
    format!(
        "| {what} | {} | {} | {rate}; {} errors; exceptions {} |",
        p.writes_ok,
        p.latency.compact(),
        p.errors,
        fmt_exceptions(&p.exceptions)
    )
}
