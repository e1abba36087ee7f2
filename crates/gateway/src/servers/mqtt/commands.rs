//! Commands over MQTT (KSTAR, off unless `mqtt.commands: true`): a value published on
//! `<topic>/set/<register>` becomes the same [`WriteJob`] a Modbus TCP client's write
//! would, through the same [`WritePolicy`] (profile, `writable:` list, range), the same
//! queue and the same deadline (with `devices:`, `<topic>/<device>/set/<register>`: that
//! device's policy and writes); its outcome is published on `<topic>/set/<register>/result`
//! and logged like a TCP write. Touches the write queue and reads the image (for the old
//! value in the log line); never the bus.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::sync::oneshot;

use crate::control::profile::{Kind, Register};
use crate::control::writes::{
    WriteJob, WriteOutcome, WritePolicy, WriteQueue, FC_WRITE_MULTIPLE, FC_WRITE_SINGLE,
};
use crate::image::Image;

/// What commands need: the policy, the queue to the RTU poller and how long to wait.
#[derive(Clone)]
pub struct Commands {
    /// The write policy a Modbus TCP write goes through.
    pub policy: Arc<WritePolicy>,
    /// The RTU poller's write queue (a clone of the TCP server's sender).
    pub queue: WriteQueue,
    /// How long a write may wait for queue + bus (the TCP server's deadline).
    pub deadline: Duration,
    /// The device on the bus the writes go to (index in `Config::devices`; 0 with one).
    pub device: usize,
}

/// What became of one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The device confirmed the write; the value it now holds.
    Accepted(Json),
    /// Refused before the bus: why.
    Refused(String),
    /// Sent (or queued) but the device did not confirm it: what happened.
    Failed(String),
}

impl Outcome {
    /// The result message.
    pub fn json(&self, register: &str, payload: &str) -> Json {
        match self {
            Outcome::Accepted(v) => {
                json!({"register": register, "request": payload, "outcome": "accepted", "echo": v})
            }
            Outcome::Refused(why) => {
                json!({"register": register, "request": payload, "outcome": "refused", "reason": why})
            }
            Outcome::Failed(why) => {
                json!({"register": register, "request": payload, "outcome": "no_answer", "reason": why})
            }
        }
    }
}

/// The function code and words that write `payload` to `register`: an enum's label (or
/// raw number), or a physical value that is a whole multiple of the register's scale.
pub fn encode(register: &Register, payload: &str) -> Result<(u8, Vec<u16>), String> {
    let text = payload.trim().trim_matches('"').trim();
    let raw: i128 = match &register.enumeration {
        Some(table) => match table
            .iter()
            .find(|(_, label)| label.eq_ignore_ascii_case(text))
        {
            Some((&raw, _)) => i128::from(raw),
            None => text.parse::<i128>().map_err(|_| {
                let labels: Vec<&str> = table.values().map(String::as_str).collect();
                format!("`{text}` is not one of {labels:?}")
            })?,
        },
        None => {
            let v: f64 = text
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?;
            if !v.is_finite() || register.scale == 0.0 {
                return Err(format!("`{text}` is not a usable number"));
            }
            let raw = v / register.scale;
            if (raw - raw.round()).abs() > 1e-6 * raw.abs().max(1.0) {
                return Err(format!(
                    "{v} is not a multiple of the register's step {}",
                    register.scale
                ));
            }
            if raw.abs() > 1.0e18 {
                return Err(format!("{v} is too large"));
            }
            raw.round() as i128
        }
    };
    let words = words_of(register.kind, raw).ok_or_else(|| {
        format!(
            "{raw} does not fit the register's type ({})",
            kind_name(register.kind)
        )
    })?;
    let fc = if words.len() == 1 && register.writes.contains(&FC_WRITE_SINGLE) {
        FC_WRITE_SINGLE
    } else if register.writes.contains(&FC_WRITE_MULTIPLE) {
        FC_WRITE_MULTIPLE
    } else {
        FC_WRITE_SINGLE
    };
    Ok((fc, words))
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::U16 => "u16",
        Kind::S16 => "s16",
        Kind::U32 => "u32",
        Kind::S32 => "s32",
        Kind::U64 => "u64",
        Kind::Ascii => "ascii",
        Kind::Bcd => "bcd",
        Kind::U8pair => "u8pair",
    }
}

/// The big-endian words of `raw` as `kind`, if it fits.
fn words_of(kind: Kind, raw: i128) -> Option<Vec<u16>> {
    let be =
        |v: u64, n: usize| -> Vec<u16> { (0..n).rev().map(|i| (v >> (16 * i)) as u16).collect() };
    match kind {
        Kind::U16 | Kind::U8pair => u16::try_from(raw).ok().map(|v| vec![v]),
        Kind::S16 => i16::try_from(raw).ok().map(|v| vec![v as u16]),
        Kind::U32 => u32::try_from(raw).ok().map(|v| be(u64::from(v), 2)),
        Kind::S32 => i32::try_from(raw).ok().map(|v| be(u64::from(v as u32), 2)),
        Kind::U64 => u64::try_from(raw).ok().map(|v| be(v, 4)),
        Kind::Ascii | Kind::Bcd => None,
    }
}

