//! Behaviour of one connection, frame by frame: go-back-N, acknowledgements, credits,
//! open and close, variants, errors.

use std::time::Duration;

use oxmem_link::sim::{Corruption, LinkProfile, Pair};
use oxmem_link::*;
use oxmem_wire::tloe::SEQ_MASK;
use oxmem_wire::{Channel, CreditGrant, FrameType, Message, TloeFrame, TloeHeaderRepr};

const T0: Instant = Instant::ZERO;

fn config() -> Config {
    Config {
        rx_buffer_flits: [1024; 5],
        retransmit_timeout: Duration::from_millis(10),
        ack_delay: Duration::from_micros(100),
        dead_after: Duration::from_millis(100),
        ..Config::default()
    }
}

fn header(frame: &[u8]) -> TloeHeaderRepr {
    TloeHeaderRepr::parse(&TloeFrame::new_checked(frame).unwrap().header()).unwrap()
}

fn message_count(frame: &[u8]) -> usize {
    TloeFrame::new_checked(frame).unwrap().mask().count()
}

/// Everything `conn` wants to send now.
fn drain(conn: &mut Connection, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    while let Some(n) = conn.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
        assert!(out.len() < 10_000, "poll_transmit never stops");
    }
    out
}

fn deliver(conn: &mut Connection, now: Instant, frames: &[Vec<u8>]) {
    for f in frames {
        conn.handle_frame(now, f).unwrap();
    }
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn messages(conn: &mut Connection) -> Vec<Received> {
    events(conn)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// A connected 1.1 pair with all initial credit grants exchanged.
fn open_pair(variant: HeaderVariant) -> (Connection, Connection) {
    let mut a = Connection::connect(config(), variant, T0);
    let mut b = Connection::accept(config(), T0);
    for _ in 0..20 {
        let fa = drain(&mut a, T0);
        deliver(&mut b, T0, &fa);
        let fb = drain(&mut b, T0);
        deliver(&mut a, T0, &fb);
        let later = T0 + Duration::from_millis(1);
        let fa = drain(&mut a, later);
        deliver(&mut b, later, &fa);
        let fb = drain(&mut b, later);
        deliver(&mut a, later, &fb);
        if fa.is_empty() && fb.is_empty() {
            break;
        }
    }
    assert_eq!(a.state(), State::Open);
    assert_eq!(b.state(), State::Open);
    events(&mut a);
    events(&mut b);
    (a, b)
}

#[test]
fn v1_1_starts_with_128_credits_and_v1_0_3_with_none() {
    let a = Connection::connect(config(), HeaderVariant::V1_1, T0);
    let c = Connection::connect(config(), HeaderVariant::V1_0_3, T0);
    for ch in Channel::ALL {
        assert_eq!(a.tx_credits(ch), 128);
        assert_eq!(a.credit_to_return(ch), 1024 - 128);
        assert_eq!(c.tx_credits(ch), 0);
        assert_eq!(c.credit_to_return(ch), 1024);
    }
}

#[test]
fn v1_1_opens_with_an_open_frame_at_sequence_0_then_grants_credit_one_channel_per_frame() {
    let mut a = Connection::connect(config(), HeaderVariant::V1_1, T0);
    let frames = drain(&mut a, T0);
    let headers: Vec<_> = frames.iter().map(|f| header(f)).collect();
    assert_eq!(headers[0].frame_type, FrameType::Open);
    assert_eq!(headers[0].seq, 0);
    // Every frame returns at most one (channel, 2^n); together they return 1024 - 128 on each.
    let mut granted = [0u64; 5];
    for (i, h) in headers.iter().enumerate() {
        assert_eq!(h.seq, i as u32, "consecutive sequence numbers");
        if let Some(g) = h.credit {
            granted[g.channel.index()] += g.flits();
        }
    }
    assert_eq!(granted, [1024 - 128; 5]);
    assert!(
        headers.iter().all(|h| h.credit.is_some()),
        "no frame without a purpose"
    );
    // ETRI's endpoint waits for a grant of at least 2^8 on every channel.
    for ch in Channel::ALL {
        assert!(
            headers
                .iter()
                .any(|h| h.credit.is_some_and(|g| g.channel == ch && g.exponent >= 8))
        );
    }
}

#[test]
fn acceptor_answers_in_the_variant_the_peer_speaks() {
    for variant in [HeaderVariant::V1_1, HeaderVariant::V1_0_3] {
        let mut a = Connection::connect(config(), variant, T0);
        let mut b = Connection::accept(config(), T0);
        assert_eq!(b.variant(), None);
        assert!(
            drain(&mut b, T0).is_empty(),
            "an acceptor is silent until it hears the peer"
        );
        deliver(&mut b, T0, &drain(&mut a, T0));
        assert_eq!(b.variant(), Some(variant));
        assert!(matches!(events(&mut b)[0], Event::Connected(v) if v == variant));
        let later = T0 + Duration::from_millis(1);
        let replies = drain(&mut b, later);
        assert!(!replies.is_empty());
        for f in &replies {
            let h = header(f);
            match variant {
                HeaderVariant::V1_0_3 => assert_eq!(h.frame_type, FrameType::Normal),
                HeaderVariant::V1_1 => {
                    assert!(matches!(
                        h.frame_type,
                        FrameType::Normal | FrameType::AckOnly
                    ))
                }
            }
        }
    }
}

#[test]
fn acceptor_ignores_frames_before_sequence_0() {
    let mut a = Connection::connect(config(), HeaderVariant::V1_1, T0);
    let mut b = Connection::accept(config(), T0);
    let frames = drain(&mut a, T0);
    deliver(&mut b, T0, &frames[1..]);
    assert_eq!(
        b.variant(),
        None,
        "a later frame must not decide the variant"
    );
    deliver(&mut b, T0, &frames[..1]);
    assert_eq!(b.variant(), Some(HeaderVariant::V1_1));
}

#[test]
fn small_messages_are_packed_into_as_few_frames_as_the_mtu_allows() {
    let (mut a, _b) = open_pair(HeaderVariant::V1_1);
    // One-flit AccessAcks: 64 fit one frame (one mask bit each), the 65th starts another.
    for i in 0..65 {
        a.send(&Message::access_ack(i, 3, false)).unwrap();
    }
    let counts: Vec<usize> = drain(&mut a, T0).iter().map(|f| message_count(f)).collect();
    assert_eq!(counts, vec![64, 1]);
    // Two-flit Gets: messages may start only in the first 64 flits after the header (spec
    // §3.4), so 32 per frame.
    for i in 0..100 {
        a.send(&Message::get(i, u64::from(i) * 64, 6)).unwrap();
    }
    let frames = drain(&mut a, T0);
    let counts: Vec<usize> = frames.iter().map(|f| message_count(f)).collect();
    assert_eq!(counts, vec![32, 32, 32, 4]);
    // A message may run past flit 64 when it is the last: 1 Get then a 1 KiB write fill one frame.
    let data = vec![1u8; 1024];
    a.send(&Message::get(1, 0, 6)).unwrap();
    a.send(&Message::put_full_data(2, 0, 10, &data)).unwrap();
    let frames = drain(&mut a, T0);
    assert_eq!(frames.len(), 1);
    assert_eq!(message_count(&frames[0]), 2);
    assert!(frames.iter().all(|f| f.len() <= 1486));
}

#[test]
fn messages_wait_for_credit_and_leave_when_it_arrives() {
    let mut a = Connection::connect(config(), HeaderVariant::V1_0_3, T0);
    a.send(&Message::get(1, 0, 3)).unwrap();
    let frames = drain(&mut a, T0);
    assert!(
        frames.iter().all(|f| message_count(f) == 0),
        "no credit yet: nothing may leave"
    );
    assert_eq!(a.queued_messages(), 1);
    assert!(a.stats().credit_stalls > 0);
    // The peer's frames hand out its buffer; then the Get goes.
    let mut b = Connection::accept(config(), T0);
    deliver(&mut b, T0, &frames);
    deliver(&mut a, T0, &drain(&mut b, T0));
    assert!(a.tx_credits(Channel::A) > 0);
    let frames = drain(&mut a, T0);
    assert_eq!(frames.iter().map(|f| message_count(f)).sum::<usize>(), 1);
    assert_eq!(a.queued_messages(), 0);
}

#[test]
fn a_channel_without_credit_does_not_block_the_others() {
    let (mut a, _b) = open_pair(HeaderVariant::V1_1);
    // Exhaust channel A's credit with big writes, then queue a D response behind them.
    let data = vec![7u8; 512];
    while a.tx_credits(Channel::A) >= 66 {
        a.send(&Message::put_full_data(0, 0, 9, &data)).unwrap();
        drain(&mut a, T0);
    }
    a.send(&Message::put_full_data(0, 0, 9, &data)).unwrap();
    a.send(&Message::access_ack(5, 3, false)).unwrap();
    let frames = drain(&mut a, T0);
    assert_eq!(
        frames.iter().map(|f| message_count(f)).sum::<usize>(),
        1,
        "the D message leaves"
    );
    assert_eq!(a.queued_messages(), 1, "the A message waits for credit");
}

#[test]
fn retransmits_everything_after_a_nak() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    let mut sent = Vec::new();
    for i in 0..3 {
        a.send(&Message::get(i, 0, 3)).unwrap();
        sent.extend(drain(&mut a, T0));
    }
    assert_eq!(sent.len(), 3);
    // The first is lost; the next two arrive out of order and are dropped with a NAK.
    deliver(&mut b, T0, &sent[1..]);
    assert!(
        messages(&mut b).is_empty(),
        "go-back-N drops frames after a gap"
    );
    let nak = drain(&mut b, T0);
    assert_eq!(nak.len(), 1, "one NAK for the gap, sent at once");
    let h = header(&nak[0]);
    assert!(!h.ack);
    assert_eq!(h.frame_type, FrameType::AckOnly);
    deliver(&mut a, T0, &nak);
    let resent = drain(&mut a, T0);
    assert_eq!(
        resent, sent,
        "every unacknowledged frame, unchanged, in order"
    );
    deliver(&mut b, T0, &resent);
    assert_eq!(messages(&mut b).len(), 3);
}

#[test]
fn retransmit_timeout_resends_every_unacknowledged_frame_unchanged() {
    let (mut a, _b) = open_pair(HeaderVariant::V1_1);
    a.send(&Message::get(1, 0, 3)).unwrap();
    let first = drain(&mut a, T0);
    a.send(&Message::get(2, 8, 3)).unwrap();
    let second = drain(&mut a, T0);
    let deadline = a.poll_timeout().expect("a retransmit timer is armed");
    assert_eq!(deadline, T0 + Duration::from_millis(10));
    assert!(drain(&mut a, Instant::from_nanos(deadline.as_nanos() - 1)).is_empty());
    a.handle_timeout(deadline);
    let resent = drain(&mut a, deadline);
    assert_eq!(resent, [first, second].concat());
    assert_eq!(a.stats().retransmit_timeouts, 1);
}

#[test]
fn duplicates_are_dropped_and_acknowledged_at_once() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    a.send(&Message::get(1, 0, 3)).unwrap();
    let f = drain(&mut a, T0);
    deliver(&mut b, T0, &f);
    deliver(&mut b, T0, &f);
    assert_eq!(messages(&mut b).len(), 1, "exactly once");
    assert_eq!(b.stats().duplicates_received, 1);
    let acks = drain(&mut b, T0);
    assert_eq!(acks.len(), 1);
    let h = header(&acks[0]);
    assert!(h.ack);
    assert_eq!(h.seq_ack, header(&f[0]).seq);
}

