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

use crate::control::command::{self, Destination, Origin, Written};
use crate::control::writes::{WriteOutcome, WritePolicy, WriteQueue};
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
pub enum CommandResult {
    /// The device confirmed the write; the value it now holds.
    Accepted(Json),
    /// Refused before the bus: why.
    Refused(String),
    /// Sent (or queued) but the device did not confirm it: what happened.
    Failed(String),
}

impl CommandResult {
    /// The result message.
    pub fn json(&self, register: &str, payload: &str) -> Json {
        match self {
            CommandResult::Accepted(v) => {
                json!({"register": register, "request": payload, "outcome": "accepted", "echo": v})
            }
            CommandResult::Refused(why) => {
                json!({"register": register, "request": payload, "outcome": "refused", "reason": why})
            }
            CommandResult::Failed(why) => {
                json!({"register": register, "request": payload, "outcome": "no_answer", "reason": why})
            }
        }
    }
}

impl Commands {
    /// One command: the register's name and payload checked here, then the one write path
    /// ([`command::write`]); its result as the message MQTT publishes.
    pub async fn execute(&self, image: &Image, name: &str, payload: &str) -> CommandResult {
        let profile = self.policy.profile();
        let Some(register) = profile.get(name) else {
            tracing::warn!(
                source = "mqtt",
                register = name,
                "write refused: not a register of the profile"
            );
            return CommandResult::Refused(format!("the profile has no register named `{name}`"));
        };
        if !self.policy.allowed().contains(name) {
            tracing::warn!(
                source = "mqtt",
                register = name,
                "write refused: not listed under `writable:`"
            );
            return CommandResult::Refused(format!("{name} is not listed under `writable:`"));
        }
        let (fc, values) = match register.encode(payload) {
            Ok(x) => x,
            Err(why) => {
                tracing::warn!(source = "mqtt", register = name, "write refused: {why}");
                return CommandResult::Refused(why);
            }
        };
        let new = register.decode(&values);
        let destination = Destination {
            policy: &self.policy,
            queue: &self.queue,
            index: self.device,
            deadline: self.deadline,
        };
        let written = command::write(
            image,
            destination,
            Origin::Mqtt,
            fc,
            register.address,
            values,
        );
        match written.await {
            Written::Refused(refusal) => CommandResult::Refused(refusal.to_string()),
            Written::NotQueued => CommandResult::Failed(
                "not queued: the write queue is full or the bus is gone".into(),
            ),
            Written::Sent(WriteOutcome::Done) => CommandResult::Accepted(json!(new.to_string())),
            Written::Sent(WriteOutcome::Exception(code)) => {
                CommandResult::Refused(format!("the device answered exception {code:02X}"))
            }
            Written::Sent(WriteOutcome::Offline) => {
                CommandResult::Failed("the device is offline; nothing was sent".into())
            }
            Written::Sent(WriteOutcome::Expired) => CommandResult::Failed(
                "the bus was not free within rtu_poll.write_timeout; nothing was sent".into(),
            ),
            Written::Sent(WriteOutcome::NoReply) => CommandResult::Failed(format!(
                "the device did not answer within {:?}",
                self.deadline
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    /// MQTT commands are logged by the one write path under this module's name, as before
    /// it existed: a rename here must rename the target there.
    #[test]
    fn the_write_path_logs_under_this_module() {
        assert_eq!(
            crate::control::command::MQTT_LOG_TARGET,
            module_path!().trim_end_matches("::tests")
        );
    }
}
