//! Classic-termios fallback for [`crate::link::serial::open`], for kernels that refuse termios2.
//!
//! `serialport` configures a port with the Linux `termios2` ioctls (`TCGETS2`/`TCSETS2`).
//! Every real Linux kernel has them, but qemu-user does not translate them, so a foreign
//! binary under emulation (the arm64 build tested in CI on x86-64) could not open the ptys
//! the black-box tests hand it. When, and only when, the device answers the classic
//! `tcgetattr` but refuses `TCGETS2`, [`open`](crate::link::serial::open) reopens it here with
//! `tcsetattr` and a standard baud rate constant, and wraps it as the same
//! `tokio_serial::SerialStream` (exclusive, non-blocking) that the normal path returns.
//! On a real kernel `TCGETS2` works, this path is never taken, and the original error is
//! what the caller sees.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::config::{Parity, RtuConfig};

/// True if `device` is a terminal for the classic `tcgetattr` but refuses `TCGETS2` with
/// ENOTTY, ENOSYS or EINVAL: what qemu-user does. Any other outcome (the device cannot be
/// opened, is no terminal, or `TCGETS2` works) is false, so the caller keeps its own error.
pub fn termios2_refused(device: &str) -> bool {
    let Ok(fd) = open_fd(device) else {
        return false;
    };
    if tcgetattr(fd.as_raw_fd()).is_err() {
        return false;
    }
    let mut t2 = MaybeUninit::<libc::termios2>::uninit();
    // SAFETY: `fd` is open for the call; TCGETS2 writes one `struct termios2` into `t2`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2 as _, t2.as_mut_ptr()) };
    if r == 0 {
        return false;
    }
    matches!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY | libc::ENOSYS | libc::EINVAL)
    )
}

