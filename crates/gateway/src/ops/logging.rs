//! Logging: how the gateway's lines look, their level, and how often a repeat is said.
//!
//! Owns the global tracing subscriber ([`init`]): text without colour unless stderr is a
//! terminal and without timestamps when stderr is journald's (it stamps every line itself),
//! or JSON lines for log shippers; the handle that changes the level while running
//! ([`set_level`], from `log.level` at start and on SIGHUP); and [`Repeats`], a limiter
//! that turns a warning said every second into one line a minute plus a count. It touches
//! nothing but the log.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::io::IsTerminal as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

struct LevelControl {
    /// Swaps the filter of the installed subscriber (`log.level`, SIGHUP).
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over the config's `log.level`.
    from_env: bool,
}

static LEVEL: OnceLock<LevelControl> = OnceLock::new();

/// Install the global subscriber. The level starts at `RUST_LOG` if set, else `info`; the
/// config's `log.level` is applied with [`set_level`] once the config is read.
pub fn init(format: LogFormat) {
    let env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let from_env = env.is_some();
    let filter = env.unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let journald = stderr_is_journal();
    let text = (format == LogFormat::Text).then(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        if journald {
            layer.without_time().boxed()
        } else {
            layer.boxed()
        }
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .boxed()
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok();
    if installed {
        let _ = LEVEL.set(LevelControl { handle, from_env });
    }
}

/// What [`set_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The new level is in force.
    Applied,
    /// `RUST_LOG` is set and wins; the config's level is ignored.
    OverriddenByEnv,
    /// No subscriber of ours is installed (library use, tests).
    NoSubscriber,
}

/// Check a `log.level` value: a level (`info`) or tracing directives
/// (`info,airbridge::sources::ksem_poll=debug`).
pub fn parse_level(directives: &str) -> Result<EnvFilter, String> {
    if directives.trim().is_empty() {
        return Err("empty; use error, warn, info, debug or trace".into());
    }
    // A bare word would be taken as a target name at trace level: only levels, or
    // `target=level` pairs.
    for d in directives.split(',').map(str::trim) {
        if !d.contains('=') && d.parse::<tracing::level_filters::LevelFilter>().is_err() {
            return Err(format!(
                "`{d}` is not a level; use error, warn, info, debug, trace or target=level"
            ));
        }
    }
    EnvFilter::try_new(directives).map_err(|e| {
        format!(
            "`{directives}` is not a level or filter ({e}); use error, warn, info, debug or trace"
        )
    })
}

/// Change the level of the running subscriber.
pub fn set_level(directives: &str) -> Result<LevelChange, String> {
    let filter = parse_level(directives)?;
    let Some(control) = LEVEL.get() else {
        return Ok(LevelChange::NoSubscriber);
    };
    if control.from_env {
        return Ok(LevelChange::OverriddenByEnv);
    }
    control
        .handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log level: {e}"))?;
    Ok(LevelChange::Applied)
}

/// stderr is the journal stream systemd set up (`JOURNAL_STREAM=dev:inode` matches fd 2).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let meta = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match (meta, dev.parse::<u64>(), ino.parse::<u64>()) {
        (Ok(m), Ok(dev), Ok(ino)) => m.dev() == dev && m.ino() == ino,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Rate-limited repeats.

/// How many repeats of a line were held back; displays as ` (… 57 more in the last minute)`,
/// or as nothing when there were none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct More {
    /// Repeats suppressed since the last line that was let through.
    pub count: u64,
    /// The window they were counted in.
    pub window: Duration,
}

impl fmt::Display for More {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return Ok(());
        }
        write!(
            f,
            " (… {} more in the last {})",
            self.count,
            Window(self.window)
        )
    }
}

struct Window(Duration);

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == Duration::from_secs(60) {
            f.write_str("minute")
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the line was last said.
    said: Instant,
    /// Repeats held back since.
    held: u64,
}

/// Says a line at most once per `window` per key, counting what it held back.
///
/// The clock is the caller's (`now` arguments), so it can be tested without waiting. At most
/// `capacity` keys are tracked; a key beyond that is always said (never silently dropped).
#[derive(Debug)]
pub struct Repeats<K> {
    /// A message is let through at most once per window.
    window: Duration,
    /// Most distinct messages tracked (a flood of distinct ones cannot grow the map).
    capacity: usize,
    /// Per message: when it was last let through and the repeats since.
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Repeats<K> {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Repeats {
            window,
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The line `key` happens at `now`: `Some` = say it (with the count held back in the
    /// window that just ended), `None` = hold it back.
    pub fn hit(&mut self, key: K, now: Instant) -> Option<More> {
        let window = self.window;
        if let Some(e) = self.entries.get_mut(&key) {
            if now.saturating_duration_since(e.said) < window {
                e.held += 1;
                return None;
            }
            let count = std::mem::take(&mut e.held);
            e.said = now;
            return Some(More { count, window });
        }
        if self.entries.len() >= self.capacity {
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.said) < window || e.held > 0);
        }
        if self.entries.len() < self.capacity {
            self.entries.insert(key, Entry { said: now, held: 0 });
        }
        Some(More { count: 0, window })
    }

    /// Keys whose window ended with repeats held back, and how many; those keys are
    /// forgotten, so their next occurrence is said at once. Quiet keys are forgotten too.
    pub fn flush(&mut self, now: Instant) -> Vec<(K, More)> {
        let window = self.window;
        let mut out = Vec::new();
        self.entries.retain(|k, e| {
            if now.saturating_duration_since(e.said) < window {
                return true;
            }
            if e.held > 0 {
                out.push((
                    k.clone(),
                    More {
                        count: e.held,
                        window,
                    },
                ));
            }
            false
        });
        out
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The window of the process-wide limiter.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

fn global() -> &'static Mutex<Repeats<String>> {
    static G: OnceLock<Mutex<Repeats<String>>> = OnceLock::new();
    G.get_or_init(|| Mutex::new(Repeats::new(REPEAT_WINDOW, 512)))
}

/// The process-wide limiter for warnings that can repeat every second (a refused KSEM that
/// keeps reconnecting). `key` is the line as the user should read it in the summary, e.g.
/// `push connection refused from 192.168.1.7: not in push.allow_from`.
pub fn limited(key: impl Into<String>) -> Option<More> {
    let mut g = global().lock().unwrap_or_else(|p| p.into_inner());
    g.hit(key.into(), Instant::now())
}

/// Say the held-back counts of windows that ended (called periodically).
pub fn flush_limited() {
    let ended = {
        let mut g = global().lock().unwrap_or_else(|p| p.into_inner());
        g.flush(Instant::now())
    };
    for (line, more) in ended {
        tracing::warn!("{line}{more}");
    }
}

/// Run [`flush_limited`] every few seconds until `cancel` fires.
pub async fn flush_task(cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => flush_limited(),
        }
    }
}
