//! The client side of the engine: turns requests into TileLink messages, keeps as many in
//! flight as each link allows, and matches responses back to requests by source id.
//!
//! One handler serves every node a client talks to over one transport, so a region striped
//! over many nodes is read through one socket, and a node's grants name one client address.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;

use oxmem_link::{HeaderVariant, Instant, SendError};
use oxmem_net::PeerAddr;
use oxmem_net::engine::{Handler, Outbox, PeerEvent, PeerSettings};
use oxmem_wire::{ArithmeticParam, Channel, LogicalParam, Message, Op, Payload};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::split::{Piece, read_pieces, write_pieces};

/// An atomic operation on 1, 2, 4 or 8 bytes (TileLink ArithmeticData and LogicalData).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicOp {
    Add,
    Min,
    Max,
    MinU,
    MaxU,
    Xor,
    Or,
    And,
    Swap,
}

impl AtomicOp {
    /// The message that applies this operation.
    fn message<'a>(self, source: u32, address: u64, size: u8, beat: &'a [u8]) -> Message<'a> {
        let arithmetic = |p| Message::arithmetic(source, address, size, p, beat);
        let logical = |p| Message::logical(source, address, size, p, beat);
        match self {
            AtomicOp::Add => arithmetic(ArithmeticParam::Add),
            AtomicOp::Min => arithmetic(ArithmeticParam::Min),
            AtomicOp::Max => arithmetic(ArithmeticParam::Max),
            AtomicOp::MinU => arithmetic(ArithmeticParam::MinU),
            AtomicOp::MaxU => arithmetic(ArithmeticParam::MaxU),
            AtomicOp::Xor => logical(LogicalParam::Xor),
            AtomicOp::Or => logical(LogicalParam::Or),
            AtomicOp::And => logical(LogicalParam::And),
            AtomicOp::Swap => logical(LogicalParam::Swap),
        }
    }
}

/// What a request wants.
#[derive(Debug)]
pub(crate) enum Kind {
    /// `into` is the buffer to fill (its length is `len` when the caller supplied one).
    Read {
        len: usize,
        into: Vec<u8>,
    },
    Write {
        data: Vec<u8>,
    },
    Atomic {
        op: AtomicOp,
        width: u8,
        operand: u64,
    },
}

/// A completed request.
#[derive(Debug)]
pub(crate) enum Reply {
    Read(Vec<u8>),
    Write,
    Atomic(u64),
}

pub(crate) type ReplyTx = oneshot::Sender<Result<Reply, Error>>;

/// How to talk to one node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerConfig {
    pub variant: HeaderVariant,
    /// log2 of the largest message.
    pub max_size: u8,
    pub partial_writes: bool,
    pub settings: PeerSettings,
}

/// Work handed to the engine thread.
#[derive(Debug)]
pub(crate) enum Command {
    Connect {
        peer: PeerAddr,
        config: PeerConfig,
        reply: oneshot::Sender<Result<(), Error>>,
        deadline: Instant,
    },
    Submit {
        peer: PeerAddr,
        address: u64,
        kind: Kind,
        deadline: Instant,
        reply: ReplyTx,
    },
    Close {
        peer: PeerAddr,
        reply: std::sync::mpsc::Sender<Result<(), Error>>,
        deadline: Instant,
    },
}

/// A request being served.
#[derive(Debug)]
struct Pending {
    kind: Kind,
    /// Read data, assembled here.
    buf: Vec<u8>,
    /// Pieces not yet answered (sent or waiting to be sent).
    outstanding: usize,
    error: Option<Error>,
    reply: Option<ReplyTx>,
    old_value: u64,
}

/// A piece waiting for a source id and room in the link's queue.
#[derive(Debug, Clone, Copy)]
struct Queued {
    request: u64,
    piece: Piece,
}

/// A piece on the wire.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    request: u64,
    piece: Piece,
    op: Op,
}

/// Everything about one node.
#[derive(Debug)]
struct Peer {
    config: PeerConfig,
    connected: bool,
    dead: Option<Error>,
    connect_waiters: Vec<(oneshot::Sender<Result<(), Error>>, Instant)>,
    close_waiters: Vec<(std::sync::mpsc::Sender<Result<(), Error>>, Instant)>,
    queue: VecDeque<Queued>,
    /// In-flight pieces by source id (each connection has its own source space).
    in_flight: Vec<Option<InFlight>>,
    free: Vec<u32>,
}