/// Open `cfg.device` raw with the configured baud, data bits, parity and stop bits and no
/// flow control, through `tcsetattr`, and wrap it for tokio (must run inside a runtime).
/// The baud must be one of the kernel's standard rates (`B50` … `B4000000`).
pub fn open(cfg: &RtuConfig) -> io::Result<tokio_serial::SerialStream> {
    let speed = speed_constant(cfg.baud).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "baud {} is not a standard rate (classic termios fallback)",
                cfg.baud
            ),
        )
    })?;
    let fd = open_fd(&cfg.device)?;
    let raw = fd.as_raw_fd();
    let mut t = tcgetattr(raw)?;
    configure(&mut t, cfg, speed)?;
    // SAFETY: `raw` is open for the call and `t` is a complete termios.
    if unsafe { libc::tcsetattr(raw, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open and owned by nobody else from here on: TTYPort takes
    // it over (and applies TIOCEXCL and an exclusive flock, as serialport's own open does).
    let tty = unsafe { serialport::TTYPort::from_raw_fd(into_raw(fd)) };
    tracing::info!(device = %cfg.device, "termios2 refused (qemu-user?): configured with classic termios");
    tokio_serial::SerialStream::try_from(tty).map_err(io::Error::from)
}

/// Raw mode with `cfg`'s data bits, parity and stop bits, no flow control, at `speed`.
fn configure(t: &mut libc::termios, cfg: &RtuConfig, speed: libc::speed_t) -> io::Result<()> {
    // SAFETY: `t` is an initialised termios that these functions only modify.
    unsafe { libc::cfmakeraw(t) };
    t.c_cflag |= libc::CREAD | libc::CLOCAL;
    t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::PARODD | libc::CSTOPB | libc::CRTSCTS);
    t.c_cflag |= match cfg.data_bits {
        5 => libc::CS5,
        6 => libc::CS6,
        7 => libc::CS7,
        _ => libc::CS8,
    };
    match cfg.parity {
        Parity::None => t.c_iflag &= !libc::INPCK,
        Parity::Even => {
            t.c_cflag |= libc::PARENB;
            t.c_iflag |= libc::INPCK;
        }
        Parity::Odd => {
            t.c_cflag |= libc::PARENB | libc::PARODD;
            t.c_iflag |= libc::INPCK;
        }
    }
    if cfg.stop_bits == 2 {
        t.c_cflag |= libc::CSTOPB;
    }
    t.c_iflag &= !(libc::IXON | libc::IXOFF | libc::IXANY);
    // SAFETY: as above; `speed` is one of the libc B* constants.
    if unsafe { libc::cfsetspeed(t, speed) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn into_raw(fd: OwnedFd) -> RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

fn open_fd(device: &str) -> io::Result<OwnedFd> {
    let path = CString::new(device)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "device path contains NUL"))?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let raw = unsafe { libc::open(path.as_ptr(), flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by open(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn tcgetattr(fd: RawFd) -> io::Result<libc::termios> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `fd` is open for the call; tcgetattr fills the whole struct on success.
    if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { t.assume_init() })
}

fn speed_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        50 => libc::B50,
        75 => libc::B75,
        110 => libc::B110,
        134 => libc::B134,
        150 => libc::B150,
        200 => libc::B200,
        300 => libc::B300,
        600 => libc::B600,
        1200 => libc::B1200,
        1800 => libc::B1800,
        2400 => libc::B2400,
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        460800 => libc::B460800,
        500000 => libc::B500000,
        576000 => libc::B576000,
        921600 => libc::B921600,
        1000000 => libc::B1000000,
        1152000 => libc::B1152000,
        1500000 => libc::B1500000,
        2000000 => libc::B2000000,
        2500000 => libc::B2500000,
        3000000 => libc::B3000000,
        3500000 => libc::B3500000,
        4000000 => libc::B4000000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_serial::SerialPort as _;

    fn rtu(device: &str, baud: u32, parity: Parity, stop_bits: u8) -> RtuConfig {
        let yaml = "rtu: {device: x}
regions:
  - {name: id, start: 8192, count: 1, source: static, values: {8192: 1}}
";
        let mut rtu = crate::config::parse(yaml, "test")
            .expect("config")
            .config
            .rtu;
        rtu.device = device.to_string();
        rtu.baud = baud;
        rtu.parity = parity;
        rtu.stop_bits = stop_bits;
        rtu
    }

    /// `bytes` written to `port` arrive unchanged at the pty's `master` end (within 5 s).
    async fn carries(
        port: &mut (impl tokio::io::AsyncWrite + Unpin),
        master: &mut tokio_serial::SerialStream,
        bytes: &[u8],
    ) {
        port.write_all(bytes).await.expect("write");
        let mut got = vec![0u8; bytes.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            master.read_exact(&mut got),
        )
        .await
        .expect("in time")
        .expect("read");
        assert_eq!(got, bytes);
    }

    fn pty() -> (tokio_serial::SerialStream, String) {
        let (master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
        let device = slave.name().expect("pty path");
        (master, device)
    }

    #[test]
    fn configure_sets_the_line_as_asked() {
        // SAFETY: termios is plain data; all-zero is a valid value to start from.
        let zero: libc::termios = unsafe { std::mem::zeroed() };
        for (parity, stop, want_parenb, want_parodd, want_cstopb) in [
            (Parity::None, 2, false, false, true),
            (Parity::Even, 1, true, false, false),
            (Parity::Odd, 1, true, true, false),
        ] {
            let mut t = zero;
            t.c_cflag = libc::CRTSCTS;
            t.c_iflag = libc::IXON | libc::ICRNL;
            t.c_lflag = libc::ICANON | libc::ECHO;
            configure(&mut t, &rtu("x", 38400, parity, stop), libc::B38400).expect("ok");
            assert_eq!(t.c_cflag & libc::CSIZE, libc::CS8);
            assert_eq!(t.c_cflag & libc::PARENB != 0, want_parenb, "{parity:?}");
            assert_eq!(t.c_cflag & libc::PARODD != 0, want_parodd, "{parity:?}");
            assert_eq!(t.c_cflag & libc::CSTOPB != 0, want_cstopb, "{parity:?}");
            assert_eq!(t.c_iflag & libc::INPCK != 0, want_parenb, "{parity:?}");
            assert_eq!(t.c_cflag & libc::CRTSCTS, 0, "no hardware flow control");
            assert_eq!(
                t.c_iflag & (libc::IXON | libc::ICRNL),
                0,
                "no XON/XOFF, no CR/LF"
            );
            assert_eq!(t.c_lflag & (libc::ICANON | libc::ECHO), 0, "raw");
            assert_ne!(t.c_cflag & (libc::CREAD | libc::CLOCAL), 0);
            // SAFETY: `t` is an initialised termios.
            assert_eq!(unsafe { libc::cfgetospeed(&t) }, libc::B38400);
        }
        assert_eq!(speed_constant(9600), Some(libc::B9600));
        assert_eq!(speed_constant(12345), None);
    }

    #[tokio::test]
    async fn the_classic_path_opens_a_pty_at_the_baud_and_carries_bytes() {
        let (mut master, device) = pty();
        let cfg = rtu(&device, 19200, Parity::None, 2);
        let mut port = open(&cfg).expect("classic open");
        let t = tcgetattr(port.as_raw_fd()).expect("tcgetattr");
        // SAFETY: `t` is an initialised termios.
        assert_eq!(unsafe { libc::cfgetospeed(&t) }, libc::B19200);
        assert_eq!(t.c_lflag & (libc::ICANON | libc::ECHO), 0, "raw mode");

        // No CR/LF translation.
        carries(&mut port, &mut master, &[0x01, 0x03, 0x0a, 0x0d]).await;
    }

    #[tokio::test]
    async fn the_classic_path_refuses_what_it_cannot_set_and_names_why() {
        let (_master, device) = pty();
        let e = open(&rtu(&device, 12345, Parity::None, 2)).expect_err("odd baud");
        assert!(e.to_string().contains("not a standard rate"), "{e}");
        assert!(open(&rtu("/nonexistent/tty", 9600, Parity::None, 2)).is_err());
        let e = open(&rtu("/dev/tty\0x", 9600, Parity::None, 2)).expect_err("NUL");
        assert!(e.to_string().contains("NUL"), "{e}");
        assert!(
            open(&rtu("/dev/null", 9600, Parity::None, 2)).is_err(),
            "no tty"
        );
    }

    #[tokio::test]
    async fn a_real_kernel_takes_termios2_so_the_fallback_stays_off() {
        let (_master, device) = pty();
        // CI runs this natively on x86-64. (Under qemu-user, e.g. the arm64 test binary,
        // TCGETS2 is refused: that is the case the fallback is for.)
        if cfg!(target_arch = "x86_64") {
            assert!(!termios2_refused(&device));
        }
        assert!(!termios2_refused("/nonexistent/tty"));
        assert!(!termios2_refused("/dev/null"), "not a terminal at all");
    }

    #[tokio::test]
    async fn serial_open_falls_back_only_when_termios2_is_refused() {
        let (mut master, device) = pty();
        let cfg = rtu(&device, 9600, Parity::None, 2);
        // Natively the termios2 path opens it; under qemu-user the fallback does. Either
        // way the caller gets a working stream for the same config.
        let mut port = crate::link::serial::open(&cfg).expect("opens");
        carries(&mut port, &mut master, &[0x11, 0x0d]).await;
    }
}
