//! The connection against a reference model of go-back-N.
//!
//! proptest drives a pair of connections through arbitrary interleavings of sends, polls,
//! deliveries, drops, duplicates and timer expiries. A deliberately naive model (plain
//! integers, no modular arithmetic, no windows) predicts what the receiver must deliver and how
//! many frames the sender must still hold; the real connections must agree at every step, and
//! once the network is healed every message must have arrived exactly once, in order.

use std::time::Duration;

use oxmem_link::{Config, Connection, Event, HeaderVariant, Instant};
use oxmem_wire::{ByteOrder, FrameType, Message, TloeFrame, TloeHeaderRepr};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Fate {
    Drop,
    Deliver,
    Duplicate,
}

#[derive(Debug, Clone)]
enum Op {
    Send(u8),
    PollA,
    PollB,
    ToB(usize, Fate),
    ToA(usize, Fate),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let fate = prop_oneof![
        Just(Fate::Drop),
        Just(Fate::Deliver),
        Just(Fate::Deliver),
        Just(Fate::Duplicate)
    ];
    prop_oneof![
        (1u8..5).prop_map(Op::Send),
        Just(Op::PollA),
        Just(Op::PollB),
        (any::<usize>(), fate.clone()).prop_map(|(i, f)| Op::ToB(i, f)),
        (any::<usize>(), fate).prop_map(|(i, f)| Op::ToA(i, f)),
        (1u16..3000).prop_map(Op::Advance),
    ]
}

/// What the model knows of a frame.
struct Seen {
    frame_type: FrameType,
    seq: u32,
    seq_ack: u32,
    ack: bool,
    sources: Vec<u32>,
}

fn inspect(bytes: &[u8]) -> Seen {
    let frame = TloeFrame::new_checked(bytes).unwrap();
    let h = TloeHeaderRepr::parse(&frame.header()).unwrap();
    let sources = frame
        .messages(ByteOrder::Spec)
        .map(|m| m.unwrap().source)
        .collect();
    Seen {
        frame_type: h.frame_type,
        seq: h.seq,
        seq_ack: h.seq_ack,
        ack: h.ack,
        sources,
    }
}

/// Go-back-N as a textbook states it, over unbounded integers (the test never sends 2^21
/// frames, so wire sequence numbers equal these).
#[derive(Default)]
struct Model {
    /// Receiver b: next sequence number it takes, and what it must have delivered.
    expected: u32,
    delivered: Vec<u32>,
    /// Sender a: sequenced frames sent, and the highest acknowledged (+1).
    sent: u32,
    acked_through: u32,
}

impl Model {
    fn a_sent(&mut self, f: &Seen) {
        if f.frame_type == FrameType::AckOnly {
            return;
        }
        if f.seq == self.sent {
            self.sent += 1; // a new frame: numbered consecutively from 0
        } else {
            assert!(
                (self.acked_through..self.sent).contains(&f.seq),
                "a resends only frames not yet acknowledged (seq {}, unacked {}..{})",
                f.seq,
                self.acked_through,
                self.sent
            );
        }
    }

    fn b_receives(&mut self, f: &Seen) {
        if f.frame_type != FrameType::AckOnly && f.seq == self.expected {
            self.delivered.extend(&f.sources);
            self.expected += 1;
        }
    }

    fn a_receives(&mut self, f: &Seen) {
        // A cumulative acknowledgement of frames up to seq_ack, when it is news.
        let through = f.seq_ack.wrapping_add(1) & 0x3f_ffff;
        if through > self.acked_through && through <= self.sent {
            self.acked_through = through;
        }
        let _ = f.ack;
    }

    fn outstanding(&self) -> usize {
        (self.sent - self.acked_through) as usize
    }
}

fn config() -> Config {
    Config {
        rx_buffer_flits: [256; 5],
        retransmit_timeout: Duration::from_millis(4),
        ack_delay: Duration::from_micros(200),
        dead_after: Duration::from_secs(3600),
        max_in_flight: 16,
        ..Config::default()
    }
}

