//! A two-device RS485 bus for the KSTAR tests: two simulated units of one profile on a pty,
//! served until the returned guard drops; the gateway opens the other end by its path.

use std::path::Path;
use std::sync::Arc;

use airbridge::tools::sim::device::{self, Device, DeviceOptions};
use tokio_serial::{SerialPort as _, SerialStream};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Units 1 and 2 of `profile` (frozen values, `pv1_voltage` 1111 and 2222, so a reader can
/// tell them apart) on one pty bus; the path for the gateway, and the guard that stops them.
pub fn two_unit_bus(profile: &Path) -> ([Arc<Device>; 2], String, DropGuard) {
    let prof = airbridge::control::profile::load(profile).expect("profile");
    let unit = |u: u8| {
        Device::new(
            prof.clone(),
            DeviceOptions {
                unit: u,
                seed: u64::from(u),
                frozen: true,
                ..Default::default()
            },
        )
    };
    let devs = [unit(1), unit(2)];
    assert!(devs[0].set("pv1_voltage", &[1111]));
    assert!(devs[1].set("pv1_voltage", &[2222]));
    let (dev_end, gw_end) = SerialStream::pair().expect("pty pair");
    let path = gw_end.name().expect("pty has a path");
    drop(gw_end); // the gateway opens it itself
    let cancel = CancellationToken::new();
    let bus = devs.to_vec();
    let c = cancel.clone();
    tokio::spawn(async move { device::serve_bus(dev_end, &bus, c).await });
    (devs, path, cancel.drop_guard())
}
