//! Servers: everything that answers from the [`crate::image::Image`], never from upstream.
//! [`rtu_slave`] serves the inverter on RS485; [`modbus_tcp`] serves LAN clients of a
//! KSTAR device (and queues their writes for the RTU poller); [`meter_tcp`] serves the
//! KSEM image to the house, read-only; [`mqtt`] publishes to an MQTT broker (Home
//! Assistant). The two TCP servers share their counters and their one read of the image
//! ([`lan`]); writes go through [`crate::control::command`], the one write path.

pub(crate) mod lan;
pub(crate) mod meter_tcp;
pub(crate) mod modbus_tcp;
pub(crate) mod mqtt;
pub mod rtu_slave;
