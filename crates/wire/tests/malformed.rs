//! Every way a peer's bytes (or a caller's message) can be malformed maps to one exact, typed
//! [`Error`], never to a panic or a silently wrong parse.

use oxmem_wire::*;

/// A TileLink header flit: channel 62:60, opcode 59:57, param 55:52, size 51:48, source 25:0.
fn header_flit(channel: u8, opcode: u8, param: u8, size: u8, source: u32) -> u64 {
    u64::from(channel) << 60
        | u64::from(opcode) << 57
        | u64::from(param) << 52
        | u64::from(size) << 48
        | u64::from(source)
}

/// A bare TLoE frame: a zero TLoE header, `flits`, zero padding up to the 48-byte minimum, and
/// `mask` as the last flit.
fn tloe_frame(flits: &[u64], mask: u64) -> Vec<u8> {
    let mut out = vec![0u8; FLIT];
    for f in flits {
        out.extend_from_slice(&f.to_be_bytes());
    }
    while out.len() < MIN_ETHERNET_PAYLOAD.next_multiple_of(FLIT) - FLIT {
        out.extend_from_slice(&[0; FLIT]);
    }
    out.extend_from_slice(&mask.to_be_bytes());
    out
}

/// The same frame behind an Ethernet header with the given EtherType.
fn ethernet_frame(ethertype: u16, tloe: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 14];
    EthernetRepr {
        dst: EthernetAddress([2, 0, 0, 0, 0, 1]),
        src: EthernetAddress([2, 0, 0, 0, 0, 2]),
        ethertype,
    }
    .emit(&mut out)
    .unwrap();
    out.extend_from_slice(tloe);
    out
}

/// The first message of a frame (which must pass `new_checked`), reduced to its operation.
fn first_message(bytes: &[u8]) -> Result<Op> {
    TloeFrame::new_checked(bytes)
        .unwrap()
        .messages(ByteOrder::Spec)
        .next()
        .expect("the mask marks a message")
        .map(|msg| msg.op)
}

/// All messages of a frame until the iterator stops, reduced to their operations.
fn all_messages(bytes: &[u8]) -> Vec<Result<Op>> {
    TloeFrame::new_checked(bytes)
        .unwrap()
        .messages(ByteOrder::Spec)
        .map(|msg| msg.map(|msg| msg.op))
        .collect()
}

fn tloe_header_error(header: u64) -> Error {
    let mut bytes = tloe_frame(&[], 0);
    bytes[..FLIT].copy_from_slice(&header.to_be_bytes());
    let frame = TloeFrame::new_checked(&bytes[..]).unwrap();
    let from_header = TloeHeaderRepr::parse(&frame.header()).unwrap_err();
    let from_frame = FrameRepr::parse(&frame, ByteOrder::Spec).unwrap_err();
    assert_eq!(
        from_header, from_frame,
        "FrameRepr reports the header error"
    );
    from_header
}

const GET: u8 = 4;

// ---- Truncation and framing -------------------------------------------------------------

#[test]
fn ethernet_frame_shorter_than_its_14_byte_header_is_truncated() {
    for len in [0, 1, 13] {
        assert_eq!(
            parse_ethernet(&vec![0xaa; len], ETHERTYPE_OMNIXTEND).unwrap_err(),
            Error::Truncated {
                needed: 14,
                available: len
            }
        );
    }
}

#[test]
fn tloe_frame_shorter_than_header_and_mask_is_truncated() {
    for len in [0, 8, 15] {
        assert_eq!(
            TloeFrame::new_checked(&vec![0u8; len][..]).unwrap_err(),
            Error::Truncated {
                needed: 16,
                available: len
            }
        );
    }
    // Behind a valid Ethernet header: 14 + 8 bytes is a header without a mask.
    let bytes = ethernet_frame(ETHERTYPE_OMNIXTEND, &[0; 8]);
    assert_eq!(
        parse_ethernet(&bytes, ETHERTYPE_OMNIXTEND).unwrap_err(),
        Error::Truncated {
            needed: 16,
            available: 8
        }
    );
}

#[test]
fn tloe_header_view_shorter_than_one_flit_is_truncated() {
    assert_eq!(
        TloeHeader::new_checked(&[0u8; 7][..]).unwrap_err(),
        Error::Truncated {
            needed: 8,
            available: 7
        }
    );
    assert_eq!(
        MessageHeader::new_checked(&[0u8; 7][..]).unwrap_err(),
        Error::Truncated {
            needed: 8,
            available: 7
        }
    );
}

