//! Property tests of the register image under concurrent writers: for random region layouts
//! and write ranges, readers never see a snapshot that mixes two writes of one writer (every
//! push and every polled region is committed whole), and what a reader sees never goes back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use airbridge::config::{OnStale, Region, Sources};
use airbridge::image::Image;
use proptest::prelude::*;
use tokio::time::Instant;

fn region(name: String, start: u16, count: u16, push: bool) -> Region {
    Region {
        name,
        start,
        count,
        source: Sources {
            push,
            poll: !push,
            fixed: false,
            rtu_poll: false,
        },
        every: (!push).then_some(Duration::from_secs(1)),
        max_age: Duration::from_secs(2),
        on_stale: OnStale::Silence,
        fallback_poll: None,
        values: BTreeMap::new(),
        table: None,
        device: 0,
    }
}

/// Word `addr` of write `seq` by writer `w`: the writer in the top 2 bits, the sequence mixed
/// with the address below, so a word left over from another write cannot pass for this one.
fn encode(w: u16, seq: u16, addr: u16) -> u16 {
    (w << 14) | ((seq ^ addr.wrapping_mul(0x9E37)) & 0x3FFF)
}
fn decode(word: u16, addr: u16) -> (u16, u16) {
    (word >> 14, (word ^ addr.wrapping_mul(0x9E37)) & 0x3FFF)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn snapshots_never_mix_generations(
        sizes in prop::collection::vec(1u16..60, 2..6),
        cut in 0.2f64..0.8,
        writes in 300u16..1500,
    ) {
        // Contiguous push regions, then one polled region after a gap.
        let mut regions = Vec::new();
        let mut at = 0u16;
        for (i, s) in sizes.iter().enumerate() {
            regions.push(region(format!("p{i}"), at, *s, true));
            at += s;
        }
        let push_end = at;
        regions.push(region("polled".into(), push_end + 10, 40, false));
        let polled = regions.len() - 1;
        let img = Arc::new(Image::new(&regions));
        // Two writers with disjoint ranges that cross region boundaries, and a poller.
        let split = ((f64::from(push_end) * cut) as u16).clamp(1, push_end - 1);
        let ranges = [(0u16, split), (split, push_end)];
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (w, (lo, hi)) in ranges.into_iter().enumerate() {
            let img = Arc::clone(&img);
            threads.push(std::thread::spawn(move || {
                for seq in 1..=writes {
                    let vals: Vec<u16> = (lo..hi).map(|a| encode(w as u16, seq, a)).collect();
                    img.write_push(lo, &vals, Instant::now()).expect("inside push regions");
                }
            }));
        }
        {
            let img = Arc::clone(&img);
            let start = push_end + 10;
            threads.push(std::thread::spawn(move || {
                for seq in 1..=writes {
                    let vals: Vec<u16> = (start..start + 40).map(|a| encode(2, seq, a)).collect();
                    let t = Instant::now();
                    img.commit_poll(polled, &vals, t, t).expect("poll commit");
                }
            }));
        }
        let readers: Vec<_> = (0..2).map(|_| {
            let img = Arc::clone(&img);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || -> Result<u64, String> {
                let mut last = [0u16; 3];
                let mut checked = 0;
                loop {
                    let done = stop.load(Relaxed);
                    let snap = img.load();
                    let spans = [(0, ranges[0].1), (ranges[1].0, push_end), (push_end + 10, push_end + 50)];
                    for (w, (lo, hi)) in spans.into_iter().enumerate() {
                        let words = img.read_words(&snap, None, lo, hi - lo).ok_or("unreadable")?;
                        if words.iter().all(|&x| x == 0) {
                            continue; // not written yet
                        }
                        let (who, seq) = decode(words[0], lo);
                        for (i, &x) in words.iter().enumerate() {
                            let got = decode(x, lo + i as u16);
                            if got != (who, seq) || who != w as u16 {
                                return Err(format!("span {w}: word {} is {got:?}, word {lo} is {:?} (generation {})", lo + i as u16, (who, seq), snap.generation));
                            }
                        }
                        if seq < last[w] {
                            return Err(format!("span {w} went back from {} to {seq}", last[w]));
                        }
                        last[w] = seq;
                    }
                    checked += 1;
                    if done {
                        return Ok(checked);
                    }
                }
            })
        }).collect();
        for t in threads {
            t.join().expect("writer");
        }
        stop.store(true, Relaxed);
        for r in readers {
            let checked = r.join().expect("reader");
            match checked {
                Ok(n) => prop_assert!(n > 0, "reader never checked a snapshot"),
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
        prop_assert_eq!(img.load().generation, 3 * u64::from(writes));
    }
}