fn drain(conn: &mut Connection, now: Instant, out: &mut Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let mut new = Vec::new();
    while let Some(n) = conn.poll_transmit(now, &mut buf) {
        new.push(buf[..n].to_vec());
    }
    out.extend(new.iter().cloned());
    new
}

fn take_delivered(b: &mut Connection, got: &mut Vec<u32>) {
    while let Some(e) = b.poll_event() {
        if let Event::Message(m) = e {
            got.push(m.message().source);
        }
    }
}

struct World {
    now: Instant,
    a: Connection,
    b: Connection,
    to_b: Vec<Vec<u8>>,
    to_a: Vec<Vec<u8>>,
    model: Model,
    got: Vec<u32>,
    next_source: u32,
}

impl World {
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Send(n) => {
                for _ in 0..n {
                    if self.a.send(&Message::get(self.next_source, 0, 3)).is_ok() {
                        self.next_source += 1;
                    }
                }
            }
            Op::PollA => {
                for f in drain(&mut self.a, self.now, &mut self.to_b) {
                    self.model.a_sent(&inspect(&f));
                }
            }
            Op::PollB => {
                drain(&mut self.b, self.now, &mut self.to_a);
            }
            Op::ToB(i, fate) | Op::ToA(i, fate) => {
                let toward_b = matches!(op, Op::ToB(..));
                let queue = if toward_b {
                    &mut self.to_b
                } else {
                    &mut self.to_a
                };
                if queue.is_empty() {
                    return;
                }
                let i = i % queue.len();
                let frame = match fate {
                    Fate::Drop => {
                        queue.remove(i);
                        return;
                    }
                    Fate::Deliver => queue.remove(i),
                    Fate::Duplicate => queue[i].clone(),
                };
                let seen = inspect(&frame);
                if toward_b {
                    self.b.handle_frame(self.now, &frame).unwrap();
                    self.model.b_receives(&seen);
                    take_delivered(&mut self.b, &mut self.got);
                    assert_eq!(
                        self.got, self.model.delivered,
                        "b delivered what go-back-N prescribes"
                    );
                } else {
                    self.a.handle_frame(self.now, &frame).unwrap();
                    self.model.a_receives(&seen);
                    assert_eq!(
                        self.a.unacked_frames(),
                        self.model.outstanding(),
                        "a holds exactly the frames not yet acknowledged"
                    );
                    while self.a.poll_event().is_some() {}
                }
            }
            Op::Advance(us) => {
                self.now += Duration::from_micros(u64::from(us));
                for c in [&mut self.a, &mut self.b] {
                    if c.poll_timeout().is_some_and(|t| t <= self.now) {
                        c.handle_timeout(self.now);
                    }
                }
            }
        }
    }
}

fn run(variant: HeaderVariant, ops: &[Op]) {
    let now = Instant::ZERO;
    let mut w = World {
        now,
        a: Connection::connect(config(), variant, now),
        b: Connection::accept(config(), now),
        to_b: Vec::new(),
        to_a: Vec::new(),
        model: Model::default(),
        got: Vec::new(),
        next_source: 0,
    };
    for op in ops {
        w.apply(op);
    }
    // Heal the network: deliver everything, in order, until both sides are quiet.
    for _ in 0..10_000 {
        w.apply(&Op::PollA);
        while !w.to_b.is_empty() {
            w.apply(&Op::ToB(0, Fate::Deliver));
        }
        w.apply(&Op::PollB);
        while !w.to_a.is_empty() {
            w.apply(&Op::ToA(0, Fate::Deliver));
        }
        if w.got.len() == w.next_source as usize && w.a.is_idle() {
            break;
        }
        w.apply(&Op::Advance(1000));
    }
    assert_eq!(
        w.got,
        (0..w.next_source).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn v1_1_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 0..300)) {
        run(HeaderVariant::V1_1, &ops);
    }

    #[test]
    fn v1_0_3_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 0..300)) {
        run(HeaderVariant::V1_0_3, &ops);
    }
}
