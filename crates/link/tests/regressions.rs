//! Regression tests for bugs a review of `Connection` found: close corner cases, credit
//! timers after close, 1.1 acknowledgement of empty frames, small receive buffers, bounded
//! retransmit buffers, stale NAKs and unsequenced credit. Each test failed before its fix.

use std::time::Duration;

use oxmem_link::sim::{Corruption, LinkProfile, Pair};
use oxmem_link::*;
use oxmem_wire::tloe::SEQ_MASK;
use oxmem_wire::{
    ByteOrder, Channel, CreditGrant, FrameBuilder, FrameType, Message, TloeFrame, TloeHeaderRepr,
};

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
        let _ = conn.handle_frame(now, f);
    }
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// A frame as a foreign peer would build it.
fn craft(h: TloeHeaderRepr, msgs: &[Message<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut b = FrameBuilder::new(&mut buf, 1486, ByteOrder::Spec).unwrap();
    for m in msgs {
        b.push(m).unwrap();
    }
    let n = b.finish(&h, 46).unwrap();
    buf.truncate(n);
    buf
}

fn open_pair_with(variant: HeaderVariant, ca: Config, cb: Config) -> (Connection, Connection) {
    let mut a = Connection::connect(ca, variant, T0);
    let mut b = Connection::accept(cb, T0);
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

fn open_pair(variant: HeaderVariant) -> (Connection, Connection) {
    open_pair_with(variant, config(), config())
}

/// Runs both sides (polling, delivering, firing timers) for `ms` virtual milliseconds in
/// 50 us steps; returns every event each side reported.
fn run_for(a: &mut Connection, b: &mut Connection, start: Instant, ms: u64) -> [Vec<Event>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    let mut now = start;
    let end = start + Duration::from_millis(ms);
    while now < end {
        for c in [&mut *a, &mut *b] {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        let fa = drain(a, now);
        deliver(b, now, &fa);
        let fb = drain(b, now);
        deliver(a, now, &fb);
        out[0].extend(events(a));
        out[1].extend(events(b));
        now += Duration::from_micros(50);
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// README: "in 1.0.3 the connection simply ends once drained". An idle 1.0.3 connection that
/// is closed has nothing left to drain, yet `check_closed` is only called on ack progress or
/// frame arrival, so it stays in Closing for ever.
#[test]
fn v1_0_3_close_of_an_idle_connection_completes_at_once() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_0_3);
    let t = T0 + Duration::from_millis(5);
    run_for(&mut a, &mut b, t, 5);
    a.close();
    let ev = run_for(&mut a, &mut b, t + Duration::from_millis(5), 200);
    assert!(
        ev[0].iter().any(|e| matches!(e, Event::Closed)),
        "a never reports Closed; state {:?}",
        a.state()
    );
}

/// `close()` on an acceptor before the peer's first frame sets Closing; `start()` then
/// overwrites the state with Open. The connection accepts new sends after close() and never
/// reaches Closed even though the close handshake runs (close_requested is still true).
#[test]
fn an_acceptor_closed_before_any_peer_is_closed_for_good() {
    let mut a = Connection::connect(config(), HeaderVariant::V1_1, T0);
    let mut b = Connection::accept(config(), T0);
    b.close();
    assert_eq!(b.state(), State::Closed, "nobody to tell: closed at once");
    deliver(&mut b, T0, &drain(&mut a, T0));
    assert_eq!(
        b.state(),
        State::Closed,
        "a later first frame does not reopen it"
    );
    assert_eq!(b.variant(), None);
    assert!(matches!(
        b.send(&Message::get(1, 0, 3)),
        Err(SendError::Closing)
    ));
}

#[test]
fn an_acceptor_closed_before_any_peer_reports_closed() {
    let mut a = Connection::connect(config(), HeaderVariant::V1_1, T0);
    let mut b = Connection::accept(config(), T0);
    b.close();
    let ev = run_for(&mut a, &mut b, T0, 100);
    let b_closed = ev[1].iter().any(|e| matches!(e, Event::Closed));
    assert!(
        b_closed,
        "b never reports Closed (a: {:?}, b: {:?}, b events {:?})",
        a.state(),
        b.state(),
        ev[1]
    );
}

/// The 1.0.3 initiator reports Connected whenever the peer's sequence number is 0 and in
/// order, i.e. again after every 2^22 frames: mid-stream, after messages were delivered.
#[test]
fn v1_0_3_initiator_reports_connected_once_even_across_the_wrap() {
    let mut a2 = Connection::connect(config(), HeaderVariant::V1_0_3, T0);
    let mut b2 = Connection::connect(config(), HeaderVariant::V1_0_3, T0);
    // Stand-in for "2^22 frames later": both sides a few frames before the wrap.
    a2.set_sequence_start(SEQ_MASK - 5, SEQ_MASK - 5);
    b2.set_sequence_start(SEQ_MASK - 5, SEQ_MASK - 5);
    let mut pair = Pair::new(
        a2,
        b2,
        LinkProfile::perfect(),
        LinkProfile::perfect(),
        Corruption::Dropped,
        1,
    );
    let mut a_connected = 0;
    let mut b_messages = 0;
    let mut b_connected_after_message = false;
    for i in 0..40u32 {
        let _ = pair.a.send(&Message::get(i, u64::from(i) * 8, 3));
        for _ in 0..20 {
            pair.step();
        }
        while let Some(e) = pair.a.poll_event() {
            if matches!(e, Event::Connected(_)) {
                a_connected += 1;
            }
        }
        while let Some(e) = pair.b.poll_event() {
            match e {
                Event::Message(_) => b_messages += 1,
                Event::Connected(_) if b_messages > 0 => b_connected_after_message = true,
                _ => {}
            }
        }
    }
    assert!(b_messages > 0);
    assert!(
        !b_connected_after_message,
        "Connected reported after messages had already flowed (seq wrapped to 0); a saw {a_connected}"
    );
}

/// After Closed, `poll_new_frame` returns None at once, so a credit deadline armed before the
/// close is never cleared: `poll_timeout` keeps returning an instant in the past and a driver
/// (like `sim::Pair`) spins without time advancing.
#[test]
fn no_credit_timer_is_left_armed_after_closed() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    // A 3-flit message (PutFullData of 8 bytes).
    let data = [7u8; 8];
    a.send(&Message::put_full_data(1, 0, 3, &data)).unwrap();
    let t = T0 + Duration::from_millis(2);
    deliver(&mut b, t, &drain(&mut a, t));
    // b takes the message (3 flits to return, below a quarter of the buffer) and closes.
    let ev = events(&mut b);
    assert!(ev.iter().any(|e| matches!(e, Event::Message(_))));
    b.close();
    // b's Close carries 2 of the 3 flits; the last flit arms the credit deadline (t + 100 us).
    deliver(&mut a, t, &drain(&mut b, t));
    // a answers with its Close, which also acknowledges b's; b acknowledges that after
    // ack_delay (b is Closed by then, so its pending credit flit never leaves).
    let mut now = t;
    for _ in 0..100 {
        for c in [&mut a, &mut b] {
            if c.poll_timeout().is_some_and(|d| d <= now) {
                c.handle_timeout(now);
            }
        }
        deliver(&mut b, now, &drain(&mut a, now));
        deliver(&mut a, now, &drain(&mut b, now));
        if a.state() == State::Closed && b.state() == State::Closed {
            break;
        }
        now += Duration::from_micros(10);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(a.state(), State::Closed);
    assert_eq!(
        b.credit_to_return(Channel::A),
        1,
        "one flit of credit never returned"
    );
    // The driver loop: fire what is due, transmit, re-arm.
    let later = now + Duration::from_millis(50);
    if b.poll_timeout().is_some_and(|d| d <= later) {
        b.handle_timeout(later);
    }
    assert!(drain(&mut b, later).is_empty());
    let next = b.poll_timeout();
    assert!(
        next.is_none_or(|d| d > later),
        "b is Closed and has nothing to send, yet poll_timeout says {next:?} (now {later:?}): \
         the driver spins"
    );
}

/// Same as above through `sim::Pair`: the pair never goes quiescent and virtual time stops.
#[test]
fn a_closed_pair_goes_quiet_in_the_simulator() {
    let (mut a, b) = open_pair(HeaderVariant::V1_1);
    let data = [7u8; 8];
    a.send(&Message::put_full_data(1, 0, 3, &data)).unwrap();
    let mut pair = Pair::new(
        a,
        b,
        LinkProfile::perfect(),
        LinkProfile::perfect(),
        Corruption::Dropped,
        7,
    );
    let r = pair.drive(
        100_000,
        |p, side, e| {
            if side == 1 && matches!(e, Event::Message(_)) {
                p.b.close();
            }
        },
        |p| p.a.state() == State::Closed && p.b.state() == State::Closed && p.in_flight() == 0,
    );
    assert!(
        r.is_ok(),
        "close did not complete: {r:?} at {:?}; a {:?} b {:?}; a timeout {:?}, b timeout {:?}",
        pair.now(),
        pair.a.state(),
        pair.b.state(),
        pair.a.poll_timeout(),
        pair.b.poll_timeout()
    );
    // Both closed: from here the pair should go quiescent (step() == false) quickly.
    let start = pair.now();
    let mut steps = 0;
    while pair.step() {
        steps += 1;
        if steps > 10_000 {
            break;
        }
    }
    assert!(
        steps <= 10_000,
        "closed pair still stepping after 10000 steps; time {:?} -> {:?}; a timeout {:?}, b timeout {:?}",
        start,
        pair.now(),
        pair.a.poll_timeout(),
        pair.b.poll_timeout()
    );
}

/// In 1.1 an empty Normal frame (WD's omnixtend-rs never sends ack-only frames, so this is how
/// it acknowledges) is sequenced and must be acknowledged: an ack-only reply cannot ping-pong.
/// The connection applies the 1.0.3 rule ("acknowledged only on a frame that goes anyway")
/// and never acknowledges it, so the peer retransmits it after its timeout (100 ms for WD).
#[test]
fn v1_1_empty_normal_frames_are_acknowledged_with_ack_only_frames() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    // Learn the sequence number b expects from a real frame.
    a.send(&Message::get(1, 0, 3)).unwrap();
    let f = drain(&mut a, T0);
    let s = header(&f[0]).seq;
    deliver(&mut b, T0, &f);
    // (The message is not taken, so no credit frame will carry an acknowledgement by chance.)
    let acks = drain(&mut b, T0 + Duration::from_millis(1));
    assert!(acks.iter().any(|x| header(x).seq_ack == s));
    // The peer now sends an empty Normal frame, seq s+1 (its keep-alive / acknowledgement).
    let empty = craft(
        TloeHeaderRepr {
            vc: 0,
            frame_type: FrameType::Normal,
            seq: (s + 1) & SEQ_MASK,
            seq_ack: SEQ_MASK,
            ack: true,
            credit: None,
        },
        &[],
    );
    b.handle_frame(T0 + Duration::from_millis(1), &empty)
        .unwrap();
    let mut acked = false;
    for k in 2..60 {
        let now = T0 + Duration::from_millis(k);
        if b.poll_timeout().is_some_and(|t| t <= now) {
            b.handle_timeout(now);
        }
        for x in drain(&mut b, now) {
            if header(&x).seq_ack == ((s + 1) & SEQ_MASK) {
                acked = true;
            }
        }
    }
    assert!(
        acked,
        "the peer's sequenced frame {} was never acknowledged",
        s + 1
    );
}

/// 1.1 starts both sides at 128 credits, but the receiver records only
/// min(128, rx_buffer_flits) as held by the peer. With a smaller buffer the peer legitimately
/// spends its 128 initial credits, the frame is refused whole for "credit overrun", it is
/// retransmitted unchanged for ever and the link wedges (then fails).
#[test]
fn v1_1_receive_buffers_below_128_flits_still_carry_traffic() {
    let small = Config {
        rx_buffer_flits: [64; 5],
        ..config()
    };
    let (mut a, mut b) = open_pair_with(HeaderVariant::V1_1, config(), small);
    assert_eq!(a.tx_credits(Channel::A), 128, "a holds the 1.1 initial 128");
    let data = [1u8; 64]; // 2 + 8 = 10 flits each
    for i in 0..10 {
        a.send(&Message::put_full_data(i, 0, 6, &data)).unwrap();
    }
    let ev = run_for(&mut a, &mut b, T0 + Duration::from_millis(2), 150);
    let got = ev[1]
        .iter()
        .filter(|e| matches!(e, Event::Message(_)))
        .count();
    assert_eq!(
        got,
        10,
        "delivered {got} of 10; b credit overruns {}, a state {:?}, a events {:?}",
        b.stats().credit_overruns,
        a.state(),
        ev[0]
    );
}

/// Config says `max_in_flight` is "most sequenced frames kept for retransmission (the spec's
/// retransmit buffer)", but 1.0.3 empty frames bypass it: every duplicate a peer sends is
/// answered at once with a new sequenced empty frame that is kept until acknowledged. A peer
/// that repeats a frame and never acknowledges grows `unacked` up to 2^21 frames.
#[test]
fn v1_0_3_acknowledgements_cannot_grow_the_retransmit_buffer_without_bound() {
    let cfg = Config {
        max_in_flight: 8,
        ..config()
    };
    let (mut a, mut b) = open_pair_with(HeaderVariant::V1_0_3, cfg.clone(), cfg);
    a.send(&Message::get(1, 0, 3)).unwrap();
    let f = drain(&mut a, T0);
    let mut now = T0 + Duration::from_millis(2);
    for _ in 0..1000 {
        deliver(&mut b, now, &f); // the same frame again and again; b's frames never reach a
        drain(&mut b, now);
        now += Duration::from_micros(1);
    }
    assert!(
        b.unacked_frames() <= 16,
        "b keeps {} frames for retransmission (at most twice max_in_flight 8)",
        b.unacked_frames()
    );
}

/// The 1.1 close: `a` reports Closed on receiving the peer's Close, while its acknowledgement
/// of that Close is only owed (delayed by ack_delay). A driver that stops on Event::Closed
/// (after draining poll_transmit as documented) never sends it, and the peer, retransmitting
/// its Close, declares the link dead instead of Closed.
#[test]
fn a_received_close_is_acknowledged_before_closed_is_reported() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    a.close();
    let mut now = T0 + Duration::from_millis(2);
    let mut a_done = false;
    for _ in 0..100 {
        deliver(&mut b, now, &drain(&mut a, now));
        let fb = drain(&mut b, now);
        deliver(&mut a, now, &fb);
        if events(&mut a).iter().any(|e| matches!(e, Event::Closed)) {
            // As documented: after an input, drain poll_transmit. Then the driver is done.
            deliver(&mut b, now, &drain(&mut a, now));
            a_done = true;
            break;
        }
        now += Duration::from_micros(10);
    }
    assert!(a_done);
    // From here only b runs.
    let mut b_closed = false;
    for _ in 0..1000 {
        now += Duration::from_millis(1);
        if b.poll_timeout().is_some_and(|t| t <= now) {
            b.handle_timeout(now);
        }
        drain(&mut b, now);
        for e in events(&mut b) {
            if matches!(e, Event::Closed) {
                b_closed = true;
            }
        }
    }
    assert!(b_closed, "b ended {:?} instead of Closed", b.state());
}

/// Credit in an ack-only frame is added unconditionally; ack-only frames are not sequenced, so
/// a frame duplicated by the network (or reordered) adds the grant twice.
#[test]
fn credit_on_ack_only_frames_is_ignored_so_duplicates_cannot_double_it() {
    let (mut a, _b) = open_pair(HeaderVariant::V1_1);
    let before = a.tx_credits(Channel::A);
    let f = craft(
        TloeHeaderRepr {
            vc: 0,
            frame_type: FrameType::AckOnly,
            seq: 0,
            seq_ack: SEQ_MASK,
            ack: true,
            credit: Some(CreditGrant {
                channel: Channel::A,
                exponent: 4,
            }),
        },
        &[],
    );
    a.handle_frame(T0, &f).unwrap();
    a.handle_frame(T0, &f).unwrap(); // network duplicate
    assert_eq!(
        a.tx_credits(Channel::A),
        before,
        "unsequenced credit is not trusted"
    );
    assert_eq!(a.stats().ack_only_credit_ignored, 2);
}

/// A NAK whose Sequence_number_ack is behind what was already acknowledged is stale (it rides
/// on a retransmitted frame the peer sent before the gap was filled), yet it sends the whole
/// window again.
#[test]
fn a_stale_nak_resends_nothing() {
    let (mut a, mut b) = open_pair(HeaderVariant::V1_1);
    let mut first = Vec::new();
    for i in 0..3 {
        a.send(&Message::get(i, 0, 3)).unwrap();
        first.extend(drain(&mut a, T0));
    }
    deliver(&mut b, T0, &first);
    events(&mut b);
    let t = T0 + Duration::from_millis(1);
    deliver(&mut a, t, &drain(&mut b, t)); // everything acknowledged
    assert_eq!(a.unacked_frames(), 0);
    for i in 3..6 {
        a.send(&Message::get(i, 0, 3)).unwrap();
    }
    let second = drain(&mut a, t);
    assert!(!second.is_empty());
    let retx_before = a.stats().frames_retransmitted;
    // Old NAK: "last in order was first[0]" although first[2] is already acknowledged.
    let stale = craft(
        TloeHeaderRepr {
            vc: 0,
            frame_type: FrameType::AckOnly,
            seq: 0,
            seq_ack: header(&first[0]).seq,
            ack: false,
            credit: None,
        },
        &[],
    );
    a.handle_frame(t, &stale).unwrap();
    let resent = drain(&mut a, t);
    assert_eq!(
        a.stats().frames_retransmitted - retx_before,
        0,
        "a stale NAK resent {} frames",
        resent.len()
    );
}