#[test]
fn message_running_past_the_mask_is_a_data_overrun() {
    // PutFullData of 64 bytes needs 2 + 8 flits; the minimum frame has 4 before the mask.
    let put = header_flit(1, 0, 0, 6, 7);
    let bytes = tloe_frame(&[put, 0x1000], 1);
    assert_eq!(
        first_message(&bytes).unwrap_err(),
        Error::DataOverrun {
            flit: 1,
            flits: 10,
            available: 4
        }
    );
    // A Get whose address flit would be the mask itself.
    let mut bytes = tloe_frame(&[], 1 << 3);
    bytes[4 * FLIT..5 * FLIT].copy_from_slice(&header_flit(1, GET, 0, 3, 7).to_be_bytes());
    assert_eq!(
        first_message(&bytes).unwrap_err(),
        Error::DataOverrun {
            flit: 4,
            flits: 2,
            available: 1
        }
    );
}

#[test]
fn message_parse_on_a_short_buffer_is_truncated() {
    let mut buf = [0u8; 12];
    buf[..FLIT].copy_from_slice(&header_flit(1, GET, 0, 3, 7).to_be_bytes());
    assert_eq!(
        Message::parse(&buf, ByteOrder::Spec).unwrap_err(),
        Error::Truncated {
            needed: 16,
            available: 12
        }
    );
}

#[test]
fn other_ethertypes_are_refused() {
    let tloe = tloe_frame(&[], 0);
    for ethertype in [0x0800, 0x86dd, 0x0000, 0xaaab] {
        assert_eq!(
            parse_ethernet(&ethernet_frame(ethertype, &tloe), ETHERTYPE_OMNIXTEND).unwrap_err(),
            Error::WrongEtherType(ethertype)
        );
    }
    // The configured EtherType is what counts.
    assert!(parse_ethernet(&ethernet_frame(0x0000, &tloe), 0x0000).is_ok());
}

#[test]
fn tloe_length_that_is_not_whole_flits_is_refused() {
    for len in [17, 20, 47, 49, 55] {
        assert_eq!(
            TloeFrame::new_checked(&vec![0u8; len][..]).unwrap_err(),
            Error::NotFlitAligned(len)
        );
    }
    // An Ethernet frame that still has its 4-byte FCS attached.
    let mut tloe = tloe_frame(&[], 0);
    tloe.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(
        parse_ethernet(
            &ethernet_frame(ETHERTYPE_OMNIXTEND, &tloe),
            ETHERTYPE_OMNIXTEND
        )
        .unwrap_err(),
        Error::NotFlitAligned(52)
    );
}

// ---- TLoE header -----------------------------------------------------------------------

#[test]
fn reserved_credit_channels_6_and_7_are_refused() {
    for channel in [6u8, 7] {
        let header = u64::from(channel) << 5 | 3;
        assert_eq!(
            tloe_header_error(header),
            Error::ReservedCreditChannel(channel)
        );
    }
}

#[test]
fn frame_types_above_close_are_refused() {
    for frame_type in 4u8..=15 {
        let header = u64::from(frame_type) << 57;
        assert_eq!(
            tloe_header_error(header),
            Error::ReservedMessageType(frame_type)
        );
    }
}

// ---- Frame mask ------------------------------------------------------------------------

#[test]
fn mask_bit_at_or_after_the_mask_flit_is_past_the_end() {
    // The minimum frame: header (flit 0), four flits, mask at flit 5.
    for flit in [5usize, 6, 64] {
        let bytes = tloe_frame(&[], 1 << (flit - 1));
        assert_eq!(
            first_message(&bytes).unwrap_err(),
            Error::MaskPastEnd { flit, last: 4 }
        );
    }
    // The smallest frame, header and mask only, has no room for any message.
    let bytes = [0u8; 16];
    let mut with_mask = bytes;
    with_mask[15] = 1;
    assert_eq!(
        first_message(&with_mask).unwrap_err(),
        Error::MaskPastEnd { flit: 1, last: 0 }
    );
}

#[test]
fn mask_bit_inside_the_previous_message_is_an_overlap() {
    // A Get covers flits 1 and 2; a mask bit on flit 2 points into its address.
    let get = header_flit(1, GET, 0, 3, 7);
    let bytes = tloe_frame(&[get, 0x1000], 0b11);
    let results = all_messages(&bytes);
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].unwrap_err(),
        Error::MaskOverlap {
            flit: 2,
            previous_end: 2
        }
    );
}