impl Commands {
    /// Check, queue and await one command; log it like a TCP write.
    pub async fn execute(&self, image: &Image, name: &str, payload: &str) -> Outcome {
        let profile = self.policy.profile();
        let Some(register) = profile.get(name) else {
            tracing::warn!(
                source = "mqtt",
                register = name,
                "write refused: not a register of the profile"
            );
            return Outcome::Refused(format!("the profile has no register named `{name}`"));
        };
        if !self.policy.allowed().contains(name) {
            tracing::warn!(
                source = "mqtt",
                register = name,
                "write refused: not listed under `writable:`"
            );
            return Outcome::Refused(format!("{name} is not listed under `writable:`"));
        }
        let (fc, values) = match encode(register, payload) {
            Ok(x) => x,
            Err(why) => {
                tracing::warn!(source = "mqtt", register = name, "write refused: {why}");
                return Outcome::Refused(why);
            }
        };
        let address = register.address;
        if let Err(refusal) = self.policy.check(fc, address, &values) {
            tracing::warn!(source = "mqtt", fc, address, values = ?values, "write refused: {refusal}");
            return Outcome::Refused(refusal.to_string());
        }
        let new = register.decode(&values);
        let old = register
            .access
            .readable()
            .then(|| {
                let snap = image.load();
                let table = image.device_table(self.device, register.table.read_code());
                image.read_words(&snap, table, register.address, register.words)
            })
            .flatten()
            .map_or_else(
                || "unknown".to_string(),
                |w| register.decode(&w).to_string(),
            );
        let change = format!("{name} {address} {old} -> {new}");
        let (tx, rx) = oneshot::channel();
        let job = WriteJob::new(fc, address, values, tx).to_device(self.device);
        if self.queue.try_send(job).is_err() {
            tracing::warn!(
                source = "mqtt",
                "write not queued (queue full or bus gone): {change}"
            );
            return Outcome::Failed(
                "not queued: the write queue is full or the bus is gone".into(),
            );
        }
        let outcome = match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) | Err(_) => WriteOutcome::NoReply,
        };
        match outcome {
            WriteOutcome::Done => {
                tracing::info!(source = "mqtt", fc, "write done: {change}");
                Outcome::Accepted(json!(new.to_string()))
            }
            WriteOutcome::Exception(code) => {
                tracing::warn!(source = "mqtt", fc, ?outcome, "write failed: {change}");
                Outcome::Refused(format!("the device answered exception {code:02X}"))
            }
            WriteOutcome::NoReply | WriteOutcome::Offline | WriteOutcome::Expired => {
                tracing::warn!(source = "mqtt", fc, ?outcome, "write failed: {change}");
                Outcome::Failed(match outcome {
                    WriteOutcome::Offline => "the device is offline; nothing was sent".into(),
                    WriteOutcome::Expired => {
                        "the bus was not free within rtu_poll.write_timeout; nothing was sent"
                            .into()
                    }
                    _ => format!("the device did not answer within {:?}", self.deadline),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid() -> crate::control::profile::Profile {
        let p = format!(
            "{}/../../profiles/kstar-hybrid.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        crate::control::profile::load(std::path::Path::new(&p)).unwrap()
    }

    #[test]
    fn numbers_enums_and_steps() {
        let p = hybrid();
        let limit = p.get("active_power_setting").unwrap();
        assert_eq!(encode(limit, "85").unwrap(), (6, vec![85]));
        assert_eq!(encode(limit, " 85.0 ").unwrap(), (6, vec![85]));
        assert!(encode(limit, "85.5").is_err());
        assert!(encode(limit, "abc").is_err());
        assert!(encode(limit, "NaN").is_err());
        assert!(encode(limit, "70000").is_err());
        let mode = p.get("working_mode").unwrap();
        assert_eq!(encode(mode, "1").unwrap(), (6, vec![1]));
        let label = mode.enumeration.as_ref().unwrap()[&2].clone();
        assert_eq!(encode(mode, &label).unwrap(), (6, vec![2]));
        assert!(encode(mode, "nonsense").is_err());
        let vmin = p.get("grid_voltage_min").unwrap();
        assert_eq!(encode(vmin, "180.5").unwrap(), (6, vec![1805]));
    }

    #[test]
    fn signed_and_wide_words() {
        assert_eq!(words_of(Kind::S16, -1), Some(vec![0xFFFF]));
        assert_eq!(words_of(Kind::S16, 40_000), None);
        assert_eq!(words_of(Kind::U32, 0x1_0002), Some(vec![1, 2]));
        assert_eq!(words_of(Kind::S32, -2), Some(vec![0xFFFF, 0xFFFE]));
        assert_eq!(words_of(Kind::U16, -1), None);
        assert_eq!(words_of(Kind::Ascii, 1), None);
    }
}
