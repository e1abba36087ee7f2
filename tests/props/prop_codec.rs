//! Encode/decode round trips across the crate's own codecs: the RTU master's request
//! encoder → the slave's framer; the slave's reply encoder (`answer::answer`, from a real image)
//! → the master's reply parser; exception replies; the CRC.

use std::collections::BTreeMap;
use std::time::Duration;

use airbridge::config::{OnStale, Region, Sources};
use airbridge::image::Image;
use airbridge::servers::rtu_slave::answer::{self, SlaveParams};
use airbridge_modbus::crc::{append_crc, frame_crc_ok};
use airbridge_modbus::master::{encode_read, encode_write_single, parse_read_reply, ReplyError};
use airbridge_modbus::model::Answer;
use airbridge_modbus::rtu_frame::{Frame, Framer, Request, MAX_ADU};
use proptest::prelude::*;
use tokio::time::Instant;

fn image(words: &[u16]) -> Image {
    let img = Image::new(&[Region {
        name: "all".into(),
        start: 100,
        count: words.len() as u16,
        source: Sources {
            push: true,
            poll: false,
            fixed: false,
            rtu_poll: false,
        },
        every: None,
        max_age: Duration::from_secs(60),
        on_stale: OnStale::Silence,
        fallback_poll: None,
        values: BTreeMap::new(),
        table: None,
        device: 0,
    }]);
    img.write_push(100, words, Instant::now()).expect("push");
    img
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn crc_round_trip(body in prop::collection::vec(any::<u8>(), 1..254), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut buf = body.clone();
        buf.extend([0, 0]);
        let n = append_crc(&mut buf, body.len());
        prop_assert_eq!(n, body.len() + 2);
        prop_assert!(frame_crc_ok(&buf));
        let i = flip.index(buf.len());
        buf[i] ^= 1 << bit;
        prop_assert!(!frame_crc_ok(&buf), "a single bit flip passed the CRC");
    }

    #[test]
    fn master_requests_are_framed_as_sent(unit in 1u8..=247, f in prop_oneof![Just(3u8), Just(4u8)], a in any::<u16>(), c in any::<u16>(), v in any::<u16>()) {
        let mut fr = Framer::new(unit);
        prop_assert_eq!(fr.push(&encode_read(unit, f, a, c)), 8);
        prop_assert_eq!(fr.next_frame(), Some(Frame::Request(Request::Read { function: f, address: a, count: c })));
        prop_assert_eq!(fr.push(&encode_write_single(unit, a, v)), 8);
        prop_assert_eq!(fr.next_frame(), Some(Frame::Request(Request::Other { function: 6 })));
        prop_assert_eq!(fr.buffered(), 0);
    }

    #[test]
    fn slave_replies_parse_to_the_image_words(
        words in prop::collection::vec(any::<u16>(), 1..300),
        unit in 1u8..=247,
        f in prop_oneof![Just(3u8), Just(4u8)],
        at in any::<prop::sample::Index>(),
        n in 1u16..=125,
    ) {
        let img = image(&words);
        let off = at.index(words.len());
        let count = n.min((words.len() - off) as u16);
        let params = SlaveParams { unit, input_registers: true };
        let req = Request::Read { function: f, address: 100 + off as u16, count };
        let mut out = [0u8; MAX_ADU];
        let o = answer::answer(params, req, &img, Instant::now(), &mut out);
        let Answer::Data { len } = o else { panic!("{o:?}") };
        let got = parse_read_reply(unit, f, count, &out[..len]).expect("parses");
        prop_assert_eq!(&got[..], &words[off..off + usize::from(count)]);
    }

    #[test]
    fn exceptions_round_trip(unit in 1u8..=247, f in 1u8..0x80, code in 1u8..=4) {
        let mut out = [0u8; MAX_ADU];
        prop_assert_eq!(answer::exception_reply(unit, f, code, &mut out), Answer::Exception { code });
        let e = parse_read_reply(unit, f, 1, &out[..5]);
        prop_assert!(matches!(e, Err(ReplyError::Exception(c)) if c == code), "{:?}", e);
        // And the framer sees it as a response, never as a request.
        let mut fr = Framer::new(unit);
        fr.push(&out[..5]);
        let mut got: Vec<Frame> = std::iter::from_fn(|| fr.next_frame()).collect();
        got.extend(fr.on_silence());
        prop_assert_eq!(got, vec![Frame::Foreign { unit, function: f | 0x80 }]);
    }
}
