//! The client against an in-process memory node over real UDP sockets on loopback: random
//! reads, writes and atomics checked against a shadow copy, denials, concurrent endpoints,
//! injected loss, duplication and reordering on both sides, malformed datagrams from a
//! plain socket, and a node that goes away mid-way.
//!
//! Every test binds port 0, so they run in parallel (nextest) without clashing.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use oxmem_client::{AtomicOp, Endpoint, EndpointOptions, Error, Target};
use oxmem_net::engine::EngineConfig;
use oxmem_net::fault::{FaultConfig, FaultCounters, FaultInjector};
use oxmem_net::udp::{UdpConfig, UdpTransport};
use oxmem_net::{PeerAddr, Transport};
use oxmem_node::{Access, Arena, Executor, Grant, NodeServer, Window};
use oxmem_wire::{
    ByteOrder, Channel, FrameBuilder, FrameType, Message, Op, TloeFrame, TloeHeaderRepr,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ALL_OPS: [AtomicOp; 9] = [
    AtomicOp::Add,
    AtomicOp::Min,
    AtomicOp::Max,
    AtomicOp::MinU,
    AtomicOp::MaxU,
    AtomicOp::Xor,
    AtomicOp::Or,
    AtomicOp::And,
    AtomicOp::Swap,
];

fn udp(max_datagram: usize) -> UdpConfig {
    UdpConfig {
        max_datagram,
        ..UdpConfig::default()
    }
}

/// A node on 127.0.0.1 with the given grants, its UDP address, and the live counters of the
/// fault injector wrapped around its socket when `faults` is given.
fn start_node(
    capacity: u64,
    max_datagram: usize,
    grants: Vec<Grant<PeerAddr>>,
    faults: Option<FaultConfig>,
) -> (NodeServer, SocketAddr, Option<Arc<FaultCounters>>) {
    let mut exec = Executor::new(Arena::new(capacity).unwrap());
    for g in grants {
        exec.grants_mut().add(g).unwrap();
    }
    let mut server = NodeServer::new(exec);
    let transport = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), udp(max_datagram))
        .expect("bind the node's socket");
    let (local, counters) = match faults {
        Some(cfg) => {
            let injector = FaultInjector::new(transport, cfg);
            let counters = injector.counters();
            let local = server.serve(injector, EngineConfig::default()).unwrap();
            (local, Some(counters))
        }
        None => (
            server.serve(transport, EngineConfig::default()).unwrap(),
            None,
        ),
    };
    let PeerAddr::Udp(addr) = local else {
        panic!("a UDP node has a UDP address, got {local}")
    };
    (server, addr, counters)
}

fn open(capacity: u64) -> Grant<PeerAddr> {
    Grant::any(
        Window {
            base: 0,
            len: capacity,
        },
        Access::ReadWrite,
    )
}

fn options(max_datagram: usize) -> EndpointOptions {
    EndpointOptions {
        udp: udp(max_datagram),
        timeout: Duration::from_secs(10),
        ..EndpointOptions::default()
    }
}

fn connect(addr: SocketAddr, options: EndpointOptions) -> Endpoint {
    Endpoint::connect(&Target::Udp(addr), options).expect("connect to the node")
}

/// What the node's memory must hold after `op` on the `width`-byte little-endian integer at
/// `a`; returns the old value (zero-extended), as the endpoint does.
fn shadow_atomic(shadow: &mut [u8], a: usize, op: AtomicOp, width: u8, operand: u64) -> u64 {
    let w = usize::from(width);
    let mut cur = [0u8; 8];
    cur[..w].copy_from_slice(&shadow[a..a + w]);
    let old = u64::from_le_bytes(cur);
    let bits = 8 * w as u32;
    let mask = if w == 8 { u64::MAX } else { (1u64 << bits) - 1 };
    let (x, y) = (old & mask, operand & mask);
    // Sign-extend from the operand width for the signed comparisons.
    let signed = |v: u64| ((v << (64 - bits)) as i64) >> (64 - bits);
    let new = match op {
        AtomicOp::Add => x.wrapping_add(y),
        AtomicOp::Min => {
            if signed(y) < signed(x) {
                y
            } else {
                x
            }
        }
        AtomicOp::Max => {
            if signed(y) > signed(x) {
                y
            } else {
                x
            }
        }
        AtomicOp::MinU => x.min(y),
        AtomicOp::MaxU => x.max(y),
        AtomicOp::Xor => x ^ y,
        AtomicOp::Or => x | y,
        AtomicOp::And => x & y,
        AtomicOp::Swap => y,
    } & mask;
    shadow[a..a + w].copy_from_slice(&new.to_le_bytes()[..w]);
    old
}