#[test]
fn acknowledgement_is_delayed_then_sent_alone_when_nothing_goes_back() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    a.send(&Message::get(1, 0, 3)).unwrap();
    let f = drain(&mut a, T0);
    deliver(&mut b, T0, &f);
    // The message is not taken yet, so no credit is waiting to go back either.
    assert!(
        drain(&mut b, T0).is_empty(),
        "the ACK waits for a frame to ride on"
    );
    let due = b.poll_timeout().expect("delayed-ACK timer");
    assert_eq!(due, T0 + Duration::from_micros(100));
    let acks = drain(&mut b, due);
    assert_eq!(acks.len(), 1);
    let h = header(&acks[0]);
    assert_eq!(h.frame_type, FrameType::AckOnly);
    assert!(h.ack);
    assert_eq!(h.seq_ack, header(&f[0]).seq);
    assert_eq!(message_count(&acks[0]), 0);
    // An ack-only frame carries the next sequence number without consuming it.
    b.send(&Message::access_ack(1, 3, false)).unwrap();
    let next = drain(&mut b, due);
    assert_eq!(header(&next[0]).seq, h.seq);
    assert_eq!(header(&next[0]).frame_type, FrameType::Normal);
}

#[test]
fn acknowledgement_rides_on_reverse_traffic() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    a.send(&Message::get(1, 0, 3)).unwrap();
    let f = drain(&mut a, T0);
    deliver(&mut b, T0, &f);
    messages(&mut b);
    b.send(&Message::access_ack(1, 3, false)).unwrap();
    let out = drain(&mut b, T0);
    assert_eq!(out.len(), 1, "one frame: the response carries the ACK");
    assert_eq!(header(&out[0]).seq_ack, header(&f[0]).seq);
    assert_eq!(message_count(&out[0]), 1);
    assert_eq!(b.stats().ack_only_sent, 0);
    deliver(&mut a, T0, &out);
    assert_eq!(a.unacked_frames(), 0);
}

