//! What `airbridge check` can see only on the machine it runs on, warned about so that
//! `check` does not pass what `run` then fails on: a serial device that does not exist, a
//! privileged port the shipped systemd unit cannot bind. Each warning is one
//! `file:line: key: what; what to do`. Touches the file system (existence checks) and the
//! config text (to find lines), nothing else.

use std::net::SocketAddr;
use std::path::Path;

use super::Config;

/// The unit file whose capabilities decide which ports `run` may bind.
const UNIT: &str = "deploy/airbridge.service";

/// Warnings about `config` (read from `path`) on this machine.
pub fn host_warnings(config: &Config, path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let origin = path.display().to_string();
    let mut out = Vec::new();
    let mut device = |section: &str, dev: &str| {
        if is_network_device(dev) || Path::new(dev).exists() {
            return;
        }
        let line = line_of(&text, section, "device");
        out.push(format!(
            "{origin}:{line}: {section}.device: `{dev}` does not exist on this machine; is the \
             RS485 adapter plugged in? `ls -l /dev/serial/by-id/` lists the adapters (use that \
             stable path). `run` starts anyway, serves nothing on this line and opens the \
             device once it appears"
        ));
    };
    if config.rtu_slave {
        device("rtu", &config.rtu.device);
    }
    if let Some(p) = &config.rtu_poll {
        device("rtu_poll", &p.device);
    }
    let mut port = |section: &str, addr: SocketAddr| {
        let p = addr.port();
        if p == 0 || p >= 1024 {
            return;
        }
        let line = line_of(&text, section, "listen");
        out.push(format!(
            "{origin}:{line}: {section}.listen: port {p} is privileged (below 1024) and the \
             shipped systemd unit ({UNIT}) runs as user airbridge without \
             CAP_NET_BIND_SERVICE, so `run` under it cannot bind {addr}; use a port of 1024 \
             or above, or add `AmbientCapabilities=CAP_NET_BIND_SERVICE` and \
             `CapabilityBoundingSet=CAP_NET_BIND_SERVICE` with `sudo systemctl edit airbridge`"
        ));
    };
    if let Some(p) = &config.push {
        port("push", p.listen);
    }
    if let Some(t) = &config.tcp_server {
        port("tcp_server", t.listen);
    }
    if let Some(s) = &config.status {
        port("status", s.listen);
    }
    out
}

/// A serial line reached over the network (an RS485-to-Ethernet converter), not a path.
fn is_network_device(dev: &str) -> bool {
    dev.contains("://")
}

/// The 1-based line of `key:` in the top-level `section:` (block or flow style); the
/// section's own line if the key is not found, 1 if neither is.
pub(super) fn line_of(text: &str, section: &str, key: &str) -> usize {
    let head = format!("{section}:");
    let pat = format!("{key}:");
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with(&head)) else {
        return 1;
    };
    if lines[start].contains(&format!("{{{pat}")) || lines[start].contains(&format!(" {pat}")) {
        return start + 1;
    }
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        if !l.starts_with([' ', '#']) && !l.trim().is_empty() {
            break;
        }
        if l.trim_start().starts_with(&pat) {
            return i + 1;
        }
    }
    start + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_block_and_flow_keys() {
        let t = "rtu:\n  baud: 1\n  device: /dev/x\npush: {listen: 1}\nstatus:\n  # c\n";
        assert_eq!(line_of(t, "rtu", "device"), 3);
        assert_eq!(line_of(t, "push", "listen"), 4);
        assert_eq!(line_of(t, "status", "listen"), 5);
        assert_eq!(line_of(t, "poll", "host"), 1);
    }
}