/// An operand that often sits near the signed and unsigned edges of `width`.
fn operand(rng: &mut ChaCha8Rng) -> u64 {
    match rng.random_range(0..5) {
        0 => 0,
        1 => u64::MAX,              // -1 at every width
        2 => 0x8080_8080_8080_8080, // the sign bit of every width
        3 => 0x7f7f_7f7f_7f7f_7f7f, // the largest positive of every width
        _ => rng.random(),
    }
}

/// `rounds` random requests within `[base, base + span)` checked against `shadow` (the node's
/// memory from address 0). Lengths run from 1 byte to `max_len`, at any alignment.
fn random_workload(
    ep: &Endpoint,
    shadow: &mut [u8],
    seed: u64,
    rounds: usize,
    base: u64,
    span: u64,
    max_len: usize,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for round in 0..rounds {
        let len = match rng.random_range(0..5) {
            0 => rng.random_range(1..=16),
            1 => rng.random_range(1..=300),
            2 => rng.random_range(1..=9000),
            3 => rng.random_range(1..=max_len),
            _ => max_len - rng.random_range(0..8), // the largest, with ragged ends
        };
        let address = base + rng.random_range(0..span - len as u64);
        let at = address as usize;
        match rng.random_range(0..3) {
            0 => {
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                ep.write(address, &data)
                    .unwrap_or_else(|e| panic!("round {round}: write {len} at {address:#x}: {e}"));
                shadow[at..at + len].copy_from_slice(&data);
            }
            1 => {
                let mut buf = vec![0u8; len];
                ep.read(address, &mut buf)
                    .unwrap_or_else(|e| panic!("round {round}: read {len} at {address:#x}: {e}"));
                assert!(
                    buf == shadow[at..at + len],
                    "round {round}: read of {len} bytes at {address:#x} differs from the shadow"
                );
            }
            _ => {
                let width = [1u8, 2, 4, 8][rng.random_range(0..4)];
                let a = address & !(u64::from(width) - 1);
                let op = ALL_OPS[rng.random_range(0..ALL_OPS.len())];
                let v = operand(&mut rng);
                let old = ep
                    .atomic(a, op, width, v)
                    .unwrap_or_else(|e| panic!("round {round}: {op:?}/{width} at {a:#x}: {e}"));
                let expected = shadow_atomic(shadow, a as usize, op, width, v);
                assert_eq!(
                    old, expected,
                    "round {round}: {op:?} width {width} at {a:#x} returns the old value"
                );
            }
        }
    }
}

/// Reads `[base, base + span)` in one request and compares it with the shadow.
fn check_all(ep: &Endpoint, shadow: &[u8], base: u64, span: u64) {
    let mut all = vec![0u8; span as usize];
    ep.read(base, &mut all).unwrap();
    assert!(
        all == shadow[base as usize..(base + span) as usize],
        "the node's memory differs from the shadow"
    );
}

#[test]
fn random_reads_writes_and_atomics_match_a_shadow_over_udp() {
    const CAP: u64 = 2 << 20;
    for (max_datagram, seed) in [(8192, 11), (65_000, 12)] {
        let (server, addr, _) = start_node(CAP, max_datagram, vec![open(CAP)], None);
        let ep = connect(addr, options(max_datagram));
        let mut shadow = vec![0u8; CAP as usize];
        random_workload(&ep, &mut shadow, seed, 300, 0, CAP, 200 << 10);
        // Every atomic op at every width, at both signed edges, at one fixed place each.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (i, op) in ALL_OPS.iter().enumerate() {
            for width in [1u8, 2, 4, 8] {
                for v in [0x80u64 << (8 * (width - 1)), 1, u64::MAX, 0] {
                    let a = 0x1000 + 64 * i as u64 + 8 * u64::from(width.trailing_zeros());
                    let seedv: u64 = rng.random();
                    ep.write(a, &seedv.to_le_bytes()[..usize::from(width)])
                        .unwrap();
                    shadow[a as usize..a as usize + usize::from(width)]
                        .copy_from_slice(&seedv.to_le_bytes()[..usize::from(width)]);
                    let old = ep.atomic(a, *op, width, v).unwrap();
                    assert_eq!(old, shadow_atomic(&mut shadow, a as usize, *op, width, v));
                }
            }
        }
        // Signed minimum and maximum, through the typed helpers.
        ep.write(0x2000, &(-5i64).to_le_bytes()).unwrap();
        assert_eq!(ep.fetch_max(0x2000, 3).unwrap(), -5);
        assert_eq!(ep.fetch_min(0x2000, -7).unwrap(), 3);
        assert_eq!(ep.fetch_add(0x2000, 0).unwrap(), (-7i64) as u64);
        shadow[0x2000..0x2008].copy_from_slice(&(-7i64).to_le_bytes());
        check_all(&ep, &shadow, 0, CAP);
        let stats = &server.engines()[0].stats();
        println!(
            "max_datagram {max_datagram}: node frames in {} out {} refused {}",
            stats.frames_received.load(Relaxed),
            stats.frames_sent.load(Relaxed),
            stats.frames_refused.load(Relaxed)
        );
        assert_eq!(stats.frames_refused.load(Relaxed), 0);
        drop(ep);
        server.shutdown().unwrap();
    }
}

