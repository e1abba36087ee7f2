//! Control writes from LAN clients to a device on the RTU bus.
//!
//! Owns the write policy (a register may be written only if the profile marks it writable for
//! that function code **and** the config lists it under `writable:`; values in the profile's
//! range) and the job type that carries an accepted write to the RTU poller, which executes it
//! between polls and hands back the device's real outcome. Pure apart from the channel: it
//! touches neither the bus nor the image.

use std::collections::BTreeSet;
use std::fmt;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::control::profile::{Profile, Register, WriteRefusal};

/// One `writable:` entry: a register address or a profile register name.
#[derive(Debug, Clone, PartialEq)]
pub struct WritableEntry {
    /// Which register the entry names.
    pub target: WritableTarget,
    /// The line of the entry in the config file, for messages.
    pub line: u64,
}

/// How a `writable:` entry names its register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritableTarget {
    /// The register written at this address: the single-register (FC06) one if the profile
    /// has one there, else the multi-register (FC16) one that starts there.
    Address(u16),
    /// The profile register of this name.
    Name(String),
}

impl fmt::Display for WritableTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WritableTarget::Address(a) => write!(f, "{a}"),
            WritableTarget::Name(n) => f.write_str(n),
        }
    }
}

pub use airbridge_modbus::master::{FC_WRITE_MULTIPLE, FC_WRITE_SINGLE};

/// Which registers LAN clients may write.
#[derive(Debug, Clone)]
pub struct WritePolicy {
    /// What each register is: its write codes, range and enum.
    profile: Profile,
    /// Names of the allowed profile registers.
    allowed: BTreeSet<String>,
}

/// Why a write is refused before it reaches the bus.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The function code is not a register write (FC06/FC16).
    #[error("function code {0} does not write registers")]
    Function(u8),
    /// The profile refuses it (unknown, read-only, wrong function, partial, out of range).
    #[error("{0}")]
    Profile(WriteRefusal),
    /// The register is in the profile but not listed under `writable:`.
    #[error("{0} is not listed under `writable:`")]
    NotListed(String),
    /// No profile register at this address for this function code.
    #[error("no register is written with function code {fc} at {address}")]
    Unknown { fc: u8, address: u16 },
}

impl Refusal {
    /// The Modbus exception code for the client: 03 for a value out of range, 02 otherwise.
    pub fn exception(&self) -> u8 {
        match self {
            Refusal::Profile(WriteRefusal::OutOfRange { .. } | WriteRefusal::NotInEnum { .. }) => {
                0x03
            }
            Refusal::Function(_) => 0x01,
            _ => 0x02,
        }
    }
}

impl WritePolicy {
    /// Resolve `writable:` entries against the profile: the register names they allow, or the
    /// line and text of the first entry that is not writable in the profile.
    pub fn resolve(
        profile: &Profile,
        entries: &[WritableEntry],
    ) -> Result<BTreeSet<String>, (u64, String)> {
        let mut names = BTreeSet::new();
        for e in entries {
            let reg = resolve_one(profile, &e.target).map_err(|m| (e.line, m))?;
            names.insert(reg.name.clone());
        }
        Ok(names)
    }

