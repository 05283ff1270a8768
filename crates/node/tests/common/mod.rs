//! Helpers shared by the executor tests.
#![allow(dead_code)]

use std::net::SocketAddr;

use oxmem_node::{Access, Arena, Executor, Grant, Window};
use oxmem_wire::{ByteOrder, Channel, Message, Op, Payload};

pub type Peer = SocketAddr;

/// Peer number `n` (a UDP address, as the engine would give).
pub fn peer(n: u8) -> Peer {
    SocketAddr::from(([10, 0, 0, n], 7447))
}

/// A response, owned, after an encode/parse round trip through the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub channel: Channel,
    pub op: Op,
    pub param: u8,
    pub size: u8,
    pub source: u32,
    pub sink: u32,
    pub denied: bool,
    pub corrupt: bool,
    /// Data beats in memory order, when the response carries data.
    pub data: Option<Vec<u8>>,
}

impl Reply {
    pub fn data(&self) -> &[u8] {
        self.data.as_deref().expect("response carries data")
    }
}

/// An executor over `capacity` bytes with no grants.
pub fn executor(capacity: u64) -> Executor<Peer> {
    Executor::new(Arena::new(capacity).expect("map arena"))
}

/// An executor over `capacity` bytes whose whole arena is open to everyone, read-write.
pub fn open_executor(capacity: u64) -> Executor<Peer> {
    let mut exec = executor(capacity);
    exec.grants_mut()
        .add(Grant::any(
            Window {
                base: 0,
                len: capacity,
            },
            Access::ReadWrite,
        ))
        .expect("grant");
    exec
}

/// Runs `request` through `Executor::execute`, encodes the response in spec byte order, parses
/// it back and returns it owned. Fails the test if a response does not encode.
pub fn run(exec: &mut Executor<Peer>, peer: &Peer, request: &Message<'_>) -> Option<Reply> {
    let mut out = None;
    exec.execute(peer, request, &mut |msg: Message<'_>| {
        assert!(out.is_none(), "one response per request");
        let mut buf = vec![0u8; msg.buffer_len()];
        let n = msg
            .emit(&mut buf, ByteOrder::Spec)
            .expect("response encodes");
        let parsed = Message::parse(&buf[..n], ByteOrder::Spec).expect("response parses");
        assert_eq!(parsed, msg, "response survives the wire");
        out = Some(Reply {
            channel: parsed.channel,
            op: parsed.op,
            param: parsed.param,
            size: parsed.size,
            source: parsed.source,
            sink: parsed.sink,
            denied: parsed.denied,
            corrupt: parsed.corrupt,
            data: match parsed.payload {
                Payload::Data(d) => Some(d.to_vec()),
                _ => None,
            },
        });
    });
    out
}

/// As [`run`], for requests that must be answered.
pub fn answer(exec: &mut Executor<Peer>, peer: &Peer, request: &Message<'_>) -> Reply {
    run(exec, peer, request).expect("a response")
}

/// A Get of `2^size` bytes; returns the response.
pub fn get(exec: &mut Executor<Peer>, peer: &Peer, address: u64, size: u8) -> Reply {
    answer(exec, peer, &Message::get(7, address, size))
}

/// The data of a successful Get: the active bytes only (lanes stripped).
pub fn read(exec: &mut Executor<Peer>, peer: &Peer, address: u64, size: u8) -> Vec<u8> {
    let reply = get(exec, peer, address, size);
    assert!(!reply.denied, "get denied: {reply:?}");
    let n = 1usize << size;
    let lane = if size < 3 { (address % 8) as usize } else { 0 };
    reply.data()[lane..lane + n].to_vec()
}

/// The beat of a sub-8-byte message carrying `bytes` in the lanes of `address`.
pub fn beat(address: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 8.max(bytes.len())];
    let lane = if bytes.len() < 8 {
        (address % 8) as usize
    } else {
        0
    };
    v[lane..lane + bytes.len()].copy_from_slice(bytes);
    v
}

/// A PutFullData of `bytes` (length a power of two) at `address`; returns the response.
pub fn put(exec: &mut Executor<Peer>, peer: &Peer, address: u64, bytes: &[u8]) -> Reply {
    let size = bytes.len().trailing_zeros() as u8;
    let data = beat(address, bytes);
    answer(exec, peer, &Message::put_full_data(9, address, size, &data))
}
