//! The I/O edges every source and server is built on: [`serial`] opens a port with exactly
//! the configured settings, [`line`] opens a named bus device (a tty or a `tcp://`
//! RS485 converter), [`reopen`] is the one reopen-with-backoff loop for every
//! device, [`tcp_front`] the one TCP front (admission, allow list, connection limit,
//! idle timeout, rate-limited refusal logs), [`rtu_master`] the RTU client over any byte
//! stream, [`serial_compat`] the classic-termios open for kernels (qemu-user) that refuse
//! termios2, and [`echo`] suppresses a half-duplex adapter's echo of our own frames.

pub(crate) mod echo;
pub(crate) mod line;
pub(crate) mod reopen;
pub mod rtu_master;
pub mod serial;
pub(crate) mod serial_compat;
pub mod tcp_front;
