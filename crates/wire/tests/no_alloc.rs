//! The data path allocates nothing: packing a frame with [`FrameBuilder`] and walking a received
//! one ([`TloeFrame::new_checked`], [`TloeHeaderRepr::parse`], [`TloeFrame::messages`], reading
//! fields and copying data out) makes zero heap allocations.
//!
//! `allocation-counter` installs a counting global allocator in this test binary and counts per
//! thread, so tests running in parallel do not disturb each other.

use allocation_counter::measure;
use oxmem_wire::*;

const HEADER: TloeHeaderRepr = TloeHeaderRepr {
    vc: 0,
    frame_type: FrameType::Normal,
    seq: 0x2e50d,
    seq_ack: 0x56d4b,
    ack: true,
    credit: Some(CreditGrant {
        channel: Channel::A,
        exponent: 8,
    }),
};

/// Sums every field and payload byte of every message, so nothing is optimised away; returns
/// the number of messages and the checksum.
fn read_frame(bytes: &[u8], order: ByteOrder) -> (usize, u64) {
    let frame = TloeFrame::new_checked(bytes).expect("valid frame");
    let header = TloeHeaderRepr::parse(&frame.header()).expect("valid header");
    let mut sum = u64::from(header.seq) + u64::from(header.seq_ack);
    let mut count = 0;
    let mut data = [0u8; 64];
    for msg in frame.messages(order) {
        let msg = msg.expect("valid message");
        count += 1;
        sum += msg.channel as u64
            + u64::from(msg.param)
            + u64::from(msg.size)
            + u64::from(msg.source)
            + u64::from(msg.sink)
            + msg.address
            + u64::from(msg.denied);
        match msg.payload {
            Payload::None => {}
            Payload::Data(d) => {
                d.copy_to(&mut data);
                sum += data[..d.len()].iter().map(|&b| u64::from(b)).sum::<u64>();
            }
            Payload::Masked(m) => {
                sum += (0..m.len())
                    .filter(|&i| m.enabled(i))
                    .map(|i| u64::from(m.byte(i)))
                    .sum::<u64>();
            }
        }
    }
    (count, sum)
}

/// 63 single-flit responses (AccessAck, HintAck, GrantAck) and a 64-byte AccessAckData that
/// starts at flit 64: the most messages a frame can hold, since each must start within the
/// 64 flits the mask covers.
fn pack_64_messages(buf: &mut [u8], data: &[u8; 64], order: ByteOrder) -> usize {
    let mut builder = FrameBuilder::new(buf, buf.len(), order).unwrap();
    for i in 0..63u32 {
        let msg = match i % 3 {
            0 => Message::access_ack(i, 3, false),
            1 => Message::hint_ack(i, 2, i % 2 == 0),
            _ => Message::grant_ack(i),
        };
        builder.push(&msg).unwrap();
    }
    builder
        .push(&Message::access_ack_data(63, 6, false, data))
        .unwrap();
    assert_eq!(builder.len(), MAX_MESSAGES);
    assert_eq!(
        builder.push(&Message::grant_ack(64)),
        Err(PushError::Full),
        "a 65th message never fits"
    );
    builder.finish(&HEADER, MIN_ETHERNET_PAYLOAD).unwrap()
}

/// Gets, PutFullData, PutPartialData and AccessAckData until the frame is full.
fn pack_mixed_requests(buf: &mut [u8], data: &[u8; 64], order: ByteOrder) -> usize {
    let mask = [0b1010_1010u8; 8];
    let mut builder = FrameBuilder::new(buf, buf.len(), order).unwrap();
    for i in 0u32.. {
        let address = 0x8000_0000 + u64::from(i) * 64;
        let msg = match i % 4 {
            0 => Message::get(i, address, 6),
            1 => Message::put_full_data(i, address, 3, &data[..8]),
            2 => Message::put_partial_data(i, address, 3, &data[8..16], &mask),
            _ => Message::access_ack_data(i, 3, false, &data[16..24]),
        };
        match builder.push(&msg) {
            Ok(()) => {}
            Err(PushError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    builder.finish(&HEADER, MIN_ETHERNET_PAYLOAD).unwrap()
}

fn ramp() -> [u8; 64] {
    core::array::from_fn(|i| i as u8)
}

#[test]
fn allocation_counter_sees_allocations() {
    // The control: without it, a counter that never counts would pass every test below.
    let mut buf = [0u8; 1024];
    let data = ramp();
    let len = pack_64_messages(&mut buf, &data, ByteOrder::Spec);
    let info = measure(|| {
        let frame = TloeFrame::new_checked(&buf[..len]).unwrap();
        let repr = FrameRepr::parse(&frame, ByteOrder::Spec).unwrap();
        assert_eq!(std::hint::black_box(repr).messages.len(), 64);
    });
    assert!(
        info.count_total >= 1,
        "FrameRepr::parse collects into a Vec"
    );
}

#[test]
fn packing_64_messages_allocates_nothing() {
    let data = ramp();
    for order in [ByteOrder::Spec, ByteOrder::Memory] {
        let mut buf = [0u8; 1024];
        let mut len = 0;
        let info = measure(|| len = pack_64_messages(&mut buf, &data, order));
        assert_eq!(info.count_total, 0, "{order:?}: {info:?}");
        assert_eq!(len, 8 + 63 * 8 + 9 * 8 + 8);
    }
}

#[test]
fn parsing_64_messages_allocates_nothing() {
    let data = ramp();
    for order in [ByteOrder::Spec, ByteOrder::Memory] {
        let mut buf = [0u8; 1024];
        let len = pack_64_messages(&mut buf, &data, order);
        let mut result = (0, 0);
        let info = measure(|| result = read_frame(&buf[..len], order));
        assert_eq!(info.count_total, 0, "{order:?}: {info:?}");
        assert_eq!(result.0, 64);
        // The checksum includes the AccessAckData bytes, copied out in memory order.
        let (_, without_data) = {
            let mut copy = buf;
            let data_at = len - FLIT - 64;
            copy[data_at..len - FLIT].fill(0);
            read_frame(&copy[..len], order)
        };
        assert_eq!(result.1 - without_data, (0..64u64).sum::<u64>());
    }
}

#[test]
fn packing_and_parsing_mixed_requests_allocates_nothing() {
    let data = ramp();
    for order in [ByteOrder::Spec, ByteOrder::Memory] {
        let mut buf = [0u8; 2048];
        let mut len = 0;
        let packed = measure(|| len = pack_mixed_requests(&mut buf, &data, order));
        assert_eq!(packed.count_total, 0, "{order:?} pack: {packed:?}");
        let mut result = (0, 0);
        let parsed = measure(|| result = read_frame(&buf[..len], order));
        assert_eq!(parsed.count_total, 0, "{order:?} parse: {parsed:?}");
        // Get 2, PutFullData 3, PutPartialData 4, AccessAckData 2 flits: the 24th message would
        // start at flit 65, past the mask.
        assert_eq!(result.0, 23);
    }
}