#[test]
fn mask_bit_on_a_padding_flit_is_refused() {
    let get = header_flit(1, GET, 0, 3, 7);
    let bytes = tloe_frame(&[get, 0x1000], 0b101);
    let results = all_messages(&bytes);
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].unwrap_err(),
        Error::PaddingMarkedAsMessage { flit: 3 }
    );
}

#[test]
fn frame_iterator_stops_after_the_first_error() {
    // Get at flit 1, a reserved channel at flit 3, another valid Get at flit 5.
    let get = header_flit(1, GET, 0, 3, 7);
    let bad = header_flit(6, 0, 0, 0, 0);
    let mut bytes = tloe_frame(&[get, 0x1000, bad, 0, get, 0x2000, 0], 0b1_0101);
    assert_eq!(TloeFrame::new_checked(&bytes[..]).unwrap().flits(), 9);
    let results = all_messages(&bytes);
    assert_eq!(results.len(), 2, "no message after the error: {results:?}");
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].unwrap_err(),
        Error::ReservedChannel {
            channel: 6,
            flit: 3
        }
    );
    // The iterator stays finished when polled again.
    let frame = TloeFrame::new_checked(&bytes[..]).unwrap();
    let mut messages = frame.messages(ByteOrder::Spec);
    assert!(messages.next().unwrap().is_ok());
    assert!(messages.next().unwrap().is_err());
    assert!(messages.next().is_none());
    assert!(messages.next().is_none());
    // With the bad flit repaired, the third message is reached: the stop was the error's doing.
    bytes[3 * FLIT..4 * FLIT].copy_from_slice(&get.to_be_bytes());
    assert_eq!(all_messages(&bytes).len(), 3);
    assert!(all_messages(&bytes).iter().all(Result::is_ok));
}

// ---- Message header --------------------------------------------------------------------

#[test]
fn reserved_message_channels_6_and_7_are_refused() {
    for channel in [6u8, 7] {
        let bytes = tloe_frame(&[header_flit(channel, 0, 0, 0, 0), 0], 1);
        assert_eq!(
            first_message(&bytes).unwrap_err(),
            Error::ReservedChannel { channel, flit: 1 }
        );
    }
}

#[test]
fn opcodes_a_channel_does_not_define_are_refused() {
    let cases = [
        (Channel::C, 3u8),
        (Channel::D, 3),
        (Channel::D, 7),
        (Channel::E, 1),
        (Channel::E, 4),
        (Channel::E, 7),
    ];
    for (channel, opcode) in cases {
        let bytes = tloe_frame(&[header_flit(channel as u8, opcode, 0, 0, 0), 0, 0], 1);
        assert_eq!(
            first_message(&bytes).unwrap_err(),
            Error::UnknownOpcode { channel, opcode },
            "{channel:?} opcode {opcode}"
        );
    }
}

#[test]
fn params_above_the_operation_range_are_refused() {
    // ArithmeticData defines MIN..ADD (0..=4): 5 is the first undefined param.
    let atomic = header_flit(1, 2, 5, 3, 7);
    let bytes = tloe_frame(&[atomic, 0x1000, 0], 1);
    assert_eq!(
        first_message(&bytes).unwrap_err(),
        Error::InvalidParam {
            op: Op::ArithmeticData,
            param: 5
        }
    );
    // Every operation with a param field, one past its last defined value.
    for channel in [Channel::A, Channel::B, Channel::C, Channel::D] {
        for op in Op::ALL.into_iter().filter(|op| op.valid_on(channel)) {
            let param = op.max_param() + 1;
            // Size 3 keeps every message within a single data beat.
            let flit = header_flit(channel as u8, op.opcode(), param, 3, 7);
            let bytes = tloe_frame(&[flit, 0, 0, 0], 1);
            assert_eq!(
                first_message(&bytes).unwrap_err(),
                Error::InvalidParam { op, param },
                "{channel:?} {op:?}"
            );
        }
    }
}