impl Peer {
    fn new(config: PeerConfig, max_in_flight: u32) -> Self {
        Peer {
            config,
            connected: false,
            dead: None,
            connect_waiters: Vec::new(),
            close_waiters: Vec::new(),
            queue: VecDeque::new(),
            in_flight: vec![None; max_in_flight as usize],
            free: (0..max_in_flight).rev().collect(),
        }
    }
}

pub(crate) struct ClientHandler {
    max_in_flight: u32,
    commands: Receiver<Command>,
    peers: HashMap<PeerAddr, Peer>,
    next_request: u64,
    requests: HashMap<u64, Pending>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    stats: std::sync::Arc<crate::ClientStats>,
    /// Scratch list for `pump_all`.
    peer_list: Vec<PeerAddr>,
}

impl std::fmt::Debug for ClientHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandler")
            .field("peers", &self.peers.len())
            .field("requests", &self.requests.len())
            .finish()
    }
}

impl ClientHandler {
    pub(crate) fn new(
        max_in_flight: u32,
        commands: Receiver<Command>,
        stats: std::sync::Arc<crate::ClientStats>,
    ) -> Self {
        ClientHandler {
            max_in_flight,
            commands,
            peers: HashMap::new(),
            next_request: 0,
            requests: HashMap::new(),
            deadlines: BinaryHeap::new(),
            stats,
            peer_list: Vec::new(),
        }
    }