#[test]
fn unaligned_and_odd_transfers_at_every_alignment() {
    const CAP: u64 = 1 << 20;
    for max_datagram in [8192, 65_000] {
        let (server, addr, _) = start_node(CAP, max_datagram, vec![open(CAP)], None);
        let ep = connect(addr, options(max_datagram));
        let mut shadow = vec![0u8; CAP as usize];
        let mut rng = ChaCha8Rng::seed_from_u64(max_datagram as u64);
        let lens = [
            1usize,
            2,
            3,
            5,
            7,
            9,
            15,
            17,
            63,
            65,
            511,
            513,
            4095,
            4097,
            8191,
            65_537,
            200 << 10,
        ];
        for (k, &len) in lens.iter().enumerate() {
            for misalign in [0u64, 1, 3, 7, 8, 13, 63] {
                let address = 0x1_0000 + k as u64 * 7 + misalign;
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                ep.write(address, &data).unwrap();
                shadow[address as usize..address as usize + len].copy_from_slice(&data);
                // Read back shifted by one on each side, so the edges are checked too.
                let (from, n) = (address - 1, len + 2);
                let mut back = vec![0u8; n];
                ep.read(from, &mut back).unwrap();
                assert!(
                    back == shadow[from as usize..from as usize + n],
                    "len {len} at {address:#x} (datagram {max_datagram})"
                );
            }
        }
        drop(ep);
        server.shutdown().unwrap();
    }
}

#[test]
fn accesses_outside_the_grants_are_denied_at_the_first_address() {
    const CAP: u64 = 1 << 20;
    let window = Window {
        base: 0x1_0000,
        len: 0x1_0000,
    };
    let (server, addr, _) =
        start_node(CAP, 8192, vec![Grant::any(window, Access::ReadWrite)], None);
    // Another client's own socket, and a grant meant only for it.
    let other = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), udp(8192)).unwrap();
    let other_addr = other.local_addr();
    let private = Window {
        base: 0x4_0000,
        len: 0x1000,
    };
    server
        .executor()
        .lock()
        .unwrap()
        .grants_mut()
        .add(Grant::peer(other_addr, private, Access::ReadWrite))
        .unwrap();

    let ep = connect(addr, options(8192));
    let inside: Vec<u8> = (0..0x1_0000u32).map(|i| (i * 13 + 1) as u8).collect();
    ep.write(window.base, &inside).unwrap();

    let read_denied = |address: u64, len: usize, first: u64| {
        let mut buf = vec![0xa5u8; len];
        assert_eq!(
            ep.read(address, &mut buf),
            Err(Error::Denied { address: first }),
            "read of {len} at {address:#x}"
        );
        assert!(
            buf.iter().all(|&b| b == 0xa5),
            "a denied read leaves the buffer untouched"
        );
    };
    read_denied(0, 8, 0);
    read_denied(0x800, 64, 0x800);
    read_denied(0xfff3, 100, 0xfff3); // straddles the start: the first byte is refused
    read_denied(0x1ff81, 300, 0x2_0000); // straddles the end: the window's end is refused
    read_denied(0xf000, 0x3_0000, 0xf000); // covers the whole window and more
    read_denied(0x2_0000, 200 << 10, 0x2_0000);
    read_denied(CAP + 0x100, 16, CAP + 0x100); // beyond the node's memory
    read_denied(private.base, 64, private.base); // another peer's grant

    assert_eq!(
        ep.write(0x3_0000, &[1; 8]),
        Err(Error::Denied { address: 0x3_0000 })
    );
    assert_eq!(
        ep.write(0x1fffd, &[2; 40]),
        Err(Error::Denied { address: 0x2_0000 })
    );
    assert_eq!(
        ep.write(private.base + 5, &[3; 5]),
        Err(Error::Denied {
            address: private.base + 5
        })
    );
    for op in ALL_OPS {
        for width in [1u8, 2, 4, 8] {
            for a in [0x8u64, 0x2_0000, private.base, CAP] {
                assert_eq!(
                    ep.atomic(a, op, width, 1),
                    Err(Error::Denied { address: a }),
                    "{op:?} width {width} at {a:#x}"
                );
            }
        }
    }
    // The window still holds what was written: the denied parts touched nothing inside,
    // except the in-window bytes of the straddling write above.
    let mut back = vec![0u8; inside.len()];
    ep.read(window.base, &mut back).unwrap();
    assert_eq!(back[..0xfffd], inside[..0xfffd]);
    // The peer the private grant names can use it; the open window is still there for it.
    let owner = Endpoint::with_transport(other, PeerAddr::Udp(addr), options(8192)).unwrap();
    owner.write(private.base, &[9; 64]).unwrap();
    let mut buf = [0u8; 64];
    owner.read(private.base, &mut buf).unwrap();
    assert_eq!(buf, [9; 64]);
    assert_eq!(
        ep.read(private.base, &mut buf),
        Err(Error::Denied {
            address: private.base
        })
    );
    let denied = server.executor().lock().unwrap().counters().denied.total();
    println!("node counted {denied} denied requests");
    assert!(denied > 40);
}