#[test]
fn unaligned_addresses_on_channels_a_b_and_c_are_refused() {
    // Get (A), ProbeBlock (B) and Release (C) of 64 bytes at an address aligned only to 32.
    for (channel, opcode) in [(1u8, GET), (2, 6), (3, 6)] {
        let bytes = tloe_frame(&[header_flit(channel, opcode, 0, 6, 7), 0x1020], 1);
        assert_eq!(
            first_message(&bytes).unwrap_err(),
            Error::UnalignedAddress {
                address: 0x1020,
                size: 6
            },
            "channel {channel}"
        );
    }
    // The same check on the emit side.
    assert_eq!(
        Message::get(7, 0x1020, 6)
            .emit(&mut [0; 16], ByteOrder::Spec)
            .unwrap_err(),
        Error::UnalignedAddress {
            address: 0x1020,
            size: 6
        }
    );
}

#[test]
fn grant_ack_ignores_its_reserved_size_and_param_bits() {
    // Regression: the size bits of an E message used to be kept, so the parsed GrantAck failed
    // `Message::check` and could not be emitted again.
    let flit = header_flit(5, 0, 3, 6, 0x1a_6b2d) | 0xff << 40;
    let bytes = tloe_frame(&[flit], 1);
    let frame = TloeFrame::new_checked(&bytes[..]).unwrap();
    let msg = frame.messages(ByteOrder::Spec).next().unwrap().unwrap();
    assert_eq!(msg, Message::grant_ack(0x1a_6b2d));
    assert_eq!(msg.check(), Ok(()));
}

// ---- Emit side: the caller's mistakes ------------------------------------------------------

#[test]
fn sizes_above_2_pow_15_are_refused_on_emit() {
    let mut buf = [0u8; 64];
    for size in [16u8, 17, 63, 64, 200, 255] {
        let get = Message::get(7, 0, size);
        assert_eq!(get.check(), Err(Error::SizeTooLarge(size)));
        assert_eq!(
            get.emit(&mut buf, ByteOrder::Spec),
            Err(Error::SizeTooLarge(size))
        );
        let mut builder = FrameBuilder::new(&mut buf, 64, ByteOrder::Spec).unwrap();
        assert_eq!(
            builder.push(&get),
            Err(PushError::Invalid(Error::SizeTooLarge(size)))
        );
    }
    assert!(Message::get(7, 0, 15).check().is_ok());
}

#[test]
fn payload_that_does_not_match_the_size_is_refused() {
    let mut buf = [0u8; 256];
    let short = [0u8; 32];
    let put = Message::put_full_data(7, 0, 6, &short);
    assert_eq!(
        put.emit(&mut buf, ByteOrder::Spec),
        Err(Error::PayloadLength {
            op: Op::PutFullData,
            size: 6,
            expected: 64,
            got: 32
        })
    );
    // A message smaller than a beat still carries a whole beat.
    let put = Message::put_full_data(7, 0, 1, &short[..2]);
    assert_eq!(
        put.check(),
        Err(Error::PayloadLength {
            op: Op::PutFullData,
            size: 1,
            expected: 8,
            got: 2
        })
    );
    // Data on an operation that carries none.
    let mut get = Message::get(7, 0, 3);
    get.payload = Payload::Data(Data::from_memory(&short[..8]));
    assert_eq!(
        get.check(),
        Err(Error::PayloadLength {
            op: Op::Get,
            size: 3,
            expected: 0,
            got: 8
        })
    );
    // No data on an operation that needs it.
    let mut ack = Message::access_ack_data(7, 3, false, &short[..8]);
    ack.payload = Payload::None;
    assert_eq!(
        ack.check(),
        Err(Error::PayloadLength {
            op: Op::AccessAckData,
            size: 3,
            expected: 8,
            got: 0
        })
    );
    // PutPartialData with a mask of the wrong length.
    let data = [0u8; 64];
    let partial = Message::put_partial_data(7, 0, 6, &data, &short[..4]);
    assert_eq!(
        partial.check(),
        Err(Error::PayloadLength {
            op: Op::PutPartialData,
            size: 6,
            expected: 64,
            got: 64
        })
    );
}

#[test]
fn source_and_sink_wider_than_26_bits_are_refused() {
    let mut buf = [0u8; 16];
    assert_eq!(
        Message::get(1 << 26, 0, 3).emit(&mut buf, ByteOrder::Spec),
        Err(Error::FieldOutOfRange {
            field: "source",
            value: 1 << 26
        })
    );
    assert!(Message::get((1 << 26) - 1, 0, 3).check().is_ok());
    assert_eq!(
        Message::grant_ack(1 << 26).check(),
        Err(Error::FieldOutOfRange {
            field: "sink",
            value: 1 << 26
        })
    );
    assert!(Message::grant_ack((1 << 26) - 1).check().is_ok());
}