    fn submit(
        &mut self,
        peer: PeerAddr,
        address: u64,
        kind: Kind,
        deadline: Instant,
        reply: ReplyTx,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            let _ = reply.send(Err(Error::InvalidRequest("not connected to that node")));
            return;
        };
        if let Some(e) = &p.dead {
            let _ = reply.send(Err(e.clone()));
            return;
        }
        let mut kind = kind;
        let (pieces, buf) = match &mut kind {
            Kind::Read { len, into } => {
                // The caller's own buffer when it gave one: no allocation, no clearing.
                let mut buf = std::mem::take(into);
                buf.resize(*len, 0);
                (read_pieces(address, *len, p.config.max_size), buf)
            }
            Kind::Write { data } => (
                write_pieces(
                    address,
                    data.len(),
                    p.config.max_size,
                    p.config.partial_writes,
                ),
                Vec::new(),
            ),
            Kind::Atomic { width, .. } => {
                let piece = Piece {
                    address,
                    size: width.trailing_zeros() as u8,
                    offset: 0,
                    len: usize::from(*width),
                    skip: (address % 8) as usize,
                    partial: false,
                };
                (vec![piece], Vec::new())
            }
        };
        let id = self.next_request;
        self.next_request += 1;
        for piece in &pieces {
            p.queue.push_back(Queued {
                request: id,
                piece: *piece,
            });
        }
        self.deadlines.push(Reverse((deadline, id)));
        let pending = Pending {
            kind,
            buf,
            outstanding: pieces.len(),
            error: None,
            reply: Some(reply),
            old_value: 0,
        };
        self.requests.insert(id, pending);
    }

    /// Hands queued pieces to every node's link while source ids and queue room last.
    fn pump_all(&mut self, out: &mut Outbox<'_>) {
        // Runs every turn of the engine loop, spinning included: reuse one list of peers
        // instead of allocating a new one each time.
        let mut peers = std::mem::take(&mut self.peer_list);
        peers.clear();
        peers.extend(
            self.peers
                .iter()
                .filter(|(_, p)| !p.queue.is_empty())
                .map(|(a, _)| *a),
        );
        for &peer in &peers {
            self.pump(peer, out);
        }
        self.peer_list = peers;
    }

    fn pump(&mut self, peer: PeerAddr, out: &mut Outbox<'_>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.connected {
            return;
        }
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        let mut beat: [u8; 8];
        let mut mask: [u8; 8];
        while let Some(&Queued { request, piece }) = p.queue.front() {
            let Some(pending) = self.requests.get(&request) else {
                p.queue.pop_front();
                continue;
            };
            if pending.reply.is_none() {
                // Timed out before it was sent: nothing to do.
                p.queue.pop_front();
                finished.push(request);
                continue;
            }
            let Some(&source) = p.free.last() else { break };
            let msg = match &pending.kind {
                Kind::Read { .. } => Message::get(source, piece.address, piece.size),
                Kind::Write { data } => {
                    let bytes = &data[piece.offset..piece.offset + piece.len];
                    if piece.partial {
                        beat = [0; 8];
                        beat[piece.skip..piece.skip + piece.len].copy_from_slice(bytes);
                        mask = (((1u64 << piece.len) - 1) << piece.skip).to_le_bytes();
                        Message::put_partial_data(source, piece.address, 3, &beat, &mask)
                    } else if piece.size < 3 {
                        beat = [0; 8];
                        let lane = (piece.address % 8) as usize;
                        beat[lane..lane + piece.len].copy_from_slice(bytes);
                        Message::put_full_data(source, piece.address, piece.size, &beat)
                    } else {
                        Message::put_full_data(source, piece.address, piece.size, bytes)
                    }
                }
                Kind::Atomic { op, width, operand } => {
                    beat = [0; 8];
                    let w = usize::from(*width);
                    beat[piece.skip..piece.skip + w].copy_from_slice(&operand.to_le_bytes()[..w]);
                    op.message(source, piece.address, piece.size, &beat)
                }
            };
            let op = msg.op;
            match out.send(peer, &msg) {
                Ok(()) => {
                    p.free.pop();
                    p.queue.pop_front();
                    p.in_flight[source as usize] = Some(InFlight { request, piece, op });
                    self.stats.messages_sent.fetch_add(1, Relaxed);
                }
                Err(SendError::QueueFull) => break,
                Err(e) => {
                    // An invalid message (a caller error that got past validation) or a dead
                    // link.
                    p.queue.pop_front();
                    let error = match e {
                        SendError::Invalid(_) | SendError::TooLarge { .. } => {
                            Error::InvalidRequest("the transfer cannot be expressed in TileLink")
                        }
                        _ => Error::PeerClosed,
                    };
                    failed.push((request, error));
                }
            }
        }
        for (request, error) in failed {
            self.fail_request(request, error);
            self.finish_piece(request);
        }
        for request in finished {
            self.finish_piece(request);
        }
    }

    fn fail_request(&mut self, request: u64, error: Error) {
        if let Some(p) = self.requests.get_mut(&request) {
            p.error.get_or_insert(error);
        }
    }

    /// One piece of `request` is done (answered or abandoned).
    fn finish_piece(&mut self, request: u64) {
        let Some(p) = self.requests.get_mut(&request) else {
            return;
        };
        p.outstanding -= 1;
        if p.outstanding > 0 {
            return;
        }
        let p = self.requests.remove(&request).expect("present");
        if let Some(reply) = p.reply {
            let result = match p.error {
                Some(e) => Err(e),
                None => Ok(match p.kind {
                    Kind::Read { .. } => Reply::Read(p.buf),
                    Kind::Write { .. } => Reply::Write,
                    Kind::Atomic { .. } => Reply::Atomic(p.old_value),
                }),
            };
            let _ = reply.send(result);
        }
    }

    fn on_response(&mut self, peer: PeerAddr, msg: &Message<'_>) {
        let flight = match self.peers.get_mut(&peer) {
            Some(p) if msg.channel == Channel::D => {
                let f = p
                    .in_flight
                    .get_mut(msg.source as usize)
                    .and_then(Option::take);
                if f.is_some() {
                    p.free.push(msg.source);
                }
                f
            }
            _ => None,
        };
        let Some(InFlight { request, piece, op }) = flight else {
            self.stats.unexpected.fetch_add(1, Relaxed);
            return;
        };
        let expected = match op {
            Op::Get | Op::ArithmeticData | Op::LogicalData => Op::AccessAckData,
            _ => Op::AccessAck,
        };
        // A data-less AccessAck only says the write was done, and the source already names the
        // piece: its size is not checked. ETRI's C endpoint acknowledges every PutFullData
        // with size 0 whatever the request's size. AccessAckData must match, since its size
        // is the amount of data it carries.
        let size_ok = msg.size == piece.size || expected == Op::AccessAck;
        if let Some(p) = self.requests.get_mut(&request) {
            if msg.op != expected || !size_ok {
                p.error.get_or_insert(Error::Protocol(
                    "response opcode or size does not match the request",
                ));
            } else if msg.denied {
                p.error.get_or_insert(Error::Denied {
                    address: piece.address + piece.skip as u64,
                });
            } else {
                match (&p.kind, msg.payload) {
                    (Kind::Read { .. }, Payload::Data(data)) => {
                        let dst = &mut p.buf[piece.offset..piece.offset + piece.len];
                        if piece.size >= 3 {
                            data.copy_to(dst);
                        } else {
                            let lane = (piece.address % 8) as usize;
                            for (k, d) in dst.iter_mut().enumerate() {
                                *d = data.byte(lane + k);
                            }
                        }
                        self.stats.bytes_read.fetch_add(piece.len as u64, Relaxed);
                    }
                    (Kind::Atomic { width, .. }, Payload::Data(data)) => {
                        let mut v = [0u8; 8];
                        for (k, b) in v.iter_mut().enumerate().take(usize::from(*width)) {
                            *b = data.byte(piece.skip + k);
                        }
                        p.old_value = u64::from_le_bytes(v);
                    }
                    (Kind::Write { .. }, _) => {
                        self.stats
                            .bytes_written
                            .fetch_add(piece.len as u64, Relaxed);
                    }
                    _ => {
                        p.error
                            .get_or_insert(Error::Protocol("response without data"));
                    }
                }
            }
        }
        self.finish_piece(request);
    }

    /// The link to `peer` ended: everything for it fails with `error`.
    fn fail_peer(&mut self, peer: PeerAddr, error: Error) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.dead = Some(error.clone());
        p.connected = false;
        for (w, _) in p.connect_waiters.drain(..) {
            let _ = w.send(Err(error.clone()));
        }
        let mut requests: Vec<u64> = p.queue.drain(..).map(|q| q.request).collect();
        for slot in &mut p.in_flight {
            if let Some(f) = slot.take() {
                requests.push(f.request);
            }
        }
        p.free = (0..self.max_in_flight).rev().collect();
        for r in requests {
            self.fail_request(r, error.clone());
            self.finish_piece(r);
        }
    }

    fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&Reverse((deadline, id))) = self.deadlines.peek() {
            if deadline > now {
                return Some(deadline);
            }
            self.deadlines.pop();
            if let Some(p) = self.requests.get_mut(&id) {
                if let Some(r) = p.reply.take() {
                    self.stats.timeouts.fetch_add(1, Relaxed);
                    let _ = r.send(Err(Error::Timeout));
                }
                // Pieces still in flight keep their source ids until answered, so a late
                // answer can never be taken for a newer request's.
            }
        }
        None
    }

    fn command(&mut self, command: Command, out: &mut Outbox<'_>) {
        match command {
            Command::Connect {
                peer,
                config,
                reply,
                deadline,
            } => {
                let max_in_flight = self.max_in_flight;
                let p = self
                    .peers
                    .entry(peer)
                    .or_insert_with(|| Peer::new(config, max_in_flight));
                if p.connected {
                    let _ = reply.send(Ok(()));
                    return;
                }
                // A node that failed before may be tried again.
                p.dead = None;
                p.config = config;
                out.connect_with(peer, config.variant, config.settings);
                p.connect_waiters.push((reply, deadline));
            }
            Command::Submit {
                peer,
                address,
                kind,
                deadline,
                reply,
            } => {
                self.submit(peer, address, kind, deadline, reply);
            }
            Command::Close {
                peer,
                reply,
                deadline,
            } => match self.peers.get_mut(&peer) {
                Some(p) if p.connected && p.dead.is_none() => {
                    out.close(peer);
                    p.close_waiters.push((reply, deadline));
                }
                _ => {
                    let _ = reply.send(Ok(()));
                }
            },
        }
    }
}

