//! A two-device RS485 bus for the KSTAR tests: two simulated units of one profile on a pty,
//! served until the returned guard drops; the gateway opens the other end by its path.

use std::path::Path;
use std::sync::Arc;

use airbridge_sim::device::{self, DeviceOptions, SimDevice};
use tokio_serial::{SerialPort as _, SerialStream};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Units 1 and 2 of `profile` (frozen values, `pv1_voltage` 1111 and 2222, so a reader can
/// tell them apart) on one pty bus; the path for the gateway, and the guard that stops them.
pub fn two_unit_bus(profile: &Path) -> ([Arc<SimDevice>; 2], String, DropGuard) {
    let (devs, path, guard) = pty_bus(profile, &[(1, 1111), (2, 2222)]);
    let [one, two] = <[Arc<SimDevice>; 2]>::try_from(devs).unwrap_or_else(|_| unreachable!());
    ([one, two], path, guard)
}

/// One simulated device of `profile` per `(unit, pv1_voltage)` (frozen values, seed = unit)
/// on one pty bus; the path for the gateway, and the guard that stops them.
pub fn pty_bus(profile: &Path, units: &[(u8, u16)]) -> (Vec<Arc<SimDevice>>, String, DropGuard) {
    let prof = airbridge::control::profile::load(profile).expect("profile");
    let devs: Vec<Arc<SimDevice>> = units
        .iter()
        .map(|&(unit, volts)| {
            let d = SimDevice::new(
                prof.clone(),
                DeviceOptions {
                    unit,
                    seed: u64::from(unit),
                    frozen: true,
                    ..Default::default()
                },
            );
            assert!(d.set("pv1_voltage", &[volts]));
            d
        })
        .collect();
    let (dev_end, gw_end) = SerialStream::pair().expect("pty pair");
    let path = gw_end.name().expect("pty has a path");
    drop(gw_end); // the gateway opens it itself
    let cancel = CancellationToken::new();
    let bus = devs.clone();
    let c = cancel.clone();
    tokio::spawn(async move { device::serve_bus(dev_end, &bus, c).await });
    (devs, path, cancel.drop_guard())
}