    /// The policy for `entries` (see [`WritePolicy::resolve`]).
    pub fn new(profile: Profile, entries: &[WritableEntry]) -> Result<Self, (u64, String)> {
        let allowed = Self::resolve(&profile, entries)?;
        Ok(WritePolicy { profile, allowed })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The allowed registers, by name.
    pub fn allowed(&self) -> &BTreeSet<String> {
        &self.allowed
    }

    /// Check a client's write. `Ok` lists the registers it writes, all allowed, in range.
    /// What a write means is decided by its function code (see [`Profile::check_write`]).
    pub fn check(&self, fc: u8, address: u16, values: &[u16]) -> Result<Vec<&Register>, Refusal> {
        if fc != FC_WRITE_SINGLE && fc != FC_WRITE_MULTIPLE {
            return Err(Refusal::Function(fc));
        }
        if values.is_empty() {
            return Err(Refusal::Unknown { fc, address });
        }
        // First: is every word inside an allowed register written with this code? (02)
        let end = u32::from(address) + values.len() as u32;
        let mut a = u32::from(address);
        while a < end {
            let addr = a as u16;
            let reg = self
                .profile
                .written_by(fc, addr)
                .ok_or(Refusal::Unknown { fc, address: addr })?;
            if !self.allowed.contains(&reg.name) {
                return Err(Refusal::NotListed(reg.name.clone()));
            }
            a = reg.end();
        }
        // Then: whole registers, values in range (03 for a bad value).
        self.profile
            .check_write(fc, address, values)
            .map_err(Refusal::Profile)
    }
}

fn resolve_one<'p>(profile: &'p Profile, target: &WritableTarget) -> Result<&'p Register, String> {
    match target {
        WritableTarget::Name(n) => {
            let r = profile
                .get(n)
                .ok_or_else(|| format!("the profile has no register named `{n}`"))?;
            if !r.access.writable() {
                return Err(format!("{n} is read-only in the profile"));
            }
            Ok(r)
        }
        WritableTarget::Address(a) => {
            if let Some(r) = profile.written_by(FC_WRITE_SINGLE, *a) {
                return Ok(r);
            }
            if let Some(r) = profile.written_by(FC_WRITE_MULTIPLE, *a) {
                if r.address == *a {
                    return Ok(r);
                }
                return Err(format!(
                    "{a} lies inside {} ({}..{}), which is written whole with FC16; list {} or `{}`",
                    r.name,
                    r.address,
                    r.end() - 1,
                    r.address,
                    r.name
                ));
            }
            let ro = [
                crate::control::profile::Table::Input,
                crate::control::profile::Table::Holding,
            ]
            .into_iter()
            .find_map(|f| profile.at(f, *a));
            Err(match ro {
                Some(r) => format!("{a} ({}) is read-only in the profile", r.name),
                None => format!("{a} is not a register of the profile"),
            })
        }
    }
}

/// A write the RTU poller executes on the bus.
#[derive(Debug)]
pub struct WriteJob {
    /// 6 or 16.
    pub fc: u8,
    /// First register written.
    pub address: u16,
    /// The words to write (one for FC06).
    pub values: Vec<u16>,
    /// The device's outcome.
    pub reply: oneshot::Sender<WriteOutcome>,
    /// When the client's request arrived: a job older than `rtu_poll.write_timeout` when the
    /// bus is free is dropped, never sent (see [`WriteOutcome::Expired`]).
    pub queued_at: Instant,
    /// The device on the bus it goes to (index in `Config::devices`; 0 with one device).
    pub device: usize,
}

impl WriteJob {
    /// A job arriving now; its outcome goes to `reply`.
    pub fn new(
        fc: u8,
        address: u16,
        values: Vec<u16>,
        reply: oneshot::Sender<WriteOutcome>,
    ) -> Self {
        WriteJob {
            fc,
            address,
            values,
            reply,
            queued_at: Instant::now(),
            device: 0,
        }
    }

    /// The same job for device `device` of the bus.
    pub fn for_device(mut self, device: usize) -> Self {
        self.device = device;
        self
    }
}

/// What became of a write on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The device confirmed it (FC06 echo, FC16 address/count).
    Done,
    /// The device answered with this exception code.
    Exception(u8),
    /// No valid reply within the timeout (or a garbled one).
    NoReply,
    /// The device is offline; nothing was sent.
    Offline,
    /// It waited longer than `rtu_poll.write_timeout` for the bus; nothing was sent.
    Expired,
}

impl WriteOutcome {
    /// The Modbus exception a TCP client gets, `None` for success.
    pub fn exception(self) -> Option<u8> {
        match self {
            WriteOutcome::Done => None,
            WriteOutcome::Exception(c) => Some(c),
            WriteOutcome::NoReply | WriteOutcome::Offline | WriteOutcome::Expired => Some(0x0B),
        }
    }
}

/// The sending side of the write queue.
pub type WriteQueue = mpsc::Sender<WriteJob>;

/// Accepted writes waiting for the bus (more are refused with exception 06, busy).
pub const QUEUE_DEPTH: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::profile;

    /// A small profile with the register kinds the policy tells apart.
    const PROFILE: &str = "name: test