#[test]
fn four_endpoints_hammer_disjoint_and_shared_regions() {
    const CAP: u64 = 5 << 20;
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 150;
    let (server, addr, _) = start_node(CAP, 8192, vec![open(CAP)], None);
    // Shared counters: word i gets 1 from every thread every round, word 8 gets t + 1.
    let counters = 0x100u64;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let ep = connect(addr, options(8192));
                let mut rng = ChaCha8Rng::seed_from_u64(100 + t);
                let region = 0x10_0000 * (t + 1);
                let mut shadow = vec![0u8; 0x10_0000];
                for i in 0..ROUNDS {
                    ep.fetch_add(counters + 8 * (i % 8), 1).unwrap();
                    ep.atomic(counters + 64, AtomicOp::Add, 8, t + 1).unwrap();
                    let len = rng.random_range(1..20_000usize);
                    let off = rng.random_range(0..0x10_0000 - len);
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    ep.write(region + off as u64, &data).unwrap();
                    shadow[off..off + len].copy_from_slice(&data);
                    let len = rng.random_range(1..20_000usize);
                    let off = rng.random_range(0..0x10_0000 - len);
                    let mut buf = vec![0u8; len];
                    ep.read(region + off as u64, &mut buf).unwrap();
                    assert!(buf == shadow[off..off + len], "thread {t} round {i}");
                }
                let mut all = vec![0u8; shadow.len()];
                ep.read(region, &mut all).unwrap();
                assert!(all == shadow, "thread {t}: its region");
            });
        }
    });
    let ep = connect(addr, options(8192));
    let mut total = 0;
    for w in 0..8 {
        let v = ep.fetch_add(counters + 8 * w, 0).unwrap();
        assert_eq!(v, THREADS * (ROUNDS / 8 + u64::from(w < ROUNDS % 8)));
        total += v;
    }
    assert_eq!(
        total,
        THREADS * ROUNDS,
        "every fetch_add counted exactly once"
    );
    assert_eq!(
        ep.fetch_add(counters + 64, 0).unwrap(),
        ROUNDS * (1..=THREADS).sum::<u64>()
    );
    assert_eq!(
        server.engines()[0].stats().peers.load(Relaxed),
        THREADS + 1,
        "one connection per endpoint"
    );
}

#[test]
fn loss_duplication_and_reordering_on_both_sides_change_nothing() {
    const CAP: u64 = 1 << 20;
    for (max_datagram, seed) in [(8192u64, 3u64), (65_000, 4)] {
        let max_datagram = max_datagram as usize;
        let spec = |seed: u64| -> FaultConfig {
            format!("loss=0.05,dup=0.05,reorder=0.05,seed={seed}")
                .parse()
                .unwrap()
        };
        let (server, addr, node_faults) =
            start_node(CAP, max_datagram, vec![open(CAP)], Some(spec(seed)));
        let node_faults = node_faults.unwrap();

        // One client through `options.faults`, as the command line does ...
        let mut faulty = options(max_datagram);
        faulty.faults = Some(spec(seed + 100));
        faulty.timeout = Duration::from_secs(20);
        let ep = connect(addr, faulty.clone());
        let mut shadow = vec![0u8; CAP as usize];
        random_workload(&ep, &mut shadow, seed, 120, 0, CAP / 2, 64 << 10);
        check_all(&ep, &shadow, 0, CAP / 2);

        // ... and one whose injector we hold, to count its faults.
        let transport =
            UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), udp(max_datagram)).unwrap();
        let injector = FaultInjector::new(transport, spec(seed + 200));
        let client_faults = injector.counters();
        let ep2 = Endpoint::with_transport(injector, PeerAddr::Udp(addr), faulty).unwrap();
        random_workload(&ep2, &mut shadow, seed + 1, 120, CAP / 2, CAP / 2, 64 << 10);
        check_all(&ep2, &shadow, 0, CAP);

        let n = node_faults.snapshot();
        let c = client_faults.snapshot();
        println!("datagram {max_datagram}: node injected {n:?}");
        println!("datagram {max_datagram}: client injected {c:?}");
        for (side, s) in [("node", n), ("client", c)] {
            assert!(s.dropped > 0, "{side} dropped nothing");
            assert!(s.duplicated > 0, "{side} duplicated nothing");
            assert!(s.reordered > 0, "{side} reordered nothing");
        }
        drop((ep, ep2));
        server.shutdown().unwrap();
    }
}

