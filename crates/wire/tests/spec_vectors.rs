//! The spec's Appendix A example frames decode to the appendix's field values and encode back
//! to the same bytes.

use oxmem_wire::*;

const DST: EthernetAddress = EthernetAddress([0x08, 0x00, 0x20, 0x77, 0x05, 0x38]);
const SRC: EthernetAddress = EthernetAddress([0x0e, 0x8b, 0x00, 0x00, 0x00, 0x00]);
const ADDRESS: u64 = 0x7ba8_0000_130e_c440;
const SOURCE: u32 = 0x10f_3355;

fn vectors() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("fixtures/spec-vectors.txt");
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("### ") {
            name = Some(n.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let bytes = line
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect();
            out.push((name.take().expect("a name before each frame"), bytes));
        }
    }
    out
}

fn header(credit_channel: Channel, exponent: u8) -> TloeHeaderRepr {
    TloeHeaderRepr {
        vc: 0,
        frame_type: FrameType::Normal,
        seq: 0x2e50d,
        seq_ack: 0x56d4b,
        ack: true,
        credit: Some(CreditGrant {
            channel: credit_channel,
            exponent,
        }),
    }
}

/// Bytes 0x40, 0x41, … : each data byte equals the low bits of its address (Appendix A).
fn ramp(len: usize) -> Vec<u8> {
    (0..len).map(|i| 0x40 + i as u8).collect()
}

fn expected(
    name: &str,
    data64: &[u8],
    data16: &[u8],
    mask: &[u8],
) -> (TloeHeaderRepr, Message<'static>) {
    // The 'static borrow is fine: the test leaks the small buffers.
    let leak = |v: &[u8]| -> &'static [u8] { Box::leak(v.to_vec().into_boxed_slice()) };
    match name {
        "A.1.1" => (header(Channel::B, 8), Message::get(SOURCE, ADDRESS, 5)),
        "A.1.2" => (
            header(Channel::C, 2),
            Message::put_full_data(SOURCE, ADDRESS, 6, leak(data64)),
        ),
        "A.1.3" => {
            let mut m = Message::put_partial_data(SOURCE, ADDRESS, 4, leak(data16), leak(mask));
            m.channel = Channel::B;
            (header(Channel::D, 6), m)
        }
        "A.1.4" => (header(Channel::B, 8), Message::access_ack(SOURCE, 5, false)),
        "A.1.5" => (
            header(Channel::B, 8),
            Message::access_ack_data(SOURCE, 5, false, leak(&data64[..32])),
        ),
        "A.1.6" => {
            let mut m = Message::access_ack(SOURCE, 6, false);
            m.op = Op::Grant;
            m.sink = 0x1a_6b2d;
            (header(Channel::B, 8), m)
        }
        "A.1.8" => (header(Channel::B, 8), Message::grant_ack(0x1a_6b2d)),
        other => panic!("no expectation for {other}"),
    }
}

#[test]
fn every_spec_vector_decodes_to_the_appendix_fields_and_encodes_back() {
    let data64 = ramp(64);
    let data16 = ramp(16);
    // "The Mask field indicates that the first two bytes (0x40 and 0x41) are not written."
    let mask = 0xfffcu64.to_le_bytes();
    let all = vectors();
    assert_eq!(all.len(), 7, "spec-vectors.txt holds seven frames");
    for (name, bytes) in &all {
        let (eth, frame) = parse_ethernet(bytes, ETHERTYPE_OMNIXTEND).unwrap();
        assert_eq!((eth.dst, eth.src), (DST, SRC), "{name}");
        let repr = FrameRepr::parse(&frame, ByteOrder::Spec).unwrap();
        let (want_header, want_msg) = expected(name, &data64, &data16, &mask);
        assert_eq!(repr.header, want_header, "{name} header");
        assert_eq!(repr.messages, vec![want_msg], "{name} message");

        let mut out = vec![0u8; 2048];
        eth.emit(&mut out).unwrap();
        let n = FrameRepr {
            header: want_header,
            messages: vec![want_msg],
        }
        .emit(&mut out[14..], MIN_ETHERNET_PAYLOAD, ByteOrder::Spec)
        .unwrap();
        assert_eq!(&out[..14 + n], &bytes[..], "{name} re-encoded");
    }
}

#[test]
fn spec_put_full_data_travels_byte_reversed_within_each_flit() {
    let (_, bytes) = vectors().into_iter().find(|(n, _)| n == "A.1.2").unwrap();
    // Bytes at 0x40..0x47 travel as 47 46 … 40 (spec data byte order).
    assert_eq!(
        &bytes[38..46],
        &[0x47, 0x46, 0x45, 0x44, 0x43, 0x42, 0x41, 0x40]
    );
    let (_, frame) = parse_ethernet(&bytes, ETHERTYPE_OMNIXTEND).unwrap();
    let msg = frame.messages(ByteOrder::Spec).next().unwrap().unwrap();
    let Payload::Data(d) = msg.payload else {
        panic!("PutFullData carries data")
    };
    assert_eq!(d.to_vec(), ramp(64));
    // Read in the memory-order variant, the same bytes mean the reverse.
    let msg = frame.messages(ByteOrder::Memory).next().unwrap().unwrap();
    let Payload::Data(d) = msg.payload else {
        panic!()
    };
    assert_eq!(d.byte(0), 0x47);
}

#[test]
fn partial_data_mask_disables_the_first_two_bytes() {
    let (_, bytes) = vectors().into_iter().find(|(n, _)| n == "A.1.3").unwrap();
    let (_, frame) = parse_ethernet(&bytes, ETHERTYPE_OMNIXTEND).unwrap();
    let msg = frame.messages(ByteOrder::Spec).next().unwrap().unwrap();
    let Payload::Masked(m) = msg.payload else {
        panic!("PutPartialData is masked")
    };
    let enabled: Vec<usize> = (0..m.len()).filter(|&i| m.enabled(i)).collect();
    assert_eq!(enabled, (2..16).collect::<Vec<_>>());
    assert_eq!((0..16).map(|i| m.byte(i)).collect::<Vec<_>>(), ramp(16));
}