impl Handler for ClientHandler {
    fn on_message(&mut self, peer: PeerAddr, msg: &Message<'_>, out: &mut Outbox<'_>) {
        self.on_response(peer, msg);
        self.pump(peer, out);
    }

    fn on_peer_event(&mut self, peer: PeerAddr, event: PeerEvent, out: &mut Outbox<'_>) {
        match event {
            PeerEvent::Connected(_) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.connected = true;
                    for (w, _) in p.connect_waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                self.pump(peer, out);
            }
            PeerEvent::Closed => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    for (w, _) in p.close_waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                self.fail_peer(peer, Error::PeerClosed);
            }
            PeerEvent::Failed(e) => self.fail_peer(peer, Error::LinkFailed(e)),
        }
    }

    fn poll(&mut self, now: Instant, out: &mut Outbox<'_>) -> Option<Instant> {
        while let Ok(c) = self.commands.try_recv() {
            self.command(c, out);
        }
        // Connection openings and closings that ran out of time.
        let mut next: Option<Instant> = None;
        for p in self.peers.values_mut() {
            for d in [
                expire_waiters(&mut p.connect_waiters, now),
                expire_waiters(&mut p.close_waiters, now),
            ]
            .into_iter()
            .flatten()
            {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        self.pump_all(out);
        let expiry = self.expire(now);
        [next, expiry].into_iter().flatten().min()
    }
}

/// Something a waiter is answered through.
trait Answer {
    fn answer(self, r: Result<(), Error>);
}

impl Answer for oneshot::Sender<Result<(), Error>> {
    fn answer(self, r: Result<(), Error>) {
        let _ = self.send(r);
    }
}

impl Answer for std::sync::mpsc::Sender<Result<(), Error>> {
    fn answer(self, r: Result<(), Error>) {
        let _ = self.send(r);
    }
}

/// Answers `Timeout` to the waiters whose deadline passed; returns the next deadline.
fn expire_waiters<A: Answer>(waiters: &mut Vec<(A, Instant)>, now: Instant) -> Option<Instant> {
    let mut next = None;
    let mut i = 0;
    while i < waiters.len() {
        let deadline = waiters[i].1;
        if deadline <= now {
            let (w, _) = waiters.swap_remove(i);
            w.answer(Err(Error::Timeout));
        } else {
            next = Some(next.map_or(deadline, |n: Instant| n.min(deadline)));
            i += 1;
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use oxmem_net::engine::{Engine, EngineConfig, Handler, Outbox};
    use oxmem_net::mem::MemNetwork;
    use oxmem_net::{PeerAddr, Transport};
    use oxmem_node::{Access, Arena, Executor, Grant, Window};
    use oxmem_wire::{Message, Op};

    use crate::{Endpoint, EndpointOptions};

    /// A node that acknowledges writes as ETRI's C endpoint does: AccessAck with size 0.
    struct SizeZeroAcks(Executor<PeerAddr>);

    impl Handler for SizeZeroAcks {
        fn on_message(&mut self, peer: PeerAddr, msg: &Message<'_>, out: &mut Outbox<'_>) {
            self.0.execute(&peer, msg, &mut |mut reply| {
                if reply.op == Op::AccessAck {
                    reply.size = 0;
                }
                let _ = out.send(peer, &reply);
            });
        }
    }

    #[test]
    fn writes_acknowledged_with_size_zero_complete() {
        let net = MemNetwork::new();
        let transport = net.endpoint(7447, 8192);
        let node = transport.local_addr();
        let mut exec = Executor::new(Arena::new(1 << 16).unwrap());
        let window = Window {
            base: 0,
            len: 1 << 16,
        };
        exec.grants_mut()
            .add(Grant::any(window, Access::ReadWrite))
            .unwrap();
        let config = EngineConfig {
            accept: true,
            ..EngineConfig::default()
        };
        let _engine = Engine::spawn(transport, SizeZeroAcks(exec), config).unwrap();
        let options = EndpointOptions {
            max_frame: Some(528),
            partial_writes: false,
            ..EndpointOptions::default()
        };
        let ep = Endpoint::with_transport(net.endpoint(1000, 8192), node, options).unwrap();
        for (addr, len) in [(0x100u64, 8usize), (0x200, 32), (0x305, 5), (0x400, 300)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
            ep.write(addr, &data).unwrap();
            let mut back = vec![0u8; len];
            ep.read(addr, &mut back).unwrap();
            assert_eq!(back, data, "{addr:#x}+{len}");
        }
    }
}
