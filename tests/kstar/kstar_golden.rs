//! Golden frames of the KSTAR vendor documents (section 4 examples, CRC-checked in
//! `shared/reference/kstar/crc-check.txt`): the gateway's RTU master encodes the example
//! requests byte for byte, decodes the example replies to the documented values with the
//! profiles, and the device simulator answers the example requests with the documented
//! replies. The hybrid document's misprinted example 4.5 (06H 4019) is refused by the profile,
//! and the KSG documents' misprinted clock reply (CRC bytes swapped) fails the CRC check.

use std::path::PathBuf;

use airbridge::control::profile::{self, Table, Value};
use airbridge_modbus::crc::frame_crc_ok;
use airbridge_modbus::master::{
    encode_read, encode_write_multiple, encode_write_single, parse_read_reply,
};
use airbridge_sim::device::{DeviceOptions, SimDevice};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn load(name: &str) -> profile::Profile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name);
    profile::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn device(name: &str) -> std::sync::Arc<SimDevice> {
    SimDevice::new(
        load(name),
        DeviceOptions {
            frozen: true,
            ..Default::default()
        },
    )
}

fn words_of(text: &[u8]) -> Vec<u16> {
    text.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect()
}

const FILES: [&str; 3] = [
    "kstar-hybrid.yaml",
    "kstar-ksg1-60k.yaml",
    "kstar-ksg1-250k.yaml",
];

/// 4.1 (all three documents): read input register 3000 ×1 → 0x0065 = PV1 voltage 10.1 V.
#[test]
fn example_4_1_read_pv1_voltage() {
    let request = hex("01 04 0B B8 00 01 B3 CB");
    let reply = hex("01 04 02 00 65 79 1B");
    assert_eq!(encode_read(1, 4, 3000, 1).to_vec(), request);
    let words = parse_read_reply(1, 4, 1, &reply).expect("documented reply parses");
    assert_eq!(words, vec![0x0065]);
    for file in FILES {
        let p = load(file);
        let r = p.at(Table::Input, 3000).expect("input 3000");
        assert_eq!(r.name, "pv1_voltage", "{file}");
        assert_eq!(r.decode(&words), Value::Number(10.1), "{file}");
        // The simulated device, holding that value, answers with the documented frame.
        let d = device(file);
        assert!(d.set("pv1_voltage", &[0x0065]));
        assert_eq!(d.answer(&request), Some(reply.clone()), "{file}");
    }
}

/// 4.2 (all three): read holding register 3200 ×1 → 0x4B53 = "KS", the model string.
#[test]
fn example_4_2_read_model_string() {
    let request = hex("01 03 0C 80 00 01 86 B2");
    let reply = hex("01 03 02 4B 53 CE 89");
    assert_eq!(encode_read(1, 3, 3200, 1).to_vec(), request);
    let words = parse_read_reply(1, 3, 1, &reply).expect("documented reply parses");
    for file in FILES {
        let p = load(file);
        let r = p.at(Table::Holding, 3200).expect("holding 3200");
        assert_eq!(r.kind, profile::Kind::Ascii, "{file}");
        let mut full = vec![0u16; usize::from(r.words)];
        full[0] = words[0];
        assert_eq!(r.decode(&full), Value::Text("KS".into()), "{file}");
        let d = device(file);
        let mut model = words_of(b"KSG-60KT");
        model.resize(usize::from(r.words), 0);
        assert!(d.set(&r.name, &model));
        assert_eq!(d.answer(&request), Some(reply.clone()), "{file}");
    }
}

/// Hybrid 4.3: set the clock, 7 registers of ASCII digits at 3239 with 10H.
#[test]
fn hybrid_example_4_3_set_clock() {
    let request = hex("01 10 0C A7 00 07 0E 31 30 31 31 30 32 31 34 33 30 30 30 32 30 17 2E");
    let reply = hex("01 10 0C A7 00 07 33 78");
    let values = words_of(b"10110214300020");
    assert_eq!(
        encode_write_multiple(1, 3239, &values),
        Some(request.clone())
    );
    let p = load("kstar-hybrid.yaml");
    let touched = p.check_write(16, 3239, &values).expect("clock_set");
    assert_eq!(touched[0].name, "clock_set");
    // The same addresses with 06H are commands, not clock words.
    assert_eq!(
        p.written_by(6, 3241).map(|r| r.name.as_str()),
        Some("cmd_remote_shutdown")
    );
    assert_eq!(device("kstar-hybrid.yaml").answer(&request), Some(reply));
}

