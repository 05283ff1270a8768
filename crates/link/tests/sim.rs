//! Two connections over the simulated network deliver every message exactly once, in order,
//! with no credit leak, under loss, duplication, reordering and corruption.

use std::time::Duration;

use oxmem_link::sim::{Corruption, LinkProfile, Pair};
use oxmem_link::{Config, Connection, Event, HeaderVariant, Instant, Integrity, State};
use oxmem_wire::{Channel, Message, Op, Payload};

/// The i-th message a side sends: a mix of sizes so frames pack differently.
fn request(i: u32, buf: &mut Vec<u8>) -> Message<'_> {
    let size = [3u8, 4, 6, 7, 3, 5][i as usize % 6];
    buf.clear();
    buf.extend((0..1usize << size).map(|k| (i as usize * 31 + k) as u8));
    if i % 3 == 0 {
        Message::get(i, u64::from(i) << 8, size)
    } else {
        Message::put_full_data(i, u64::from(i) << 8, size, buf)
    }
}

fn response(i: u32, buf: &mut Vec<u8>) -> Message<'_> {
    let size = [3u8, 6, 5][i as usize % 3];
    buf.clear();
    buf.extend((0..1usize << size).map(|k| (i as usize * 7 + k) as u8));
    if i % 2 == 0 {
        Message::access_ack(i, size, false)
    } else {
        Message::access_ack_data(i, size, false, buf)
    }
}

/// Checks that `got` is exactly message `i` of its stream.
fn check(got: &Message<'_>, want: &Message<'_>, i: u32) {
    assert_eq!(got, want, "message {i} differs from what was sent");
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    steps: usize,
    virtual_ms: f64,
    retransmitted: u64,
    refused: u64,
}

struct Scenario {
    variant: HeaderVariant,
    integrity: Integrity,
    corruption: Corruption,
    profile: LinkProfile,
    messages: u32,
    max_frame: usize,
}

/// Runs one seed: a sends `messages` requests on A, b sends as many responses on D; both must
/// arrive exactly once and in order, then both sides must hold all their peer's credit.
fn run(s: &Scenario, seed: u64) -> Outcome {
    let config = Config {
        integrity: s.integrity,
        max_frame: s.max_frame,
        rx_buffer_flits: [512; 5],
        retransmit_timeout: Duration::from_millis(2),
        ack_delay: Duration::from_micros(20),
        dead_after: Duration::from_secs(60),
        ..Config::default()
    };
    let a = Connection::connect(config.clone(), s.variant, Instant::ZERO);
    let b = Connection::accept(config.clone(), Instant::ZERO);
    let mut pair = Pair::new(a, b, s.profile, s.profile, s.corruption, seed);

    let n = s.messages;
    let (mut sent, mut got) = ([0u32; 2], [0u32; 2]);
    let mut connected = [false; 2];
    let mut scratch = Vec::new();
    let mut expect = Vec::new();
    let mut steps = 0usize;
    loop {
        // Keep a window's worth of messages queued on each side.
        while sent[0] < n && pair.a.queued_messages() < 64 {
            pair.a.send(&request(sent[0], &mut scratch)).unwrap();
            sent[0] += 1;
        }
        while sent[1] < n && pair.b.state() == State::Open && pair.b.queued_messages() < 64 {
            pair.b.send(&response(sent[1], &mut scratch)).unwrap();
            sent[1] += 1;
        }
        for side in 0..2 {
            let conn = if side == 0 { &mut pair.a } else { &mut pair.b };
            while let Some(event) = conn.poll_event() {
                match event {
                    Event::Connected(v) => {
                        assert_eq!(v, s.variant, "seed {seed}: side {side} connected as {v:?}");
                        connected[side] = true;
                    }
                    Event::Message(m) => {
                        let i = got[side];
                        assert!(i < n, "seed {seed}: side {side} got an extra message");
                        let want = if side == 1 {
                            request(i, &mut expect)
                        } else {
                            response(i, &mut expect)
                        };
                        check(&m.message(), &want, i);
                        got[side] += 1;
                    }
                    Event::Closed => panic!("seed {seed}: unexpected close"),
                    Event::Failed(e) => panic!("seed {seed}: side {side} failed: {e}"),
                }
            }
        }
        let quiet = got == [n, n]
            && pair.a.is_idle()
            && pair.b.is_idle()
            && Channel::ALL
                .iter()
                .all(|&c| pair.a.credit_to_return(c) == 0)
            && Channel::ALL
                .iter()
                .all(|&c| pair.b.credit_to_return(c) == 0)
            && pair.in_flight() == 0;
        if quiet {
            break;
        }
        let moved = pair.step();
        steps += 1;
        assert!(
            moved || sent != [n, n],
            "seed {seed}: stalled with {got:?} of {n} delivered"
        );
        assert!(
            steps < 2_000_000,
            "seed {seed}: no completion; got {got:?} of {n}"
        );
    }
    assert_eq!(
        connected,
        [true, true],
        "seed {seed}: both sides report Connected"
    );
    // No credit leak: once quiet, each side holds exactly the other's whole buffer again.
    for c in Channel::ALL {
        assert_eq!(
            pair.a.tx_credits(c),
            512,
            "seed {seed}: a's credit on {c:?}"
        );
        assert_eq!(
            pair.b.tx_credits(c),
            512,
            "seed {seed}: b's credit on {c:?}"
        );
    }
    assert_eq!(
        pair.corrupted_accepted, 0,
        "seed {seed}: a corrupted frame was accepted"
    );
    assert_eq!(
        pair.a.stats().credit_overruns + pair.b.stats().credit_overruns,
        0
    );
    Outcome {
        steps,
        virtual_ms: pair.now().as_nanos() as f64 / 1e6,
        retransmitted: pair.a.stats().frames_retransmitted + pair.b.stats().frames_retransmitted,
        refused: pair.direction_stats(0).refused + pair.direction_stats(1).refused,
    }
}