// ---- Malformed datagrams -------------------------------------------------------------------

/// A TLoE frame of `msgs` under `header`, without the CRC trailer.
fn tloe(header: &TloeHeaderRepr, msgs: &[Message<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let mut b = FrameBuilder::new(&mut buf, 8192, ByteOrder::Spec).unwrap();
    for m in msgs {
        b.push(m).unwrap();
    }
    let len = b.finish(header, 0).unwrap();
    buf.truncate(len);
    buf
}

/// Appends the UDP encapsulation's CRC-32 trailer.
fn sealed(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&crc.to_be_bytes());
    frame
}

fn header(frame_type: FrameType, seq: u32) -> TloeHeaderRepr {
    TloeHeaderRepr {
        vc: 0,
        frame_type,
        seq,
        seq_ack: (1 << 22) - 1,
        ack: true,
        credit: None,
    }
}

/// Flips the bits of flit `flit`'s 64-bit word: `f(word) -> word`.
fn patch(mut frame: Vec<u8>, flit: usize, f: impl Fn(u64) -> u64) -> Vec<u8> {
    let range = flit * 8..flit * 8 + 8;
    let word = u64::from_be_bytes(frame[range.clone()].try_into().unwrap());
    frame[range].copy_from_slice(&f(word).to_be_bytes());
    frame
}

/// Datagrams the node must refuse, each with its name. None carries a message that would
/// be executed.
fn malformed(rng: &mut ChaCha8Rng) -> Vec<(String, Vec<u8>)> {
    let open = header(FrameType::Open, 0);
    let get = Message::get(7, 0x1_0040, 6);
    let data = [0x5au8; 16];
    let put = Message::put_full_data(8, 0x1_0000, 4, &data);
    let get_frame = tloe(&open, &[get]); // header, 2 flits of Get, mask
    let put_frame = tloe(&open, &[put]); // header, header + address + 2 data flits, mask
    let last = |f: &Vec<u8>| f.len() / 8 - 1;
    let mut out: Vec<(String, Vec<u8>)> = vec![
        ("empty datagram".into(), vec![]),
        ("3 bytes".into(), vec![1, 2, 3]),
        (
            "header only, sealed".into(),
            sealed(get_frame[..8].to_vec()),
        ),
        (
            "truncated mid-message, sealed".into(),
            sealed(get_frame[..get_frame.len() - 12].to_vec()),
        ),
        (
            "not whole flits, sealed".into(),
            sealed(get_frame[..get_frame.len() - 3].to_vec()),
        ),
        (
            "mask past the end".into(),
            sealed(patch(get_frame.clone(), last(&get_frame), |_| 1 << 40)),
        ),
        (
            "mask inside a message".into(),
            sealed(patch(put_frame.clone(), last(&put_frame), |m| m | 0b10)),
        ),
        (
            "mask on the mask flit".into(),
            sealed(patch(get_frame.clone(), last(&get_frame), |m| {
                m | 1 << (last(&get_frame) - 1)
            })),
        ),
        (
            "data longer than the frame (size 2^12 in a 16-byte put)".into(),
            sealed(patch(put_frame.clone(), 1, |h| {
                h & !(0xf << 48) | (12 << 48)
            })),
        ),
        (
            "get of 2^15 bytes, unaligned".into(),
            sealed(patch(get_frame.clone(), 1, |h| {
                h & !(0xf << 48) | (15 << 48)
            })),
        ),
        (
            "unknown channel 6".into(),
            sealed(patch(get_frame.clone(), 1, |h| h & !(7 << 60) | (6 << 60))),
        ),
        (
            "unknown channel 7".into(),
            sealed(patch(get_frame.clone(), 1, |h| h & !(7 << 60) | (7 << 60))),
        ),
        (
            "reserved opcode 3 on channel D".into(),
            sealed(patch(get_frame.clone(), 1, |h| {
                h & !(0x3f << 57) | (4 << 60) | (3 << 57)
            })),
        ),
        (
            "unaligned address".into(),
            sealed(patch(get_frame.clone(), 2, |a| a | 3)),
        ),
        (
            "reserved frame type".into(),
            sealed(patch(get_frame.clone(), 0, |h| h | 0xf << 57)),
        ),
        ("wrong CRC".into(), {
            let mut f = sealed(get_frame.clone());
            let n = f.len();
            f[n - 1] ^= 1;
            f
        }),
        ("no CRC at all".into(), get_frame.clone()),
        ("corrupted body, old CRC".into(), {
            let mut f = sealed(put_frame.clone());
            f[20] ^= 0x40;
            f
        }),
    ];
    for i in 0..100 {
        let len = rng.random_range(0..2000);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        out.push((format!("garbage {i}"), junk.clone()));
        // Garbage with a valid CRC, whole flits, so the parser gets to see it.
        let flits = rng.random_range(3..100) * 8;
        let junk: Vec<u8> = (0..flits).map(|_| rng.random()).collect();
        // A random frame type might be a valid Open with a random first message; keep the
        // message header's channel invalid so none is ever executed.
        let junk = patch(junk, 1, |h| h | 6 << 60);
        let junk = patch(junk, flits / 8 - 1, |m| m | 1);
        out.push((format!("sealed garbage {i}"), sealed(junk)));
    }
    out
}

