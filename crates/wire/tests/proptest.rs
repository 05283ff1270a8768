//! Properties of the codec over generated input:
//! - any valid frame, in either data byte order, parses back to exactly what was packed;
//! - no input, random or a mutated valid frame, makes the parser panic, and whatever parses is
//!   valid to emit again;
//! - [`FrameBuilder`] keeps to 64 messages, to its length limit and to the Ethernet minimum.
//!
//! Case counts are kept small for debug builds; `PROPTEST_CASES=10000` runs deeper.

use oxmem_wire::tilelink::MAX_SOURCE;
use oxmem_wire::tloe::SEQ_MASK;
use oxmem_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Data-carrying messages go up to 2^9 bytes so frames stay small; the 4-bit size field of
/// data-less messages is covered in full.
const MAX_DATA_SIZE: u8 = 9;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// A message that owns its payload, so a strategy can generate it.
#[derive(Debug, Clone)]
struct OwnedMessage {
    channel: Channel,
    op: Op,
    param: u8,
    size: u8,
    domain: u8,
    denied: bool,
    corrupt: bool,
    source: u32,
    address: u64,
    sink: u32,
    data: Vec<u8>,
    mask: Vec<u8>,
}

impl OwnedMessage {
    fn message(&self) -> Message<'_> {
        let payload = if self.op.has_mask() {
            Payload::Masked(MaskedData::from_memory(&self.data, &self.mask))
        } else if self.op.has_data() {
            Payload::Data(Data::from_memory(&self.data))
        } else {
            Payload::None
        };
        Message {
            channel: self.channel,
            op: self.op,
            param: self.param,
            size: self.size,
            domain: self.domain,
            denied: self.denied,
            corrupt: self.corrupt,
            source: self.source,
            address: self.address,
            sink: self.sink,
            payload,
        }
    }
}

/// Every (channel, operation) pair the spec defines.
fn channel_op() -> impl Strategy<Value = (Channel, Op)> {
    let pairs: Vec<(Channel, Op)> = Channel::ALL
        .into_iter()
        .flat_map(|c| {
            Op::ALL
                .into_iter()
                .filter(move |op| op.valid_on(c))
                .map(move |op| (c, op))
        })
        .collect();
    assert_eq!(pairs.len(), 30, "A 8, B 8, C 7, D 6, E 1");
    select(pairs)
}

/// Any valid message: fields only where its channel carries them, in range, aligned.
fn message() -> impl Strategy<Value = OwnedMessage> {
    channel_op()
        .prop_flat_map(|(channel, op)| {
            let max_size = match channel {
                Channel::E => 0,
                _ if op.has_data() => MAX_DATA_SIZE,
                _ => 15,
            };
            (
                (Just(channel), Just(op), 0..=op.max_param(), 0..=max_size),
                (any::<u8>(), any::<bool>(), any::<bool>()),
                (0..=MAX_SOURCE, any::<u64>(), 0..=MAX_SOURCE),
            )
        })
        .prop_flat_map(
            |((channel, op, param, size), (domain, denied, corrupt), (source, address, sink))| {
                let data_len = if op.has_data() {
                    data_beats(size) * FLIT
                } else {
                    0
                };
                let mask_len = if op.has_mask() {
                    mask_flits(size) * FLIT
                } else {
                    0
                };
                let has_address = matches!(channel, Channel::A | Channel::B | Channel::C);
                let carries_sink = channel == Channel::E
                    || (channel == Channel::D && matches!(op, Op::Grant | Op::GrantData));
                let msg = if channel == Channel::E {
                    OwnedMessage {
                        channel,
                        op,
                        param: 0,
                        size: 0,
                        domain: 0,
                        denied: false,
                        corrupt: false,
                        source: 0,
                        address: 0,
                        sink,
                        data: Vec::new(),
                        mask: Vec::new(),
                    }
                } else {
                    OwnedMessage {
                        channel,
                        op,
                        param,
                        size,
                        domain,
                        denied: denied && channel == Channel::D,
                        corrupt,
                        source,
                        address: if has_address {
                            address & !((1u64 << size) - 1)
                        } else {
                            0
                        },
                        sink: if carries_sink { sink } else { 0 },
                        data: Vec::new(),
                        mask: Vec::new(),
                    }
                };
                (
                    Just(msg),
                    vec(any::<u8>(), data_len),
                    vec(any::<u8>(), mask_len),
                )
            },
        )
        .prop_map(|(msg, data, mask)| OwnedMessage { data, mask, ..msg })
}

