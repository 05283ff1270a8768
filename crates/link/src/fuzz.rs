//! Body of the connection fuzz target, kept in the library so its corpus replays as a test.

use core::time::Duration;

use oxmem_wire::{
    Channel, CreditGrant, FrameBuilder, FrameType, HeaderVariant, Message, TloeFrame,
    TloeHeaderRepr,
};

use crate::config::{Config, Integrity};
use crate::connection::{Connection, Event, Stats};
use crate::time::Instant;

/// Reads bytes as a script of peer frames (well-formed or not), timer expiries, sends, event
/// polls and closes against one connection. Panics only if the connection panics or breaks an
/// invariant: every frame it emits is well formed and within the configured size, its queues
/// stay within their bounds, and it never delivers more than the credit it handed out.
/// Returns the connection's counters, so corpus tests can check how deep the scripts reach.
pub fn connection(data: &[u8]) -> Stats {
    let mut input = data.iter().copied();
    let mut next = move || input.next();
    let Some(setup) = next() else {
        return Stats::default();
    };
    let variant = if setup & 1 == 0 {
        HeaderVariant::V1_1
    } else {
        HeaderVariant::V1_0_3
    };
    let config = Config {
        integrity: if setup & 4 == 0 {
            Integrity::None
        } else {
            Integrity::Crc32
        },
        rx_buffer_flits: [64; 5],
        max_in_flight: 8,
        send_queue_bytes: 4096,
        max_frame: 512,
        ..Config::default()
    };
    let mut now = Instant::ZERO;
    let mut conn = if setup & 2 == 0 {
        Connection::connect(config.clone(), variant, now)
    } else {
        Connection::accept(config.clone(), now)
    };
    let mut buf = vec![0u8; 2048];
    let mut frame = vec![0u8; 1024];
    let data_bytes = [0x5au8; 64];

    while let Some(op) = next() {
        match op % 8 {
            // A well-formed frame from the peer with fields taken from the input.
            0..=2 => {
                let b = [next(), next(), next(), next(), next()].map(|b| b.unwrap_or(0));
                let frame_type = match b[0] % 8 {
                    0..=3 => FrameType::Normal,
                    4 | 5 => FrameType::AckOnly,
                    6 => FrameType::Open,
                    _ => FrameType::Close,
                };
                let header = TloeHeaderRepr {
                    vc: 0,
                    frame_type,
                    seq: u32::from(b[1] % 16),
                    seq_ack: u32::from(b[2] % 16).wrapping_sub(1) & 0x3f_ffff,
                    ack: b[2] & 0x80 == 0,
                    credit: (b[3] & 0x80 != 0).then(|| CreditGrant {
                        channel: Channel::ALL[usize::from(b[3] % 5)],
                        exponent: b[3] >> 4 & 0x7,
                    }),
                };
                let mut builder = FrameBuilder::new(&mut frame, 512, config.byte_order)
                    .expect("a 512-byte frame has room for header and mask");
                for k in 0..b[4] % 6 {
                    let msg = match (b[4] >> 3).wrapping_add(k) % 3 {
                        0 => Message::get(u32::from(k), 64, 6),
                        1 => Message::access_ack_data(u32::from(k), 6, false, &data_bytes),
                        _ => Message::access_ack(u32::from(k), 3, false),
                    };
                    if builder.push(&msg).is_err() {
                        break;
                    }
                }
                let mut len = builder
                    .finish(&header, config.min_frame)
                    .expect("valid header");
                if config.integrity == Integrity::Crc32 {
                    let crc = crc32fast::hash(&frame[..len]);
                    frame[len..len + 4].copy_from_slice(&crc.to_be_bytes());
                    len += 4;
                }
                let _ = conn.handle_frame(now, &frame[..len]);
            }
            // Arbitrary bytes from the peer.
            3 => {
                let len = usize::from(next().unwrap_or(0));
                let raw: Vec<u8> = (0..len).map_while(|_| next()).collect();
                let _ = conn.handle_frame(now, &raw);
            }
            4 => {
                now += Duration::from_micros(u64::from(next().unwrap_or(0)) * 200);
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
            }
            5 => {
                let _ = conn.send(&Message::get(u32::from(next().unwrap_or(0)), 0, 6));
            }
            6 => {
                while let Some(e) = conn.poll_event() {
                    if let Event::Message(m) = e {
                        let _ = m.message();
                    }
                }
            }
            _ => conn.close(),
        }
        // Invariants after every step.
        let mut frames = 0;
        while let Some(len) = conn.poll_transmit(now, &mut buf) {
            frames += 1;
            assert!(frames < 10_000, "poll_transmit never stops");
            let trailer = config.integrity.trailer_len();
            assert!(
                len <= config.max_frame + trailer,
                "frame larger than configured"
            );
            let tloe = TloeFrame::new_checked(&buf[..len - trailer])
                .expect("emitted frame is well formed");
            TloeHeaderRepr::parse(&tloe.header()).expect("emitted header is valid");
            for msg in tloe.messages(config.byte_order) {
                msg.expect("emitted messages are valid");
            }
        }
        assert!(conn.queued_messages() * 16 <= config.send_queue_bytes);
        assert!(conn.unacked_frames() <= 1 << 21);
        // Messages waiting in the event queue never exceed the receive buffers.
        for ch in Channel::ALL {
            // In 1.1 the peer starts with 128 credits, so the 64-flit buffer is in effect 128.
            assert!(
                conn.undelivered_flits(ch) <= 128,
                "delivered beyond the receive buffer"
            );
        }
    }
    conn.stats().clone()
}