registers:
  - {name: mode, address: 3044, function: input, type: u16, access: rw, writes: [6], enum: {0: a, 1: b, 2: c}}
  - {name: limit, address: 3200, function: input, type: u16, access: rw, writes: [6], range: [0, 100]}
  - {name: model_name, address: 3200, function: holding, type: ascii, words: 8, access: rw, writes: [16]}
  - {name: clock_set, address: 3239, function: holding, type: ascii, words: 7, access: w, writes: [16]}
  - {name: power, address: 3010, function: input, type: u16, unit: W}
";

    fn entries(targets: &[WritableTarget]) -> Vec<WritableEntry> {
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| WritableEntry {
                target: t.clone(),
                line: 10 + i as u64,
            })
            .collect()
    }

    fn policy(targets: &[WritableTarget]) -> WritePolicy {
        let p = profile::parse(PROFILE, "test profile").expect("profile parses");
        WritePolicy::new(p, &entries(targets)).expect("policy")
    }

    #[test]
    fn an_address_resolves_to_the_single_register_write_first() {
        let p = policy(&[WritableTarget::Address(3200)]);
        let allowed: Vec<_> = p.allowed().iter().cloned().collect();
        assert_eq!(allowed, ["limit"]);
        let p = policy(&[WritableTarget::Name("model_name".into())]);
        assert!(p.allowed().contains("model_name"));
    }

    #[test]
    fn resolving_names_the_line_of_a_bad_entry() {
        let p = profile::parse(PROFILE, "test profile").expect("profile parses");
        let cases = [
            (
                WritableTarget::Name("nope".into()),
                "no register named `nope`",
            ),
            (WritableTarget::Name("power".into()), "read-only"),
            (WritableTarget::Address(3010), "3010 (power) is read-only"),
            (WritableTarget::Address(3241), "lies inside clock_set"),
            (
                WritableTarget::Address(999),
                "not a register of the profile",
            ),
        ];
        for (target, want) in cases {
            let e = entries(&[WritableTarget::Address(3044), target.clone()]);
            let (line, msg) = WritePolicy::resolve(&p, &e).expect_err("refused");
            assert_eq!(line, 11, "{target}: the second entry's line");
            assert!(msg.contains(want), "{target}: {msg}");
        }
    }

    #[test]
    fn check_refuses_with_the_exception_a_client_should_get() {
        let p = policy(&[WritableTarget::Address(3044), WritableTarget::Address(3200)]);
        assert_eq!(p.check(6, 3044, &[2]).expect("in the enum").len(), 1);
        assert_eq!(p.check(6, 3200, &[100]).expect("in range")[0].name, "limit");
        let refused = |fc, addr, values: &[u16]| p.check(fc, addr, values).expect_err("refused");
        // Out of range or not in the enum: 03.
        assert_eq!(refused(6, 3200, &[101]).exception(), 0x03);
        assert_eq!(refused(6, 3044, &[3]).exception(), 0x03);
        // Not listed, unknown, or a register not written with that code: 02.
        let r = refused(16, 3239, &[0; 7]);
        assert_eq!(r, Refusal::NotListed("clock_set".into()));
        assert_eq!(r.exception(), 0x02);
        assert_eq!(refused(6, 3045, &[0]).exception(), 0x02);
        assert_eq!(refused(6, 3044, &[]).exception(), 0x02);
        // Not a write function at all: 01.
        assert_eq!(refused(3, 3044, &[0]), Refusal::Function(3));
        assert_eq!(refused(3, 3044, &[0]).exception(), 0x01);
    }

    #[test]
    fn a_write_spilling_past_an_allowed_register_is_refused_whole() {
        let p = policy(&[WritableTarget::Name("model_name".into())]);
        assert!(p.check(16, 3200, &[0x4B53; 8]).is_ok());
        // Nine words: the ninth lies outside every FC16 register.
        assert!(matches!(
            p.check(16, 3200, &[0x4B53; 9]),
            Err(Refusal::Unknown { address: 3208, .. })
        ));
    }
}
