//! Property tests of config and profile parsing (CI's stand-in for the `config_parse` fuzz
//! target): the same checker (`tests/common/check_config.rs`) on arbitrary text and on the
//! shipped config and profiles with lines dropped, duplicated, cut or changed.

use crate::check_config;

use proptest::prelude::*;

const SHIPPED: [&str; 4] = [
    include_str!("../../gateway.yaml"),
    include_str!("../../profiles/ksem-g2.yaml"),
    include_str!("../../profiles/kstar-hybrid.yaml"),
    include_str!("../../profiles/kstar-ksg1-60k.yaml"),
];

/// Values a YAML scalar might be replaced with.
fn scalar() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "0",
        "-1",
        "65535",
        "65536",
        "99999999999999999999",
        "1.5",
        "nan",
        "~",
        "''",
        "[]",
        "{}",
        "0s",
        "1us",
        "2h",
        "-3s",
        "1e9s",
        "push",
        "[push, poll]",
        "static",
        "0.0.0.0:0",
        "::1",
        "256.1.1.1",
        "'a: b'",
        "!!binary AA==",
        "&a x",
        "*a",
        "\"\\u0000\"",
        "|",
        ">",
    ])
    .prop_map(str::to_string)
}

#[derive(Debug, Clone)]
enum Edit {
    Drop(prop::sample::Index),
    Dup(prop::sample::Index),
    Cut(prop::sample::Index, prop::sample::Index),
    /// Replace the value after the line's first `: ` (or the whole line).
    Value(prop::sample::Index, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Drop),
        any::<prop::sample::Index>().prop_map(Edit::Dup),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::Cut(a, b)),
        (any::<prop::sample::Index>(), scalar()).prop_map(|(a, s)| Edit::Value(a, s)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        match e {
            Edit::Drop(i) => {
                lines.remove(i.index(lines.len()));
            }
            Edit::Dup(i) => {
                let l = lines[i.index(lines.len())].clone();
                lines.insert(i.index(lines.len()), l);
            }
            Edit::Cut(i, j) => {
                let k = i.index(lines.len());
                let l = &lines[k];
                let mut at = j.index(l.len() + 1);
                while !l.is_char_boundary(at) {
                    at -= 1;
                }
                lines[k] = l[..at].to_string();
            }
            Edit::Value(i, v) => {
                let k = i.index(lines.len());
                lines[k] = match lines[k].split_once(": ") {
                    Some((key, _)) => format!("{key}: {v}"),
                    None => v.clone(),
                };
            }
        }
    }
    lines.join("\n")
}

#[test]
fn the_shipped_files_pass_the_checker() {
    for text in SHIPPED {
        check_config::check_text(text);
    }
    let gw = airbridge::config::parse(SHIPPED[0], "gateway.yaml").expect("shipped config");
    check_config::check_config(&gw.config);
    let p =
        airbridge::control::profile::parse(SHIPPED[1], "ksem-g2.yaml").expect("shipped profile");
    check_config::check_profile(&p);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        check_config::check_bytes(&data);
    }

    #[test]
    fn edited_shipped_files(which in 0usize..SHIPPED.len(), edits in prop::collection::vec(edit(), 1..6)) {
        check_config::check_text(&apply(SHIPPED[which], &edits));
    }
}

/// Security review of the shipped defaults (SECURITY.md): the push listener only admits the
/// KSEM, limits and times out connections, takes writes only into the instantaneous and energy
/// regions, and the service runs unprivileged.
#[test]
fn the_shipped_defaults_are_locked_down() {
    let loaded = airbridge::config::parse(SHIPPED[0], "gateway.yaml").expect("shipped config");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    let push = c.push.as_ref().expect("push section");
    assert!(!push.allow_from.is_empty(), "allow list on");
    for net in &push.allow_from {
        assert!(net.prefix_len() >= 24, "allow list too wide: {net}");
    }
    assert!(push.max_connections <= 4, "connection limit");
    assert!(push.idle_timeout <= std::time::Duration::from_secs(300));
    assert!(push.listen.port() >= 1024, "no privileged port needed");
    let writable: Vec<(u16, u16)> = c
        .regions
        .iter()
        .filter(|r| r.source.push)
        .map(|r| (r.start, r.count))
        .collect();
    assert_eq!(
        writable,
        vec![(0, 40), (40, 108), (512, 280)],
        "push regions"
    );
    let unit = include_str!("../../deploy/airbridge.service");
    assert!(unit.contains("NoNewPrivileges=yes"));
    assert!(unit.contains("ProtectSystem=strict"));
    assert!(
        (unit.contains("DynamicUser=yes") || unit.contains("\nUser="))
            && !unit.contains("User=root"),
        "runs as an unprivileged user"
    );
}