fn tloe_header() -> impl Strategy<Value = TloeHeaderRepr> {
    let frame_type = select(vec![
        FrameType::Normal,
        FrameType::AckOnly,
        FrameType::Open,
        FrameType::Close,
    ]);
    let credit = proptest::option::of(
        (select(Channel::ALL.to_vec()), 0u8..32)
            .prop_map(|(channel, exponent)| CreditGrant { channel, exponent }),
    );
    (
        0u8..8,
        frame_type,
        0..=SEQ_MASK,
        0..=SEQ_MASK,
        any::<bool>(),
        credit,
    )
        .prop_map(
            |(vc, frame_type, seq, seq_ack, ack, credit)| TloeHeaderRepr {
                vc,
                frame_type,
                seq,
                seq_ack,
                ack,
                credit,
            },
        )
}

fn byte_order() -> impl Strategy<Value = ByteOrder> {
    prop_oneof![Just(ByteOrder::Spec), Just(ByteOrder::Memory)]
}

/// Inputs for one frame: header, candidate messages, frame limit, minimum length, byte order.
fn frame_input()
-> impl Strategy<Value = (TloeHeaderRepr, Vec<OwnedMessage>, usize, usize, ByteOrder)> {
    (
        tloe_header(),
        vec(message(), 0..80),
        48usize..12_000,
        select(vec![0, MIN_ETHERNET_PAYLOAD]),
        byte_order(),
    )
}

/// Packs what fits (a message that does not is skipped, as a sender would keep it for the
/// next frame) and returns the frame length and the indexes of the packed messages.
fn pack(
    buf: &mut [u8],
    header: &TloeHeaderRepr,
    messages: &[OwnedMessage],
    max_len: usize,
    min_len: usize,
    order: ByteOrder,
) -> (usize, Vec<usize>) {
    let mut builder = FrameBuilder::new(buf, max_len, order).unwrap();
    let mut packed = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match builder.push(&m.message()) {
            Ok(()) => packed.push(i),
            Err(PushError::Full) => {}
            Err(PushError::Invalid(e)) => panic!("generated an invalid message {m:?}: {e}"),
        }
    }
    (builder.finish(header, min_len).unwrap(), packed)
}