#[test]
fn v1_0_3_empty_frames_take_sequence_numbers_and_are_not_answered() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_0_3);
    a.send(&Message::get(1, 0, 3)).unwrap();
    let f = drain(&mut a, T0);
    deliver(&mut b, T0, &f);
    messages(&mut b);
    let later = T0 + Duration::from_millis(1);
    let acks = drain(&mut b, later);
    assert_eq!(acks.len(), 1);
    let h = header(&acks[0]);
    assert_eq!(
        h.frame_type,
        FrameType::Normal,
        "1.0.3 has no ack-only type"
    );
    assert_eq!(message_count(&acks[0]), 0);
    let seq_before = h.seq;
    deliver(&mut a, later, &acks);
    // The empty frame is acknowledged only when something else goes: no ping-pong.
    let much_later = later + Duration::from_secs(1);
    a.handle_timeout(much_later);
    assert!(drain(&mut a, much_later).is_empty());
    a.send(&Message::get(2, 0, 3)).unwrap();
    let g = drain(&mut a, much_later);
    assert_eq!(
        header(&g[0]).seq_ack,
        seq_before,
        "the next frame acknowledges it"
    );
    deliver(&mut b, much_later, &g);
    assert_eq!(b.unacked_frames(), 0);
}

#[test]
fn close_handshake_in_v1_1() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    a.send(&Message::get(1, 0, 3)).unwrap();
    a.close();
    assert_eq!(a.send(&Message::get(2, 0, 3)), Err(SendError::Closing));
    let mut closed = [false; 2];
    let mut now = T0;
    for _ in 0..50 {
        now += Duration::from_millis(1);
        deliver(&mut b, now, &drain(&mut a, now));
        deliver(&mut a, now, &drain(&mut b, now));
        for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
            for e in events(c) {
                if matches!(e, Event::Closed) {
                    closed[i] = true;
                }
            }
        }
    }
    assert_eq!(closed, [true, true]);
    assert_eq!(a.state(), State::Closed);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.stats().messages_delivered,
        1,
        "queued messages are delivered before the close"
    );
}

