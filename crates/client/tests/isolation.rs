//! Tenant isolation on one memory node: peers without a grant, or with grants to other
//! ranges, send every channel A request TileLink has (every opcode, every param) at many
//! addresses and sizes, through a hand-driven 1.1 link over a plain UDP socket. Every answer
//! must be `denied`, no answer may carry a byte of the granted peer's memory, and that memory
//! must be unchanged afterwards. Requests the codec refuses (unaligned addresses, params
//! beyond the defined ones) are sent as hand-built frames and must be dropped unanswered.
//!
//! Freed memory reading as zeros for the next tenant is covered by `crates/cli/tests/pool_e2e.rs`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use oxmem_client::{Endpoint, EndpointOptions};
use oxmem_link::{Config, Connection, Event, HeaderVariant, Instant as LinkInstant, Received};
use oxmem_net::engine::EngineConfig;
use oxmem_net::udp::{UdpConfig, UdpTransport};
use oxmem_net::{PeerAddr, Transport};
use oxmem_node::{Access, Arena, Executor, Grant, NodeServer, Window};
use oxmem_wire::{
    ArithmeticParam, ByteOrder, Channel, FrameBuilder, FrameType, IntentParam, LogicalParam,
    Message, Op, Payload, TloeHeaderRepr,
};

const CAP: u64 = 1 << 20;
/// The victim's read-write grant.
const VICTIM: Window = Window {
    base: 0x4_0000,
    len: 0x1_0000,
};
/// The victim's read-only grant.
const VICTIM_RO: Window = Window {
    base: 0x8_0000,
    len: 0x1000,
};
/// The second attacker's own grant (it may use it; it must not reach past it).
const OWN: Window = Window {
    base: 0x1_0000,
    len: 0x1_0000,
};
/// The bytes attackers try to write.
const ATTACK_BYTE: u8 = 0xee;

/// The victim's sentinel: never zero, so any leaked byte shows.
fn sentinel(address: u64) -> u8 {
    (address % 251) as u8 + 1
}

/// A 1.1 link driven by hand over a plain UDP socket: the client side of a connection,
/// acknowledging and returning credits as `oxmem_link::Connection` does.
struct RawPeer {
    sock: UdpSocket,
    node: SocketAddr,
    conn: Connection,
    epoch: Instant,
    buf: Vec<u8>,
    received: Vec<Received>,
}