#[test]
fn fields_a_channel_does_not_carry_are_refused_on_emit() {
    let mut get = Message::get(7, 0, 3);
    get.denied = true;
    assert_eq!(
        get.check(),
        Err(Error::FieldOutOfRange {
            field: "denied",
            value: 1
        })
    );
    let mut ack = Message::access_ack(7, 3, false);
    ack.address = 0x40;
    assert_eq!(
        ack.check(),
        Err(Error::FieldOutOfRange {
            field: "address",
            value: 0x40
        })
    );
    let mut get = Message::get(7, 0, 3);
    get.channel = Channel::D;
    assert_eq!(
        get.check(),
        Err(Error::UnknownOpcode {
            channel: Channel::D,
            opcode: 4
        })
    );
}

#[test]
fn output_buffers_that_are_too_small_are_refused() {
    assert_eq!(
        Message::get(7, 0, 3).emit(&mut [0; 15], ByteOrder::Spec),
        Err(Error::BufferTooSmall {
            needed: 16,
            available: 15
        })
    );
    let data = [0u8; 64];
    assert_eq!(
        Message::put_full_data(7, 0, 6, &data).emit(&mut [0; 64], ByteOrder::Spec),
        Err(Error::BufferTooSmall {
            needed: 80,
            available: 64
        })
    );
    let eth = EthernetRepr {
        dst: EthernetAddress::BROADCAST,
        src: EthernetAddress::BROADCAST,
        ethertype: ETHERTYPE_OMNIXTEND,
    };
    assert_eq!(
        eth.emit(&mut [0; 13]),
        Err(Error::BufferTooSmall {
            needed: 14,
            available: 13
        })
    );
    let header = TloeHeaderRepr {
        vc: 0,
        frame_type: FrameType::Normal,
        seq: 0,
        seq_ack: 0,
        ack: true,
        credit: None,
    };
    assert_eq!(
        header.emit(&mut [0; 7]),
        Err(Error::BufferTooSmall {
            needed: 8,
            available: 7
        })
    );
    // A builder needs room for a header and a mask; the limit counts whole flits only.
    let mut buf = [0u8; 64];
    assert_eq!(
        FrameBuilder::new(&mut buf, 15, ByteOrder::Spec).unwrap_err(),
        Error::BufferTooSmall {
            needed: 16,
            available: 8
        }
    );
    assert_eq!(
        FrameBuilder::new(&mut buf[..15], 1500, ByteOrder::Spec).unwrap_err(),
        Error::BufferTooSmall {
            needed: 16,
            available: 8
        }
    );
    // A 32-byte frame cannot be padded to the 48-byte Ethernet minimum.
    let builder = FrameBuilder::new(&mut buf, 32, ByteOrder::Spec).unwrap();
    assert_eq!(
        builder.finish(&header, MIN_ETHERNET_PAYLOAD),
        Err(Error::BufferTooSmall {
            needed: 48,
            available: 32
        })
    );
    // FrameRepr::emit into a buffer with no room for its messages.
    let repr = FrameRepr {
        header,
        messages: vec![Message::get(7, 0, 3); 4],
    };
    assert_eq!(repr.buffer_len(0), 80);
    assert_eq!(
        repr.emit(&mut [0; 64], 0, ByteOrder::Spec),
        Err(Error::BufferTooSmall {
            needed: 80,
            available: 64
        })
    );
}

#[test]
fn frame_repr_with_an_oversized_data_message_is_refused_not_a_panic() {
    let data = [0u8; 8];
    let header = TloeHeaderRepr {
        vc: 0,
        frame_type: FrameType::Normal,
        seq: 0,
        seq_ack: 0,
        ack: true,
        credit: None,
    };
    for size in [16u8, 63, 64, 67, 200, 255] {
        let repr = FrameRepr {
            header,
            messages: vec![
                Message::put_full_data(7, 0, size, &data),
                Message::put_partial_data(7, 0, size, &data, &data),
            ],
        };
        let _ = repr.buffer_len(MIN_ETHERNET_PAYLOAD);
        assert_eq!(
            repr.emit(&mut [0u8; 256], MIN_ETHERNET_PAYLOAD, ByteOrder::Spec),
            Err(Error::SizeTooLarge(size))
        );
    }
}