#[test]
fn an_unresponsive_peer_fails_the_connection() {
    let (mut a, _b) = open_pair(HeaderVariant::V1_1);
    a.send(&Message::get(1, 0, 3)).unwrap();
    drain(&mut a, T0);
    let mut now = T0;
    let mut failed = false;
    while now < T0 + Duration::from_secs(1) && !failed {
        now = a.poll_timeout().expect("timer armed while unacknowledged");
        a.handle_timeout(now);
        drain(&mut a, now);
        failed = events(&mut a)
            .iter()
            .any(|e| matches!(e, Event::Failed(LinkError::PeerUnresponsive)));
    }
    assert!(failed);
    assert!(
        now >= T0 + Duration::from_millis(100),
        "not before dead_after"
    );
    assert_eq!(a.state(), State::Failed);
    assert_eq!(a.send(&Message::get(2, 0, 3)), Err(SendError::Failed));
}

#[test]
fn send_refuses_invalid_oversized_and_overflowing_messages() {
    let mut a = Connection::connect(
        Config {
            send_queue_bytes: 64,
            ..config()
        },
        HeaderVariant::V1_1,
        T0,
    );
    assert!(matches!(
        a.send(&Message::get(1, 3, 3)),
        Err(SendError::Invalid(
            oxmem_wire::Error::UnalignedAddress { .. }
        ))
    ));
    let big = vec![0u8; 4096];
    assert!(matches!(
        a.send(&Message::put_full_data(1, 0, 12, &big)),
        Err(SendError::TooLarge { .. })
    ));
    for _ in 0..4 {
        a.send(&Message::get(1, 0, 3)).unwrap(); // 16 bytes each
    }
    assert_eq!(a.send(&Message::get(1, 0, 3)), Err(SendError::QueueFull));
}

#[test]
fn retransmit_buffer_bounds_frames_in_flight() {
    let mut cfg = config();
    cfg.max_in_flight = 4;
    let mut a = Connection::connect(cfg.clone(), HeaderVariant::V1_1, T0);
    let mut b = Connection::accept(cfg, T0);
    deliver(&mut b, T0, &drain(&mut a, T0));
    // a sent its open frame and credit grants, up to 4 frames; nothing more until acked.
    assert_eq!(a.unacked_frames(), 4);
    assert!(drain(&mut a, T0).is_empty());
    deliver(&mut a, T0, &drain(&mut b, T0));
    assert!(a.unacked_frames() < 4);
}