/// Sends `frame` from `sock` to the node and returns the first frame it answers that carries
/// an AccessAckData, with its data.
fn ask(sock: &UdpSocket, node: SocketAddr, frame: &[u8]) -> Vec<u8> {
    sock.send_to(frame, node).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let (body, trailer) = buf[..n].split_at(n - 4);
        assert_eq!(
            crc32fast::hash(body).to_be_bytes(),
            trailer,
            "the node seals its frames"
        );
        let frame = TloeFrame::new_checked(body).unwrap();
        for msg in frame.messages(ByteOrder::Spec) {
            let msg = msg.unwrap();
            if msg.channel == Channel::D && msg.op == Op::AccessAckData {
                let oxmem_wire::Payload::Data(d) = msg.payload else {
                    panic!("AccessAckData without data")
                };
                return d.to_vec();
            }
        }
    }
    panic!("the node did not answer a valid Get")
}

#[test]
fn malformed_datagrams_are_refused_and_the_node_keeps_serving() {
    const CAP: u64 = 1 << 20;
    let (server, addr, _) = start_node(CAP, 8192, vec![open(CAP)], None);
    let ep = connect(addr, options(8192));
    let pattern: Vec<u8> = (0..0x1_0000u32).map(|i| (i * 31 + 7) as u8).collect();
    ep.write(0x1_0000, &pattern).unwrap();
    let stats = server.engines()[0].stats().clone();
    let received_before = stats.frames_received.load(Relaxed);
    let refused_before = stats.frames_refused.load(Relaxed);
    let written_before = server.executor().lock().unwrap().counters().bytes_written;

    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let bad = malformed(&mut rng);
    let blaster = UdpSocket::bind("127.0.0.1:0").unwrap();
    blaster
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // A well-behaved client keeps working while the bad datagrams arrive.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let served = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut rounds = 0u64;
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            while !stop.load(Relaxed) || rounds < 20 {
                let off = rng.random_range(0..0x1_0000 - 3000usize);
                let len = rng.random_range(1..3000usize);
                let mut buf = vec![0u8; len];
                ep.read(0x1_0000 + off as u64, &mut buf).unwrap();
                assert!(buf == pattern[off..off + len]);
                ep.fetch_add(0x100, 1).unwrap();
                rounds += 1;
            }
            rounds
        });
        for _ in 0..3 {
            for (k, (name, frame)) in bad.iter().enumerate() {
                if k % 16 == 15 {
                    // Keep within the node's socket buffer, which the kernel may cap low.
                    std::thread::sleep(Duration::from_millis(1));
                }
                blaster
                    .send_to(frame, addr)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Relaxed);
        worker.join().unwrap()
    });
    assert_eq!(ep.fetch_add(0x100, 0).unwrap(), served);

    // The plain socket can still open a connection with a well-formed frame and read.
    let get = Message::get(9, 0x1_0000 + 64, 6);
    let answer = ask(
        &blaster,
        addr,
        &sealed(tloe(&header(FrameType::Open, 0), &[get])),
    );
    assert_eq!(answer, pattern[64..128]);
    // After it: bad frames on an open connection are refused just the same.
    for (_, frame) in bad.iter().take(20) {
        blaster.send_to(frame, addr).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    ep.read(0x1_0000, &mut buf).unwrap();
    assert_eq!(buf, pattern[..4096]);

    // Every bad datagram but the empty one is a frame the link refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    let expected = 3 * (bad.len() as u64 - 1) + 19;
    loop {
        let refused = stats.frames_refused.load(Relaxed) - refused_before;
        let received = stats.frames_received.load(Relaxed) - received_before;
        if refused >= expected || Instant::now() > deadline {
            println!(
                "sent {} bad datagrams; node received {received} frames, refused {refused}; \
                 the client did {served} rounds meanwhile",
                3 * bad.len() + 20
            );
            assert!(refused >= expected, "refused {refused} < {expected}");
            assert!(received >= expected + served);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let written = server.executor().lock().unwrap().counters().bytes_written;
    assert_eq!(
        written - written_before,
        8 * (served + 1),
        "no bad frame wrote anything: only the client's fetch_adds did"
    );
}

#[test]
fn a_node_that_goes_away_fails_requests_within_the_timeout() {
    const CAP: u64 = 1 << 20;
    let timeout = Duration::from_millis(1500);
    let (server, addr, _) = start_node(CAP, 8192, vec![open(CAP)], None);
    let opts = EndpointOptions {
        timeout,
        ..options(8192)
    };
    let ep = connect(addr, opts);
    let data = vec![0x77u8; 150 << 10];
    let (tx, rx) = std::sync::mpsc::channel();
    let failure = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut buf = vec![0u8; data.len()];
            for i in 0u64.. {
                let started = Instant::now();
                let r = if i % 2 == 0 {
                    ep.write(0, &data)
                } else {
                    ep.read(0, &mut buf)
                };
                if let Err(e) = r {
                    return (i, e, started.elapsed());
                }
                if i == 10 {
                    tx.send(()).unwrap();
                }
            }
            unreachable!()
        });
        rx.recv().unwrap();
        server.shutdown().unwrap();
        worker.join().unwrap()
    });
    let (i, e, took) = failure;
    println!("request {i} after the node stopped: {e:?} after {took:?}");
    assert!(
        matches!(e, Error::Timeout | Error::LinkFailed(_)),
        "unexpected error {e:?}"
    );
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
    // Later requests fail as fast, they never hang.
    for _ in 0..3 {
        let started = Instant::now();
        let e = ep.fetch_add(0, 1).unwrap_err();
        assert!(
            matches!(e, Error::Timeout | Error::LinkFailed(_)),
            "unexpected error {e:?}"
        );
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
    }
    // And a new endpoint cannot connect to nothing.
    let started = Instant::now();
    let opts = EndpointOptions {
        connect_timeout: Duration::from_millis(500),
        ..options(8192)
    };
    assert_eq!(
        Endpoint::connect(&Target::Udp(addr), opts).unwrap_err(),
        Error::Timeout
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The list above really is malformed: a fresh accepting link refuses every datagram of it
/// (so the node test's counts mean what they say).
#[test]
fn every_malformed_datagram_is_refused_by_a_fresh_link() {
    use oxmem_link::{Config, Connection, Instant as LinkInstant};
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let now = LinkInstant::from_nanos(0);
    for (name, frame) in malformed(&mut rng) {
        let mut link = Connection::accept(Config::udp(8188), now);
        assert!(link.handle_frame(now, &frame).is_err(), "{name} was taken");
        assert_eq!(link.variant(), None, "{name} opened a connection");
    }
}

#[test]
fn sequential_clients_do_not_use_up_the_node_peer_table() {
    const CAP: u64 = 1 << 20;
    let mut exec = Executor::new(Arena::new(CAP).unwrap());
    exec.grants_mut().add(open(CAP)).unwrap();
    let mut server = NodeServer::new(exec);
    let transport = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), udp(8192)).unwrap();
    let config = EngineConfig {
        max_peers: 4,
        ..EngineConfig::default()
    };
    let PeerAddr::Udp(addr) = server.serve(transport, config).unwrap() else {
        unreachable!()
    };
    for i in 0..8u64 {
        let opts = EndpointOptions {
            connect_timeout: Duration::from_secs(5),
            ..options(8192)
        };
        let ep = Endpoint::connect(&Target::Udp(addr), opts)
            .unwrap_or_else(|e| panic!("client {i} of 8 (node takes 4 at once): {e}"));
        ep.fetch_add(0, 1).unwrap();
        drop(ep);
    }
    assert_eq!(server.engines()[0].stats().peers_refused.load(Relaxed), 0);
}

