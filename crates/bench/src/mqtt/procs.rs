//! `bench mqtt`'s child processes and files: [`Proc`] (SIGKILLed and reaped on drop, and by
//! `PR_SET_PDEATHSIG` when the bench dies first), the run's [`TempDir`], free loopback
//! ports, and Mosquitto (found, configured, started, waited for).
//!
//! May touch: child processes it spawns, the run's temporary directory, loopback sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::PATIENCE;

/// A child process: SIGKILLed and reaped on drop, and (`PR_SET_PDEATHSIG`) when the bench
/// dies first.
pub(super) struct Proc {
    /// `None` once reaped.
    child: Option<std::process::Child>,
    /// For messages.
    pub(super) what: &'static str,
}

impl Proc {
    pub(super) fn spawn(mut cmd: Command, what: &'static str) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt as _;
        // The signal comes when the spawning thread ends: a runtime worker, which lives as
        // long as the bench.
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Proc {
            child: Some(child),
            what,
        })
    }

    /// Fail if it exited (e.g. a config it refused).
    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                anyhow::bail!("{} exited early: {status}", self.what);
            }
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    pub(super) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, up to 5 s for a clean exit, then SIGKILL.
    pub(super) async fn stop(&mut self) {
        let Some(c) = &mut self.child else { return };
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The run's directory (configs, the profile, the broker's log); removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> anyhow::Result<TempDir> {
        let d = std::env::temp_dir().join(format!(
            "airbridge-bench-mqtt-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port free right now (bound and released).
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The Mosquitto binary: on PATH or where Debian puts it.
pub fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// Until something accepts on `addr`, `proc` still running, or `PATIENCE`.
pub(super) async fn wait_listening(addr: SocketAddr, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        proc.check_running()?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not listen on {addr} within {PATIENCE:?}",
            proc.what
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mosquitto on 127.0.0.1:`port`, anonymous, logging into `dir`.
pub(super) async fn start_broker(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<Proc> {
    let conf = dir.join("mosquitto.conf");
    // As root, mosquitto would drop to user `mosquitto`, which cannot read this directory.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    };
    std::fs::write(
        &conf,
        format!(
            "{user}per_listener_settings false\nlog_dest file {}\nlistener {port} 127.0.0.1\nallow_anonymous true\n",
            dir.join("mosquitto.log").display()
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn(cmd, "mosquitto")?;
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &mut p).await?;
    Ok(p)
}
