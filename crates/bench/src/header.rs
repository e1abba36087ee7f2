//! The header every in-one-run report opens with ([`RunHeader`]: the command, the machine's
//! CPU count and load average when the run began, and how to read the numbers). Reads
//! `/proc/loadavg`; otherwise pure.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What every multi-phase report says first: how it was run and on what machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunHeader {
    /// The command line, printed with the results.
    pub command: String,
    /// CPUs available to the process (everything in the run shares them).
    pub cpus: usize,
    /// The 1-minute load average of the machine when the run began (shared machines).
    #[serde(default)]
    pub loadavg_1m: Option<f64>,
    /// How to read the numbers (printed above the tables).
    pub notes: Vec<String>,
}

impl RunHeader {
    /// Taken when the run begins (the load average is the machine's before the bench).
    pub fn begin(command: String) -> Self {
        RunHeader {
            command,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg_1m: loadavg_1m(),
            notes: Vec::new(),
        }
    }

    /// The command, the machine and the notes as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let load = self
            .loadavg_1m
            .map_or_else(|| "unknown".to_string(), |l| format!("{l:.2}"));
        let _ = writeln!(
            s,
            "Measured with `{}` on {} CPUs, load average (1 min) at start {load}.\n",
            self.command, self.cpus
        );
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s
    }
}

/// The 1-minute load average (`/proc/loadavg`), if readable.
fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