/// A UDP transport that can be silenced, as if its process had died: afterwards it sends
/// nothing and drops everything it receives.
#[derive(Debug)]
struct Silenceable {
    inner: UdpTransport,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl Transport for Silenceable {
    fn link_params(&self) -> oxmem_net::LinkParams {
        self.inner.link_params()
    }
    fn local_addr(&self) -> PeerAddr {
        self.inner.local_addr()
    }
    fn send(&mut self, frames: &[(PeerAddr, &[u8])]) -> std::io::Result<usize> {
        if self.dead.load(Relaxed) {
            return Ok(frames.len());
        }
        self.inner.send(frames)
    }
    fn recv(&mut self, batch: &mut oxmem_net::RecvBatch) -> std::io::Result<usize> {
        let n = self.inner.recv(batch)?;
        if self.dead.load(Relaxed) {
            batch.clear();
            return Ok(0);
        }
        Ok(n)
    }
    fn wait(&mut self, waker: &oxmem_net::Waker, timeout: Option<Duration>) -> std::io::Result<()> {
        self.inner.wait(waker, timeout)
    }
}

/// A client bound to `port` (0: any), through a transport that `dead` silences.
fn client_on(
    node: SocketAddr,
    port: u16,
    dead: &Arc<std::sync::atomic::AtomicBool>,
    connect_timeout: Duration,
) -> Result<(Endpoint, SocketAddr), Error> {
    let inner = UdpTransport::bind_with(SocketAddr::from(([127, 0, 0, 1], port)), udp(8192))?;
    let local = inner.local_socket_addr();
    let transport = Silenceable {
        inner,
        dead: dead.clone(),
    };
    let opts = EndpointOptions {
        connect_timeout,
        timeout: Duration::from_secs(3),
        ..options(8192)
    };
    Ok((
        Endpoint::with_transport(transport, PeerAddr::Udp(node), opts)?,
        local,
    ))
}

/// On raw Ethernet a host has one address (its MAC), so every client process on it reaches
/// the node from the same peer address; over UDP the same happens when a client binds a fixed
/// port. A client that starts after another one left must be able to connect.
#[test]
fn a_client_restarted_on_the_same_address_connects_again() {
    const CAP: u64 = 1 << 20;
    let (server, addr, _) = start_node(CAP, 8192, vec![open(CAP)], None);
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (first, local) = client_on(addr, 0, &alive, Duration::from_secs(3)).unwrap();
    first.write(0x40, &[1, 2, 3]).unwrap();
    drop(first); // a clean exit

    let started = Instant::now();
    let (second, _) = client_on(addr, local.port(), &alive, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("a second client from {local} after a clean exit: {e}"));
    println!(
        "second client from {local} connected after {:?}",
        started.elapsed()
    );
    let mut buf = [0u8; 3];
    second.read(0x40, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3]);
    drop(second);
    drop(server);
}

