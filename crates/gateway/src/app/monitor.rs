//! The monitor: logs the gateway's state changes, once each (ready: every region filled;
//! a region going stale, and fresh again). Reads the image; touches nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::image::Image;

/// Log state changes: ready (image warm) and each region going stale or fresh again.
pub async fn monitor(image: Arc<Image>, cancel: CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => return,
        () = image.wait_warm() => {}
    }
    let now = Instant::now();
    let snap = image.load_full();
    // The moment the last region was filled.
    let filled = snap
        .regions
        .iter()
        .filter_map(|r| r.written)
        .max()
        .unwrap_or(now);
    let since = filled.saturating_duration_since(image.created());
    tracing::info!(after = ?since, "ready: every region filled, serving its clients");

    let mut stale: Vec<bool> = vec![false; image.specs().len()];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = image.load_full();
        let now = Instant::now();
        for (i, spec) in image.specs().iter().enumerate() {
            let is_stale = image.is_stale(&snap, i, now);
            if is_stale != stale[i] {
                stale[i] = is_stale;
                if is_stale {
                    let rule = image.freshness(i).unwrap_or(crate::image::Freshness {
                        max_age: spec.max_age,
                        on_stale: spec.on_stale,
                    });
                    tracing::warn!(region = %spec.name, max_age = ?rule.max_age, on_stale = rule.on_stale.as_str(), "region stale");
                } else {
                    tracing::info!(region = %spec.name, "region fresh again");
                }
            }
        }
    }
}
