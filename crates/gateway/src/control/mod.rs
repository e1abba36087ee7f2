//! Control: what registers mean and who may write them, and the one path every write
//! takes. [`profile`] loads and decodes a register profile; [`writes`] is the write policy
//! and the job the RTU poller runs; [`command`] is the one write path (policy, old value,
//! queue, deadline, outcome, log) that every writer calls. No I/O but reading a profile
//! file and the write queue.

pub(crate) mod command;
pub mod profile;
pub(crate) mod writes;