/// Hybrid 4.4: TOU-1 window 3160 ×8, ASCII "1124" "1125" "1126" "1127".
#[test]
fn hybrid_example_4_4_set_tou_window() {
    let request = hex("01 10 0C 58 00 08 10 31 31 32 34 31 31 32 35 31 31 32 36 31 31 32 37 09 91");
    let reply = hex("01 10 0C 58 00 08 43 4C");
    let values = words_of(b"1124112511261127");
    assert_eq!(
        encode_write_multiple(1, 3160, &values),
        Some(request.clone())
    );
    let d = device("kstar-hybrid.yaml");
    assert_eq!(d.answer(&request), Some(reply));
    // Read back through 04H as the document's ASCII times.
    assert_eq!(
        d.value("tou_charge_start_1"),
        Some(Value::Text("1124".into()))
    );
    assert_eq!(
        d.value("tou_discharge_end_1"),
        Some(Value::Text("1127".into()))
    );
}

/// Hybrid 4.5 writes 85 % to 4019, which the hybrid document defines nowhere (a copy from the
/// KSG documents): the CRC is right, but the profile refuses it and so does the simulator.
#[test]
fn hybrid_example_4_5_is_a_document_error() {
    let request = hex("01 06 0F B3 00 55 BB 06");
    assert!(frame_crc_ok(&request));
    assert_eq!(encode_write_single(1, 4019, 85).to_vec(), request);
    let p = load("kstar-hybrid.yaml");
    assert!(matches!(
        p.check_write(6, 4019, &[85]),
        Err(profile::WriteRefusal::Unknown(4019))
    ));
    assert_eq!(
        device("kstar-hybrid.yaml").answer(&request),
        Some(hex("01 86 02 C3 A1")),
        "exception 02"
    );
    // The hybrid's power limit is 06H 3200.
    assert_eq!(
        p.check_write(6, 3200, &[85]).map(|r| r[0].name.clone()),
        Ok("active_power_setting".into())
    );
}

/// KSG 4.4: active power limit 85 % = 06H 4004, echoed.
#[test]
fn ksg_example_4_4_power_limit() {
    let request = hex("01 06 0F A4 00 55 0B 02");
    assert_eq!(encode_write_single(1, 4004, 85).to_vec(), request);
    for file in ["kstar-ksg1-60k.yaml", "kstar-ksg1-250k.yaml"] {
        let d = device(file);
        assert_eq!(d.answer(&request), Some(request.clone()), "{file}: echo");
        let applied = d.applied();
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].registers, vec!["set_active_power_percent"]);
        // 101 % is out of range: exception 03, nothing applied.
        let too_much = encode_write_single(1, 4004, 101);
        assert_eq!(d.answer(&too_much).map(|r| r[2]), Some(0x03), "{file}");
        assert_eq!(d.applied().len(), 1);
    }
}

/// KSG 4.3: set the clock at 3300 ×7 (week padded with 0x00). The documents print the reply
/// `... AC C2`; the correct CRC is `C2 AC`, which is what the simulator sends.
#[test]
fn ksg_example_4_3_clock_reply_crc_misprint() {
    let request = hex("01 10 0C E4 00 07 0E 31 30 31 31 30 32 31 34 33 30 30 30 32 00 F2 AA");
    let printed = hex("01 10 0C E4 00 07 AC C2");
    let correct = hex("01 10 0C E4 00 07 C2 AC");
    assert!(!frame_crc_ok(&printed), "the misprint fails the CRC");
    assert!(frame_crc_ok(&correct));
    // Bytes: '10' '11' '02' '14' '30' '00' '2' 0x00.
    let values: Vec<u16> = {
        let mut v = words_of(b"101102143000");
        v.push(u16::from_be_bytes([b'2', 0]));
        v
    };
    assert_eq!(
        encode_write_multiple(1, 3300, &values),
        Some(request.clone())
    );
    for file in ["kstar-ksg1-60k.yaml", "kstar-ksg1-250k.yaml"] {
        assert_eq!(
            device(file).answer(&request),
            Some(correct.clone()),
            "{file}"
        );
    }
}