fn sweep(name: &str, s: &Scenario, seeds: u64) {
    let mut worst = (0u64, Outcome::default());
    let mut total_retx = 0;
    let mut total_refused = 0;
    for seed in 0..seeds {
        let o = run(s, seed);
        total_retx += o.retransmitted;
        total_refused += o.refused;
        if o.virtual_ms > worst.1.virtual_ms {
            worst = (seed, o);
        }
    }
    println!(
        "{name}: {seeds} seeds, {} messages each way, all delivered once and in order; \
         retransmitted {total_retx} frames, refused {total_refused} corrupt frames; \
         worst seed {} took {:.2} virtual ms, {} steps, {} retransmissions",
        s.messages, worst.0, worst.1.virtual_ms, worst.1.steps, worst.1.retransmitted
    );
}

fn scenario(variant: HeaderVariant, loss: f64) -> Scenario {
    Scenario {
        variant,
        integrity: Integrity::None,
        corruption: Corruption::Dropped,
        profile: LinkProfile::lossy(loss),
        messages: 60,
        max_frame: 1486,
    }
}

#[test]
fn perfect_link_delivers_everything_in_both_variants() {
    for variant in [HeaderVariant::V1_1, HeaderVariant::V1_0_3] {
        let mut s = scenario(variant, 0.0);
        s.messages = 500;
        sweep(&format!("{variant:?} perfect"), &s, 4);
    }
}

#[test]
fn lossy_links_up_to_20_percent_deliver_exactly_once_in_order() {
    let seeds: u64 = std::env::var("OXMEM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for variant in [HeaderVariant::V1_1, HeaderVariant::V1_0_3] {
        for loss in [0.01, 0.05, 0.10, 0.20] {
            sweep(
                &format!("{variant:?} loss {:.0}%", loss * 100.0),
                &scenario(variant, loss),
                seeds,
            );
        }
    }
}

#[test]
fn corruption_is_always_caught_by_the_crc_over_udp() {
    let seeds: u64 = std::env::var("OXMEM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let s = Scenario {
        variant: HeaderVariant::V1_1,
        integrity: Integrity::Crc32,
        corruption: Corruption::Delivered,
        profile: LinkProfile {
            corrupt: 0.2,
            ..LinkProfile::lossy(0.05)
        },
        messages: 60,
        max_frame: 8192,
    };
    sweep("UDP corrupt 20% + loss 5%", &s, seeds);
}

#[test]
fn corruption_on_ethernet_is_loss() {
    let s = Scenario {
        variant: HeaderVariant::V1_1,
        integrity: Integrity::None,
        corruption: Corruption::Dropped,
        profile: LinkProfile {
            corrupt: 0.2,
            ..LinkProfile::perfect()
        },
        messages: 60,
        max_frame: 1486,
    };
    sweep("Ethernet corrupt 20%", &s, 50);
}

#[test]
fn small_frames_like_etris_endpoint_still_carry_everything() {
    let mut s = scenario(HeaderVariant::V1_1, 0.05);
    s.max_frame = 528;
    sweep("528-byte frames loss 5%", &s, 50);
}

#[test]
fn payload_survives_byte_for_byte() {
    // Guard against a check that could not fail: a different message must compare unequal.
    let mut a = Vec::new();
    let mut b = Vec::new();
    assert_ne!(request(1, &mut a), request(2, &mut b));
    let mut c = Vec::new();
    let m = request(1, &mut c);
    assert_eq!(m.op, Op::PutFullData);
    assert!(matches!(m.payload, Payload::Data(_)));
}
