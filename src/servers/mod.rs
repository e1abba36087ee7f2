//! Servers: everything that answers from the [`crate::image::Image`], never from upstream.
//! [`rtu_slave`] serves the inverter on RS485; [`modbus_tcp`] serves LAN clients (and
//! queues their writes for the RTU poller); [`mqtt`] publishes to an MQTT broker (Home
//! Assistant).

pub mod modbus_tcp;
pub mod mqtt;
pub mod rtu_slave;