/// Reads every field and payload byte of every message, as a receiver would.
fn walk(bytes: &[u8]) {
    let Ok(frame) = TloeFrame::new_checked(bytes) else {
        return;
    };
    let _ = TloeHeaderRepr::parse(&frame.header());
    for order in [ByteOrder::Spec, ByteOrder::Memory] {
        let results: Vec<_> = frame.messages(order).collect();
        assert!(results.len() <= frame.mask().count());
        assert!(results.len() <= MAX_MESSAGES);
        if let Some(i) = results.iter().position(Result::is_err) {
            assert_eq!(i, results.len() - 1, "nothing follows an error");
        }
        for msg in results.into_iter().flatten() {
            // A parsed message is always valid to emit again.
            assert_eq!(msg.check(), Ok(()), "{msg:?}");
            let mut scratch = vec![0u8; msg.buffer_len()];
            assert_eq!(msg.emit(&mut scratch, order), Ok(msg.buffer_len()));
            match msg.payload {
                Payload::None => {}
                Payload::Data(d) => {
                    assert_eq!(d.len(), data_beats(msg.size) * FLIT);
                    let mut out = vec![0u8; d.len()];
                    d.copy_to(&mut out);
                    assert!((0..d.len()).all(|i| d.byte(i) == out[i]));
                }
                Payload::Masked(m) => {
                    assert_eq!(m.len(), data_beats(msg.size) * FLIT);
                    assert_eq!(m.mask_len(), mask_flits(msg.size) * FLIT);
                    // Every data byte and its enable bit are in bounds.
                    let enabled = (0..m.len()).filter(|&i| m.enabled(i)).count();
                    let sum = (0..m.len()).fold(0u8, |s, i| s.wrapping_add(m.byte(i)));
                    std::hint::black_box((enabled, sum));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn any_valid_frame_parses_back_to_what_was_packed(
        (header, messages, max_len, min_len, order) in frame_input()
    ) {
        let mut buf = vec![0u8; 14 + max_len];
        let (len, packed) = pack(&mut buf[14..], &header, &messages, max_len, min_len, order);
        let expected = FrameRepr {
            header,
            messages: packed.iter().map(|&i| messages[i].message()).collect(),
        };
        prop_assert_eq!(len, expected.buffer_len(min_len));

        let frame = TloeFrame::new_checked(&buf[14..14 + len]).unwrap();
        prop_assert_eq!(&FrameRepr::parse(&frame, order).unwrap(), &expected);

        // The same frame behind an Ethernet header.
        EthernetRepr {
            dst: EthernetAddress([2, 0, 0, 0, 0, 1]),
            src: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: ETHERTYPE_OMNIXTEND,
        }
        .emit(&mut buf)
        .unwrap();
        let (_, frame) = parse_ethernet(&buf[..14 + len], ETHERTYPE_OMNIXTEND).unwrap();
        prop_assert_eq!(&FrameRepr::parse(&frame, order).unwrap(), &expected);

        // FrameRepr::emit packs the same way, byte for byte.
        let mut again = vec![0u8; len];
        prop_assert_eq!(expected.emit(&mut again, min_len, order), Ok(len));
        prop_assert_eq!(&again[..], &buf[14..14 + len]);
    }

    #[test]
    fn any_valid_message_keeps_its_data_across_byte_orders(
        msg in message(), from in byte_order(), to in byte_order()
    ) {
        let msg = msg.message();
        let mut wire = vec![0u8; msg.buffer_len()];
        prop_assert_eq!(msg.emit(&mut wire, from), Ok(wire.len()));
        let parsed = Message::parse(&wire, from).unwrap();
        prop_assert_eq!(parsed, msg);
        // Re-emitting a parsed (wire-form) message in the other order transcodes its data.
        let mut other = vec![0u8; wire.len()];
        prop_assert_eq!(parsed.emit(&mut other, to), Ok(wire.len()));
        prop_assert_eq!(Message::parse(&other, to).unwrap(), msg);
        if from == to {
            prop_assert_eq!(&other, &wire);
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in vec(any::<u8>(), 0..600)) {
        oxmem_wire::fuzz::frame_parser(&bytes);
        walk(&bytes);
        if bytes.len() >= 14 {
            walk(&bytes[14..]);
        }
    }

    #[test]
    fn flit_shaped_bytes_with_a_sparse_mask_never_panic_the_parser(
        flits in vec(any::<u64>(), 1..40),
        mask_bits in vec(0u32..64, 0..6),
        channels in vec((any::<Index>(), 0u64..8), 0..8),
    ) {
        // Random bytes seldom look like a frame; this builds random flits with plausible
        // channel bits and a mask of a few set bits, so the message walker does real work.
        let mut flits = flits;
        for (at, channel) in channels {
            let i = at.index(flits.len());
            flits[i] = flits[i] & !(0x7 << 60) | channel << 60;
        }
        let mask = mask_bits.iter().fold(0u64, |m, &b| m | 1 << b);
        let mut bytes = vec![0u8; FLIT];
        for f in flits {
            bytes.extend_from_slice(&f.to_be_bytes());
        }
        bytes.extend_from_slice(&mask.to_be_bytes());
        oxmem_wire::fuzz::frame_parser(&bytes);
        walk(&bytes);
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn mutated_valid_frames_never_panic_the_parser(
        (header, messages, max_len, min_len, order) in frame_input(),
        flips in vec((any::<Index>(), 1u8..=255), 1..8),
        cut in any::<Index>(),
        truncate in any::<bool>(),
    ) {
        let mut buf = vec![0u8; max_len];
        let (len, _) = pack(&mut buf, &header, &messages, max_len, min_len, order);
        let mut bytes = buf[..len].to_vec();
        for (at, xor) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        oxmem_wire::fuzz::frame_parser(&bytes);
        walk(&bytes);
    }

    #[test]
    fn builder_never_exceeds_64_messages_its_limit_or_the_minimum(
        kinds in vec(0u8..4, 0..100),
        max_len in 16usize..1200,
        min_len in select(vec![0, 1, MIN_ETHERNET_PAYLOAD, 100]),
    ) {
        let data = [0x5au8; 8];
        let mut buf = vec![0u8; 1200];
        let mut builder = FrameBuilder::new(&mut buf, max_len, ByteOrder::Spec).unwrap();
        let mut content = 0;
        for (i, kind) in kinds.iter().enumerate() {
            let source = i as u32;
            let msg = match kind {
                0 => Message::grant_ack(source),
                1 => Message::access_ack(source, 3, false),
                2 => Message::get(source, 0x1000, 3),
                _ => Message::access_ack_data(source, 3, false, &data),
            };
            let before = builder.len();
            match builder.push(&msg) {
                Ok(()) => {
                    prop_assert!(before < MAX_MESSAGES);
                    prop_assert!(content / FLIT < MAX_MESSAGES, "starts within 64 flits");
                    content += msg.buffer_len();
                    prop_assert!(2 * FLIT + content <= max_len, "within the limit");
                }
                Err(PushError::Full) => {
                    // Full means the count, the limit or the 64-flit start rule forbids it.
                    let start_flit = 1 + content / FLIT;
                    prop_assert!(
                        before == MAX_MESSAGES
                            || start_flit > MAX_MESSAGES
                            || 2 * FLIT + content + msg.buffer_len() > max_len
                    );
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
            prop_assert!(builder.len() <= MAX_MESSAGES);
        }
        let count = builder.len();
        let header = TloeHeaderRepr {
            vc: 0,
            frame_type: FrameType::Normal,
            seq: 1,
            seq_ack: SEQ_MASK,
            ack: false,
            credit: None,
        };
        let limit = max_len / FLIT * FLIT;
        let wanted = (content + 2 * FLIT).max(min_len).next_multiple_of(FLIT);
        match builder.finish(&header, min_len) {
            Ok(len) => {
                prop_assert!(len <= limit);
                prop_assert_eq!(len, wanted);
                prop_assert_eq!(len % FLIT, 0);
                if min_len == MIN_ETHERNET_PAYLOAD {
                    prop_assert!(len >= 48);
                }
                // Padding between the last message and the mask is zero.
                let padding = &buf[FLIT + content..len - FLIT];
                prop_assert!(padding.iter().all(|&b| b == 0));
                let mask = u64::from_be_bytes(buf[len - FLIT..len].try_into().unwrap());
                prop_assert_eq!(mask.count_ones() as usize, count);
                let frame = TloeFrame::new_checked(&buf[..len]).unwrap();
                prop_assert_eq!(FrameRepr::parse(&frame, ByteOrder::Spec).unwrap().messages.len(), count);
            }
            Err(e) => {
                // Only a minimum above the limit can stop a frame from finishing.
                prop_assert!(wanted > limit);
                prop_assert_eq!(e, Error::BufferTooSmall { needed: wanted, available: limit });
            }
        }
    }

    #[test]
    fn pushing_encoded_bytes_builds_the_same_frame_as_pushing_messages(
        (header, messages, max_len, min_len, order) in frame_input(),
    ) {
        let mut direct = vec![0u8; max_len];
        let (len, packed) = pack(&mut direct, &header, &messages, max_len, min_len, order);

        let mut buf = vec![0u8; max_len];
        let mut builder = FrameBuilder::new(&mut buf, max_len, order).unwrap();
        let mut scratch = vec![0u8; 4096];
        for &i in &packed {
            let msg = messages[i].message();
            let n = msg.emit(&mut scratch, order).unwrap();
            prop_assert_eq!(builder.push_encoded(&scratch[..n]), Ok(()));
        }
        prop_assert_eq!(builder.finish(&header, min_len), Ok(len));
        prop_assert_eq!(&buf[..len], &direct[..len]);
    }
}

#[test]
fn empty_frame_is_padded_to_the_48_byte_ethernet_minimum() {
    let mut buf = [0xffu8; 64];
    let builder = FrameBuilder::new(&mut buf, 64, ByteOrder::Spec).unwrap();
    let header = TloeHeaderRepr {
        vc: 0,
        frame_type: FrameType::Normal,
        seq: 0,
        seq_ack: SEQ_MASK,
        ack: true,
        credit: None,
    };
    assert_eq!(builder.finish(&header, MIN_ETHERNET_PAYLOAD), Ok(48));
    assert!(
        buf[8..48].iter().all(|&b| b == 0),
        "padding and mask are zero"
    );
}
