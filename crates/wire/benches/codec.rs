//! Time to encode and decode one frame, for the frames the data path sends most.
//!
//! ```text
//! cargo bench -p oxmem-wire --bench codec
//! cargo bench -p oxmem-wire --bench codec -- --warm-up-time 1 --measurement-time 3   # quick
//! ```
//!
//! Every benchmark handles one frame per iteration (`Throughput::Elements(1)`), so the time
//! criterion prints is the time per frame and `elem/s` is frames per second.
//! - `64_access_acks`: 64 single-flit AccessAcks, the most messages a frame can hold.
//! - `32_gets`: 32 Gets of 64 bytes; a Get is two flits and messages must start within the
//!   first 64 flits, so 32 is the most Gets a frame can hold.
//! - `put_full_data_1k/{spec,memory}`: one 1 KiB PutFullData in each data byte order.
//!
//! Encoding packs with [`FrameBuilder`] into a reused buffer; decoding runs
//! [`TloeFrame::new_checked`], parses the header, walks every message, and copies data out to
//! a stack buffer in memory order, as a receiver would.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use oxmem_wire::*;

const HEADER: TloeHeaderRepr = TloeHeaderRepr {
    vc: 0,
    frame_type: FrameType::Normal,
    seq: 0x2e50d,
    seq_ack: 0x56d4b,
    ack: true,
    credit: Some(CreditGrant {
        channel: Channel::D,
        exponent: 8,
    }),
};

/// Largest frame any benchmark builds: header, 2 + 128 flits of PutFullData, mask.
const BUF_LEN: usize = 8 + 130 * 8 + 8;

fn access_acks() -> Vec<Message<'static>> {
    (0..64).map(|i| Message::access_ack(i, 6, false)).collect()
}

fn gets() -> Vec<Message<'static>> {
    (0..32)
        .map(|i| Message::get(i, 0x8000_0000 + u64::from(i) * 64, 6))
        .collect()
}

fn encode(buf: &mut [u8], messages: &[Message<'_>], order: ByteOrder) -> usize {
    let mut builder = FrameBuilder::new(buf, usize::MAX, order).unwrap();
    for msg in messages {
        builder.push(msg).unwrap();
    }
    builder.finish(&HEADER, MIN_ETHERNET_PAYLOAD).unwrap()
}

/// Walks a frame as the receive path does; returns a checksum so nothing is optimised away.
fn decode(bytes: &[u8], order: ByteOrder, data: &mut [u8; 1024]) -> u64 {
    let frame = TloeFrame::new_checked(bytes).unwrap();
    let header = TloeHeaderRepr::parse(&frame.header()).unwrap();
    let mut sum = u64::from(header.seq);
    for msg in frame.messages(order) {
        let msg = msg.unwrap();
        sum += u64::from(msg.source) + msg.address + u64::from(msg.size);
        if let Payload::Data(d) = msg.payload {
            d.copy_to(data);
            sum += u64::from(data[d.len() - 1]);
        }
    }
    sum
}

fn bench_frames(c: &mut Criterion) {
    let payload: Vec<u8> = (0..1024).map(|i| i as u8).collect();
    let put = [Message::put_full_data(7, 0x8000_0000, 10, &payload)];
    let cases: [(&str, Vec<Message<'_>>, ByteOrder); 4] = [
        ("64_access_acks", access_acks(), ByteOrder::Spec),
        ("32_gets", gets(), ByteOrder::Spec),
        ("put_full_data_1k/spec", put.to_vec(), ByteOrder::Spec),
        ("put_full_data_1k/memory", put.to_vec(), ByteOrder::Memory),
    ];

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, messages, order) in &cases {
        let mut buf = [0u8; BUF_LEN];
        group.bench_function(*name, |b| {
            b.iter(|| encode(black_box(&mut buf), black_box(messages), *order))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, messages, order) in &cases {
        let mut buf = [0u8; BUF_LEN];
        let len = encode(&mut buf, messages, *order);
        let frame = &buf[..len];
        assert_eq!(
            TloeFrame::new_checked(frame)
                .unwrap()
                .messages(*order)
                .count(),
            messages.len()
        );
        let mut data = [0u8; 1024];
        group.bench_function(*name, |b| {
            b.iter(|| decode(black_box(frame), *order, &mut data))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_frames);
criterion_main!(benches);