/// As above, but the first client dies without a word (a crash, a kill -9, a pulled cable):
/// the node must not lock its address out for good.
#[test]
fn a_client_that_died_silently_does_not_lock_its_address_out() {
    const CAP: u64 = 1 << 20;
    let (server, addr, _) = start_node(CAP, 8192, vec![open(CAP)], None);
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (first, local) = client_on(addr, 0, &dead, Duration::from_secs(3)).unwrap();
    first.write(0x40, &[4, 5, 6]).unwrap();
    // Idle long enough for every acknowledgement to have gone both ways.
    std::thread::sleep(Duration::from_millis(300));
    dead.store(true, Relaxed);
    drop(first);

    let alive = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let (second, _) =
        client_on(addr, local.port(), &alive, Duration::from_secs(8)).unwrap_or_else(|e| {
            panic!(
                "a second client from {local} after the first died: {e} after {:?}",
                started.elapsed()
            )
        });
    println!(
        "second client from {local} connected after {:?}",
        started.elapsed()
    );
    let mut buf = [0u8; 3];
    second.read(0x40, &mut buf).unwrap();
    assert_eq!(buf, [4, 5, 6]);
    drop(second);
    drop(server);
}

/// A frame the kernel refuses to send (here: to the broadcast address from a socket without
/// SO_BROADCAST, as a partition's "network unreachable" would) is dropped like a lost frame;
/// the engine keeps serving every other peer. (It used to end the engine thread: a node
/// whose interface went down for a moment never served again.)
#[test]
fn a_send_the_kernel_refuses_does_not_stop_the_engine() {
    let (_node, addr, _) = start_node(1 << 20, 65000, vec![open(1 << 20)], None);
    let client = oxmem_client::Client::udp_at(
        "127.0.0.1:0".parse().unwrap(),
        oxmem_client::ClientOptions {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(300),
            ..oxmem_client::ClientOptions::default()
        },
    )
    .expect("client");
    let unreachable = PeerAddr::Udp("255.255.255.255:9".parse().unwrap());
    let r = client.connect(unreachable, oxmem_client::NodeOptions::default());
    assert!(r.is_err(), "connected to the broadcast address: {r:?}");
    let node = PeerAddr::Udp(addr);
    client
        .connect(node, oxmem_client::NodeOptions::default())
        .expect("the engine still connects to a real node");
    client.write(node, 64, b"still serving").expect("write");
    let mut back = [0u8; 13];
    client.read(node, 64, &mut back).expect("read");
    assert_eq!(&back, b"still serving");
    let errors = client.engine_stats().send_errors.load(Relaxed);
    assert!(errors >= 1, "the refused sends are counted ({errors})");
}
