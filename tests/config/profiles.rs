//! Every shipped profile loads, and decodes the vendor documents' example replies to the
//! documented values.

use crate::common;

use std::path::Path;

use airbridge::control::profile::{self, Table, Value};

fn load(name: &str) -> profile::Profile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name);
    profile::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn shipped_profiles_load() {
    for (file, at_least) in [
        ("ksem-g2.yaml", 60),
        ("kstar-hybrid.yaml", 500),
        ("kstar-ksg1-60k.yaml", 60),
        ("kstar-ksg1-250k.yaml", 2000),
    ] {
        let p = load(file);
        assert!(
            p.registers.len() >= at_least,
            "{file}: {} registers",
            p.registers.len()
        );
    }
}

/// Each shipped profile says what its Home Assistant entity ids start with.
#[test]
fn shipped_profiles_have_their_short_name() {
    for (file, short) in [
        ("ksem-g2.yaml", "ksem"),
        ("kstar-hybrid.yaml", "kstar"),
        ("kstar-ksg1-60k.yaml", "kstar"),
        ("kstar-ksg1-250k.yaml", "kstar"),
    ] {
        assert_eq!(load(file).short_name, short, "{file}");
    }
}

/// `airbridge profile show` on a profile of `text` (written to a temp file named after `what`):
/// it must fail; the file's path and what it said on stderr.
fn profile_show_refuses(what: &str, text: &str) -> (std::path::PathBuf, String) {
    let file = std::env::temp_dir().join(format!(
        "airbridge-{what}-profile-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, text).expect("write temp profile");
    let out = common::airbridge_cmd()
        .args(["profile", "show"])
        .arg(&file)
        .output()
        .expect("run airbridge");
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success());
    (file, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The KSTAR hybrid profile once named two values `arm_version` (holding 3216, input 3227):
/// one state key and one Home Assistant unique_id for both. `profile show` (and every
/// command that loads a profile) refuses that, naming the file and line of both.
#[test]
fn profile_show_refuses_a_value_name_used_twice_with_both_lines() {
    let (bad, err) = profile_show_refuses(
        "dup",
        "name: x\nregisters:\n\
         \x20 - {name: arm_version_full, address: 3216, function: holding, type: u8pair, hi: {name: arm_version}, lo: {name: arm_test_version}}\n\
         \x20 - {name: dsp_arm_version, address: 3227, function: input, type: u8pair, hi: {name: dsp_version}, lo: {name: arm_version}}\n",
    );
    let path = bad.display();
    assert!(
        err.contains(&format!(
            "{path}:4: arm_version: name used twice, also at {path}:3"
        )),
        "{err}"
    );
}

#[test]
fn ksem_profile_decodes_power_and_identity() {
    let p = load("ksem-g2.yaml");
    let import = p.get("active_power_import").expect("active_power_import");
    assert_eq!(
        (import.address, import.table, import.words),
        (0, Table::Holding, 2)
    );
    // 1234.5 W = 12345 raw at scale 0.1.
    assert_eq!(import.decode(&[0, 12345]), Value::Number(1234.5));
    let serial = p.get("serial_number").expect("serial_number");
    let mut words = vec![0u16; 16];
    words[0] = u16::from_be_bytes(*b"12");
    words[1] = u16::from_be_bytes(*b"34");
    assert_eq!(serial.decode(&words), Value::Text("1234".into()));
}

#[test]
fn hybrid_profile_keeps_the_two_meanings_of_3200_apart() {
    let p = load("kstar-hybrid.yaml");
    // 03H 3200: the model string (example 4.2 reads 0x4B53 = "KS").
    let model = p.at(Table::Holding, 3200).expect("holding 3200");
    assert_eq!(model.name, "inverter_model_name");
    let mut words = vec![0u16; usize::from(model.words)];
    words[0] = 0x4B53;
    assert_eq!(model.decode(&words), Value::Text("KS".into()));
    // 04H/06H 3200: the active power limit, 0..100 %.
    let limit = p.at(Table::Input, 3200).expect("input 3200");
    assert_eq!(limit.name, "active_power_setting");
    assert_eq!(
        p.check_write(6, 3200, &[85]).map(|r| r[0].name.clone()),
        Ok("active_power_setting".into())
    );
    assert!(
        p.check_write(6, 3200, &[101]).is_err(),
        "101 % is out of range"
    );
    // 3240..3243 are clock words under 04H and commands under 06H: a write is the command.
    assert_eq!(
        p.at(Table::Input, 3240).map(|r| r.name.as_str()),
        Some("clock_month")
    );
    assert_eq!(
        p.check_write(6, 3243, &[1]).map(|r| r[0].name.clone()),
        Ok("cmd_reboot".into())
    );
}

#[test]
fn ksg_profile_allows_the_documented_power_limit_write() {
    for file in ["kstar-ksg1-60k.yaml", "kstar-ksg1-250k.yaml"] {
        let p = load(file);
        let touched = p
            .check_write(6, 4004, &[85])
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(touched[0].name, "set_active_power_percent", "{file}");
        assert!(p.check_write(6, 4004, &[101]).is_err(), "{file}: 101 %");
    }
}

#[test]
fn profile_show_lists_and_rejects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = common::airbridge_cmd()
        .args(["profile", "show"])
        .arg(dir.join("profiles/kstar-ksg1-60k.yaml"))
        .output()
        .expect("run airbridge");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("set_active_power_percent"), "{text}");
    assert!(text.contains("67 registers"), "{text}");

    let (_, err) = profile_show_refuses(
        "bad",
        "name: x\nregisters:\n  - {name: a, address: 0, function: input, type: u16, words: 2}\n",
    );
    assert!(
        err.contains(":3: a: type u16 has 1 word(s), not 2"),
        "{err}"
    );
}