#[test]
fn corrupted_udp_frames_are_refused_and_change_nothing() {
    let mut a = Connection::connect(Config::udp(8192), HeaderVariant::V1_1, T0);
    let mut b = Connection::accept(Config::udp(8192), T0);
    let frames = drain(&mut a, T0);
    let mut bad = frames[0].clone();
    let at = 20 % bad.len();
    bad[at] ^= 0x10;
    assert_eq!(b.handle_frame(T0, &bad), Err(FrameError::Integrity));
    assert_eq!(b.handle_frame(T0, &[1, 2, 3]), Err(FrameError::Integrity));
    assert_eq!(b.variant(), None);
    assert_eq!(b.stats().integrity_failures, 2);
    deliver(&mut b, T0, &frames);
    assert_eq!(b.variant(), Some(HeaderVariant::V1_1));
}

#[test]
fn malformed_frames_are_refused_without_being_acknowledged() {
    let (_a, mut b) = open_pair(HeaderVariant::V1_1);
    let before = b.stats().clone();
    assert!(matches!(
        b.handle_frame(T0, &[0u8; 12]),
        Err(FrameError::Malformed(_))
    ));
    // A frame whose mask points past its end.
    let mut f = vec![0u8; 48];
    f[47] = 0x80;
    f[40] = 0;
    assert!(matches!(
        b.handle_frame(T0, &f),
        Err(FrameError::Malformed(_))
    ));
    assert_eq!(b.stats().malformed_frames, before.malformed_frames + 2);
    assert!(drain(&mut b, T0 + Duration::from_millis(1)).is_empty());
}

#[test]
fn credit_grants_are_powers_of_two_one_per_frame() {
    let mut cfg = config();
    cfg.rx_buffer_flits = [1000, 3, 0, 1, 129];
    let mut a = Connection::connect(cfg, HeaderVariant::V1_0_3, T0);
    let frames = drain(&mut a, T0);
    assert_eq!(
        a.poll_timeout(),
        Some(T0 + Duration::from_millis(10)),
        "only the retransmit timer"
    );
    let mut granted = [0u64; 5];
    for f in &frames {
        let g: CreditGrant = header(f)
            .credit
            .expect("each 1.0.3 start frame grants credit");
        granted[g.channel.index()] += g.flits();
    }
    assert_eq!(granted, [1000, 3, 0, 1, 129]);
    // 1000 = 512+256+128+64+32+8, 3 = 2+1, 1 = 1, 129 = 128+1: 11 frames.
    assert_eq!(frames.len(), 11);
}

#[test]
fn sequence_numbers_wrap_around_2_to_the_22() {
    for seed in 0..20 {
        // An acceptor learns the variant from sequence 0, so start both sides as 1.0.3
        // initiators (1.0.3 has no handshake) a few frames before the wrap.
        let mut a2 = Connection::connect(config(), HeaderVariant::V1_0_3, T0);
        let mut b2 = Connection::connect(config(), HeaderVariant::V1_0_3, T0);
        a2.set_sequence_start(SEQ_MASK - 5, SEQ_MASK - 5);
        b2.set_sequence_start(SEQ_MASK - 5, SEQ_MASK - 5);
        let mut pair = Pair::new(
            a2,
            b2,
            LinkProfile::lossy(0.1),
            LinkProfile::lossy(0.1),
            Corruption::Dropped,
            seed,
        );
        let n = 200u32;
        let mut got = 0u32;
        let mut sent = 0u32;
        let mut steps = 0;
        while got < n {
            while sent < n && pair.a.queued_messages() < 32 {
                pair.a
                    .send(&Message::get(sent, u64::from(sent) * 8, 3))
                    .unwrap();
                sent += 1;
            }
            while let Some(e) = pair.b.poll_event() {
                if let Event::Message(m) = e {
                    assert_eq!(
                        m.message().source,
                        got,
                        "seed {seed}: in order across the wrap"
                    );
                    got += 1;
                }
            }
            while pair.a.poll_event().is_some() {}
            pair.step();
            steps += 1;
            assert!(steps < 200_000, "seed {seed}: stuck at {got}");
        }
        assert!(pair.a.stats().frames_sent > 6, "crossed the wrap");
    }
}