impl RawPeer {
    fn connect(sock: UdpSocket, node: SocketAddr) -> RawPeer {
        sock.set_nonblocking(true).unwrap();
        let epoch = Instant::now();
        let conn = Connection::connect(
            Config::udp(65_000 - 4),
            HeaderVariant::V1_1,
            LinkInstant::from_nanos(0),
        );
        let mut peer = RawPeer {
            sock,
            node,
            conn,
            epoch,
            buf: vec![0u8; 65_536],
            received: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut connected = false;
        while !connected {
            assert!(Instant::now() < deadline, "the node did not open the link");
            peer.turn();
            connected = peer.conn.variant() == Some(HeaderVariant::V1_1)
                && peer.conn.state() == oxmem_link::State::Open;
        }
        peer
    }

    fn now(&self) -> LinkInstant {
        LinkInstant::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// One round: send what the link wants to send, take what arrived, fire timers.
    fn turn(&mut self) {
        let now = self.now();
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        while let Some(n) = self.conn.poll_transmit(now, &mut self.buf) {
            // A full socket buffer loses the frame; go-back-N sends it again.
            let _ = self.sock.send_to(&self.buf[..n], self.node);
        }
        let mut got = false;
        while let Ok((n, from)) = self.sock.recv_from(&mut self.buf) {
            assert_eq!(from, self.node);
            let now = self.now();
            let _ = self.conn.handle_frame(now, &self.buf[..n]);
            got = true;
        }
        while let Some(e) = self.conn.poll_event() {
            match e {
                Event::Message(m) => self.received.push(m),
                Event::Failed(e) => panic!("the link failed: {e:?}"),
                Event::Connected(_) | Event::Closed => {}
            }
        }
        if !got {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Sends `msgs` (source ids must be distinct) and returns one answer per request, in
    /// request order.
    fn ask(&mut self, msgs: &[Message<'_>]) -> Vec<Received> {
        for m in msgs {
            self.conn
                .send(m)
                .unwrap_or_else(|e| panic!("the link refused {m:?}: {e:?}"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.received.len() < msgs.len() {
            assert!(
                Instant::now() < deadline,
                "{} of {} requests unanswered",
                msgs.len() - self.received.len(),
                msgs.len()
            );
            self.turn();
        }
        let mut answers = std::mem::take(&mut self.received);
        assert_eq!(answers.len(), msgs.len(), "one answer per request");
        answers.sort_by_key(|r| r.message().source);
        answers
    }

    fn close(mut self) {
        self.conn.close();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.conn.state() != oxmem_link::State::Closed && Instant::now() < deadline {
            self.turn();
        }
    }
}

/// Every channel A request the codec can encode, for `size` at `address`, with payloads of
/// `ATTACK_BYTE` (masks fully enabled).
fn every_request<'a>(address: u64, size: u8, data: &'a [u8], mask: &'a [u8]) -> Vec<Message<'a>> {
    let beats = oxmem_wire::data_beats(size) * 8;
    let mask_len = oxmem_wire::mask_flits(size) * 8;
    let data = &data[..beats];
    let mask = &mask[..mask_len];
    let mut out = vec![
        Message::get(0, address, size),
        Message::put_full_data(0, address, size, data),
        Message::put_partial_data(0, address, size, data, mask),
        Message::intent(0, address, size, IntentParam::PrefetchRead),
        Message::intent(0, address, size, IntentParam::PrefetchWrite),
    ];
    for p in [
        ArithmeticParam::Min,
        ArithmeticParam::Max,
        ArithmeticParam::MinU,
        ArithmeticParam::MaxU,
        ArithmeticParam::Add,
    ] {
        out.push(Message::arithmetic(0, address, size, p, data));
    }
    for p in [
        LogicalParam::Xor,
        LogicalParam::Or,
        LogicalParam::And,
        LogicalParam::Swap,
    ] {
        out.push(Message::logical(0, address, size, p, data));
    }
    for op in [Op::AcquireBlock, Op::AcquirePerm] {
        for param in 0..=op.max_param() {
            out.push(Message {
                op,
                param,
                ..Message::get(0, address, size)
            });
        }
    }
    out
}

/// The addresses to try for `size`, aligned down to it (the codec refuses unaligned ones).
fn addresses(size: u8) -> Vec<u64> {
    let n = 1u64 << size;
    let raw = [
        0,
        n,
        VICTIM.base.wrapping_sub(n),
        VICTIM.base.wrapping_sub(n / 2),
        VICTIM.base.wrapping_sub(1),
        VICTIM.base,
        VICTIM.base + 8,
        VICTIM.base + VICTIM.len / 2,
        VICTIM.base + VICTIM.len - n,
        VICTIM.base + VICTIM.len - 1,
        VICTIM.base + VICTIM.len,
        VICTIM_RO.base,
        VICTIM_RO.base + VICTIM_RO.len - n,
        OWN.base + OWN.len - n / 2, // straddles the end of the attacker's own grant
        OWN.base + OWN.len,
        OWN.base.wrapping_sub(n / 2), // straddles its start
        CAP - n,
        CAP - 1,
        CAP,
        CAP + n,
        1 << 32,
        1 << 40,
        (1 << 63) + VICTIM.base,
        u64::MAX,
        u64::MAX - VICTIM.len,
    ];
    let mut out: Vec<u64> = raw.iter().map(|a| a & !(n - 1)).collect();
    out.sort_unstable();
    out.dedup();
    // Requests wholly inside the attacker's own grant are allowed: not what this test is about.
    out.retain(|&a| !(a >= OWN.base && a.saturating_add(n) <= OWN.base + OWN.len));
    out
}

/// Checks that `answer` refuses `request` and carries no byte of memory.
fn assert_refused(request: &Message<'_>, answer: &Received, who: &str) {
    let a = answer.message();
    let what = format!(
        "{who}: {:?} param {} size {} at {:#x}",
        request.op, request.param, request.size, request.address
    );
    assert_eq!(a.channel, Channel::D, "{what}");
    assert!(a.denied, "{what} was not denied: {a:?}");
    assert_eq!(a.size, request.size, "{what}");
    let expected_op = match request.op {
        Op::Get | Op::ArithmeticData | Op::LogicalData => Op::AccessAckData,
        Op::PutFullData | Op::PutPartialData => Op::AccessAck,
        Op::Intent => Op::HintAck,
        Op::AcquireBlock => Op::GrantData,
        Op::AcquirePerm => Op::Grant,
        other => panic!("not a channel A request: {other:?}"),
    };
    assert_eq!(a.op, expected_op, "{what}");
    match a.payload {
        Payload::None => {}
        Payload::Data(d) => {
            assert!(a.corrupt, "{what}: denied data is marked corrupt");
            let bytes = d.to_vec();
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{what}: a denied answer carries non-zero bytes"
            );
        }
        Payload::Masked(_) => panic!("{what}: a masked answer"),
    }
}

fn udp(max_datagram: usize) -> UdpConfig {
    UdpConfig {
        max_datagram,
        ..UdpConfig::default()
    }
}

/// Sends every request at every address and size from `peer`; returns how many were sent.
fn attack(peer: &mut RawPeer, who: &str) -> usize {
    let data = vec![ATTACK_BYTE; 1 << 15];
    let mask = vec![0xffu8; 1 << 12];
    let mut sent = 0;
    for size in 0..=15u8 {
        let mut batch: Vec<Message<'_>> = Vec::new();
        for address in addresses(size) {
            batch.extend(every_request(address, size, &data, &mask));
        }
        // Distinct sources so answers can be matched; in chunks that fit the send queue.
        for chunk in batch.chunks_mut(64) {
            for (i, m) in chunk.iter_mut().enumerate() {
                m.source = i as u32;
            }
            let answers = peer.ask(chunk);
            for (m, a) in chunk.iter().zip(&answers) {
                assert_eq!(a.message().source, m.source);
                assert_refused(m, a, who);
            }
            sent += chunk.len();
        }
    }
    sent
}

/// A hand-built 1.1 open frame carrying `msg`, with its message flits patched by `f`, sealed
/// with the UDP CRC trailer.
fn open_frame_patched(msg: &Message<'_>, flit: usize, f: impl Fn(u64) -> u64) -> Vec<u8> {
    let header = TloeHeaderRepr {
        vc: 0,
        frame_type: FrameType::Open,
        seq: 0,
        seq_ack: (1 << 22) - 1,
        ack: true,
        credit: None,
    };
    let mut buf = vec![0u8; 65_000];
    let mut b = FrameBuilder::new(&mut buf, 65_000, ByteOrder::Spec).unwrap();
    b.push(msg).unwrap();
    let len = b.finish(&header, 0).unwrap();
    buf.truncate(len);
    // Flit 0 is the TLoE header; flit 1 the message header; flit 2 its address.
    let range = flit * 8..flit * 8 + 8;
    let word = u64::from_be_bytes(buf[range.clone()].try_into().unwrap());
    buf[range].copy_from_slice(&f(word).to_be_bytes());
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    buf
}

#[test]
fn peers_without_a_grant_get_denied_for_every_request_and_see_no_byte() {
    let started = Instant::now();
    let mut exec = Executor::new(Arena::new(CAP).unwrap());
    {
        let arena = exec.arena_mut();
        for w in [VICTIM, VICTIM_RO] {
            let bytes: Vec<u8> = (w.base..w.base + w.len).map(sentinel).collect();
            arena.write(w.base, &bytes).unwrap();
        }
    }
    let mut server = NodeServer::new(exec);
    let transport = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), udp(65_000)).unwrap();
    let PeerAddr::Udp(node) = server.serve(transport, EngineConfig::default()).unwrap() else {
        unreachable!()
    };

    // The victim, with its grants; an attacker with a grant of its own; one with none.
    let victim = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), udp(65_000)).unwrap();
    let victim_addr = victim.local_addr();
    let own_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let own_addr = PeerAddr::Udp(own_sock.local_addr().unwrap());
    {
        let mut exec = server.executor().lock().unwrap();
        let g = exec.grants_mut();
        g.add(Grant::peer(victim_addr, VICTIM, Access::ReadWrite))
            .unwrap();
        g.add(Grant::peer(victim_addr, VICTIM_RO, Access::Read))
            .unwrap();
        g.add(Grant::peer(own_addr, OWN, Access::ReadWrite))
            .unwrap();
    }
    let victim = Endpoint::with_transport(
        victim,
        PeerAddr::Udp(node),
        EndpointOptions {
            udp: udp(65_000),
            timeout: Duration::from_secs(10),
            ..EndpointOptions::default()
        },
    )
    .unwrap();
    let expected_rw: Vec<u8> = (VICTIM.base..VICTIM.base + VICTIM.len)
        .map(sentinel)
        .collect();
    let expected_ro: Vec<u8> = (VICTIM_RO.base..VICTIM_RO.base + VICTIM_RO.len)
        .map(sentinel)
        .collect();
    // The victim reads its own bytes: the grant works and the sentinel is there.
    let mut back = vec![0u8; VICTIM.len as usize];
    victim.read(VICTIM.base, &mut back).unwrap();
    assert!(back == expected_rw);

    let mut total = 0;
    let nobody = RawPeer::connect(UdpSocket::bind("127.0.0.1:0").unwrap(), node);
    let mut nobody = nobody;
    total += attack(&mut nobody, "no grant");
    nobody.close();
    let mut other = RawPeer::connect(own_sock, node);
    // Its own grant works for it (so the denials above are about the ranges, not the link).
    let put_data = [7u8; 8];
    let own_ok = other.ask(&[
        Message::put_full_data(0, OWN.base, 3, &put_data),
        Message::get(1, OWN.base, 3),
    ]);
    assert!(own_ok.iter().all(|a| !a.message().denied));
    total += attack(&mut other, "other grant");
    other.close();

    // Requests the codec refuses, in hand-built open frames from fresh sockets: dropped, no
    // answer, no connection.
    let stats = server.engines()[0].stats().clone();
    let refused_before = stats.frames_refused.load(Relaxed);
    let data = vec![ATTACK_BYTE; 64];
    let mask = vec![0xffu8; 8];
    let mut bad = Vec::new();
    for size in 1..=6u8 {
        for m in every_request(VICTIM.base, size, &data, &mask) {
            // Unaligned: every offset into the victim's grant that breaks the alignment.
            for off in [1u64, (1 << size) - 1, (1 << size) / 2] {
                if off % (1 << size) != 0 {
                    bad.push(open_frame_patched(&m, 2, |a| a + off));
                }
            }
            // A param beyond the defined ones (bits 55:52).
            if m.op.max_param() < 15 {
                bad.push(open_frame_patched(&m, 1, |h| h | 0xf << 52));
            }
        }
    }
    let socks: Vec<UdpSocket> = (0..bad.len())
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for (s, f) in socks.iter().zip(&bad) {
        s.send_to(f, node).unwrap();
        std::thread::sleep(Duration::from_micros(20));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.frames_refused.load(Relaxed) - refused_before < bad.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "refused {} of {} bad frames",
            stats.frames_refused.load(Relaxed) - refused_before,
            bad.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = [0u8; 65_536];
    for s in &socks {
        s.set_nonblocking(true).unwrap();
        assert!(
            s.recv_from(&mut buf).is_err(),
            "a refused frame was answered"
        );
    }

    // The victim's memory is unchanged, read through the node and directly.
    victim.read(VICTIM.base, &mut back).unwrap();
    assert!(back == expected_rw, "the victim's read-write grant changed");
    let mut back_ro = vec![0u8; VICTIM_RO.len as usize];
    victim.read(VICTIM_RO.base, &mut back_ro).unwrap();
    assert!(
        back_ro == expected_ro,
        "the victim's read-only grant changed"
    );
    let exec = server.executor().lock().unwrap();
    assert!(exec.arena().get(VICTIM.base, VICTIM.len).unwrap() == &expected_rw[..]);
    // Nothing outside the grants was written: only the attacker's own 8 bytes.
    let c = *exec.counters();
    let written = exec.arena().get(0, CAP).unwrap();
    for (a, &b) in written.iter().enumerate() {
        let a = a as u64;
        let in_victim = (VICTIM.base..VICTIM.base + VICTIM.len).contains(&a)
            || (VICTIM_RO.base..VICTIM_RO.base + VICTIM_RO.len).contains(&a);
        let own = (OWN.base..OWN.base + 8).contains(&a);
        let expected = if in_victim {
            sentinel(a)
        } else if own {
            7
        } else {
            0
        };
        assert_eq!(b, expected, "byte at {a:#x}");
    }
    drop(exec);
    println!(
        "{total} requests from peers without a grant for them (every channel A opcode and \
         param, sizes 2^0..2^15, {} codec-refused frames): all denied, no data; node counters \
         {c:?}; took {:?}",
        bad.len(),
        started.elapsed()
    );
    assert_eq!(
        c.bytes_written, 8,
        "only the attacker's write to its own grant"
    );
    assert!(c.denied.total() + c.unsupported >= total as u64);
    drop(victim);
    server.shutdown().unwrap();
}
