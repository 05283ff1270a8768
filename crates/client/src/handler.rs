//! The client side of the engine: turns requests into TileLink messages, keeps as many in
//! flight as the link allows, and matches responses back to requests by source id.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, TryRecvError};

use oxmem_link::{HeaderVariant, Instant, SendError};
use oxmem_net::PeerAddr;
use oxmem_net::engine::{Handler, Outbox, PeerEvent};
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

/// Work handed to the engine thread.
#[derive(Debug)]
pub(crate) enum Command {
    Connect {
        reply: oneshot::Sender<Result<(), Error>>,
        deadline: Instant,
    },
    Submit {
        address: u64,
        kind: Kind,
        deadline: Instant,
        reply: ReplyTx,
    },
    Close {
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

/// Options the handler needs.
#[derive(Debug, Clone)]
pub(crate) struct HandlerConfig {
    pub peer: PeerAddr,
    pub variant: HeaderVariant,
    pub max_size: u8,
    pub partial_writes: bool,
    pub max_in_flight: u32,
}

pub(crate) struct ClientHandler {
    config: HandlerConfig,
    commands: Receiver<Command>,
    connected: bool,
    dead: Option<Error>,
    connect_waiters: Vec<(oneshot::Sender<Result<(), Error>>, Instant)>,
    close_waiters: Vec<(std::sync::mpsc::Sender<Result<(), Error>>, Instant)>,
    next_request: u64,
    requests: HashMap<u64, Pending>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    queue: VecDeque<Queued>,
    /// In-flight pieces by source id; free ids in `free`.
    in_flight: Vec<Option<InFlight>>,
    free: Vec<u32>,
    stats: std::sync::Arc<crate::ClientStats>,
}

impl std::fmt::Debug for ClientHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandler")
            .field("peer", &self.config.peer)
            .field("requests", &self.requests.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl ClientHandler {
    pub(crate) fn new(
        config: HandlerConfig,
        commands: Receiver<Command>,
        stats: std::sync::Arc<crate::ClientStats>,
    ) -> Self {
        let n = config.max_in_flight;
        ClientHandler {
            config,
            commands,
            connected: false,
            dead: None,
            connect_waiters: Vec::new(),
            close_waiters: Vec::new(),
            next_request: 0,
            requests: HashMap::new(),
            deadlines: BinaryHeap::new(),
            queue: VecDeque::new(),
            in_flight: vec![None; n as usize],
            free: (0..n).rev().collect(),
            stats,
        }
    }

    fn submit(&mut self, address: u64, kind: Kind, deadline: Instant, reply: ReplyTx) {
        if let Some(e) = &self.dead {
            let _ = reply.send(Err(e.clone()));
            return;
        }
        let mut kind = kind;
        let (pieces, buf) = match &mut kind {
            Kind::Read { len, into } => {
                // The caller's own buffer when it gave one: no allocation, no clearing.
                let mut buf = std::mem::take(into);
                buf.resize(*len, 0);
                (read_pieces(address, *len, self.config.max_size), buf)
            }
            Kind::Write { data } => (
                write_pieces(
                    address,
                    data.len(),
                    self.config.max_size,
                    self.config.partial_writes,
                ),
                Vec::new(),
            ),
            Kind::Atomic { width, .. } => {
                let size = width.trailing_zeros() as u8;
                let beat = address & !7;
                let piece = Piece {
                    address,
                    size,
                    offset: 0,
                    len: usize::from(*width),
                    skip: (address - beat) as usize,
                    partial: false,
                };
                (vec![piece], Vec::new())
            }
        };
        let id = self.next_request;
        self.next_request += 1;
        for piece in &pieces {
            self.queue.push_back(Queued {
                request: id,
                piece: *piece,
            });
        }
        self.deadlines.push(Reverse((deadline, id)));
        self.requests.insert(
            id,
            Pending {
                kind,
                buf,
                outstanding: pieces.len(),
                error: None,
                reply: Some(reply),
                old_value: 0,
            },
        );
    }

    /// Hands queued pieces to the link while source ids and queue room last.
    fn pump(&mut self, out: &mut Outbox<'_>) {
        if !self.connected {
            return;
        }
        let mut beat: [u8; 8];
        let mut mask: [u8; 8];
        while let Some(&Queued { request, piece }) = self.queue.front() {
            let Some(pending) = self.requests.get(&request) else {
                self.queue.pop_front();
                continue;
            };
            if pending.reply.is_none() {
                // Timed out before it was sent: nothing to do.
                self.queue.pop_front();
                self.finish_piece(request);
                continue;
            }
            let Some(&source) = self.free.last() else {
                break;
            };
            let msg = match &pending.kind {
                Kind::Read { .. } => Message::get(source, piece.address, piece.size),
                Kind::Write { data } => {
                    let bytes = &data[piece.offset..piece.offset + piece.len];
                    if piece.partial {
                        beat = [0; 8];
                        beat[piece.skip..piece.skip + piece.len].copy_from_slice(bytes);
                        let bits: u64 = ((1u64 << piece.len) - 1) << piece.skip;
                        mask = bits.to_le_bytes();
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
                    let lane = piece.skip;
                    let w = usize::from(*width);
                    beat[lane..lane + w].copy_from_slice(&operand.to_le_bytes()[..w]);
                    let addr = piece.address;
                    match op {
                        AtomicOp::Add => Message::arithmetic(
                            source,
                            addr,
                            piece.size,
                            ArithmeticParam::Add,
                            &beat,
                        ),
                        AtomicOp::Min => Message::arithmetic(
                            source,
                            addr,
                            piece.size,
                            ArithmeticParam::Min,
                            &beat,
                        ),
                        AtomicOp::Max => Message::arithmetic(
                            source,
                            addr,
                            piece.size,
                            ArithmeticParam::Max,
                            &beat,
                        ),
                        AtomicOp::MinU => Message::arithmetic(
                            source,
                            addr,
                            piece.size,
                            ArithmeticParam::MinU,
                            &beat,
                        ),
                        AtomicOp::MaxU => Message::arithmetic(
                            source,
                            addr,
                            piece.size,
                            ArithmeticParam::MaxU,
                            &beat,
                        ),
                        AtomicOp::Xor => {
                            Message::logical(source, addr, piece.size, LogicalParam::Xor, &beat)
                        }
                        AtomicOp::Or => {
                            Message::logical(source, addr, piece.size, LogicalParam::Or, &beat)
                        }
                        AtomicOp::And => {
                            Message::logical(source, addr, piece.size, LogicalParam::And, &beat)
                        }
                        AtomicOp::Swap => {
                            Message::logical(source, addr, piece.size, LogicalParam::Swap, &beat)
                        }
                    }
                }
            };
            let op = msg.op;
            match out.send(self.config.peer, &msg) {
                Ok(()) => {
                    self.free.pop();
                    self.queue.pop_front();
                    self.in_flight[source as usize] = Some(InFlight { request, piece, op });
                    self.stats
                        .messages_sent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(SendError::QueueFull) => break,
                Err(e) => {
                    // Invalid message (a caller error that got past validation) or a dead link.
                    self.queue.pop_front();
                    let error = match e {
                        SendError::Invalid(_) | SendError::TooLarge { .. } => {
                            Error::InvalidRequest("the transfer cannot be expressed in TileLink")
                        }
                        _ => Error::PeerClosed,
                    };
                    self.fail_request(request, error);
                    self.finish_piece(request);
                }
            }
        }
    }

    fn fail_request(&mut self, request: u64, error: Error) {
        if let Some(p) = self.requests.get_mut(&request) {
            if p.error.is_none() {
                p.error = Some(error);
            }
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

    fn on_response(&mut self, msg: &Message<'_>) {
        if msg.channel != Channel::D {
            self.stats
                .unexpected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let source = msg.source as usize;
        let Some(flight) = self.in_flight.get_mut(source).and_then(Option::take) else {
            self.stats
                .unexpected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        self.free.push(msg.source);
        let InFlight { request, piece, op } = flight;
        let expected = match op {
            Op::Get | Op::ArithmeticData | Op::LogicalData => Op::AccessAckData,
            _ => Op::AccessAck,
        };
        if let Some(p) = self.requests.get_mut(&request) {
            if msg.op != expected || msg.size != piece.size {
                if p.error.is_none() {
                    p.error = Some(Error::Protocol(
                        "response opcode or size does not match the request",
                    ));
                }
            } else if msg.denied {
                if p.error.is_none() {
                    p.error = Some(Error::Denied {
                        address: piece.address + piece.skip as u64,
                    });
                }
            } else if let Payload::Data(data) = msg.payload {
                match &p.kind {
                    Kind::Read { .. } => {
                        let dst = &mut p.buf[piece.offset..piece.offset + piece.len];
                        if piece.size >= 3 {
                            data.copy_to(dst);
                        } else {
                            let lane = (piece.address % 8) as usize;
                            for (k, d) in dst.iter_mut().enumerate() {
                                *d = data.byte(lane + k);
                            }
                        }
                        self.stats
                            .bytes_read
                            .fetch_add(piece.len as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Kind::Atomic { width, .. } => {
                        let mut v = [0u8; 8];
                        for (k, b) in v.iter_mut().enumerate().take(usize::from(*width)) {
                            *b = data.byte(piece.skip + k);
                        }
                        p.old_value = u64::from_le_bytes(v);
                    }
                    Kind::Write { .. } => {}
                }
            }
            if matches!(p.kind, Kind::Write { .. }) && !msg.denied {
                self.stats
                    .bytes_written
                    .fetch_add(piece.len as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.finish_piece(request);
    }

    fn fail_all(&mut self, error: Error) {
        self.dead = Some(error.clone());
        for (w, _) in self.connect_waiters.drain(..) {
            let _ = w.send(Err(error.clone()));
        }
        for (_, p) in self.requests.drain() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(error.clone()));
            }
        }
        self.queue.clear();
        for slot in &mut self.in_flight {
            *slot = None;
        }
        self.free = (0..self.config.max_in_flight).rev().collect();
    }

    fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&Reverse((deadline, id))) = self.deadlines.peek() {
            if deadline > now {
                return Some(deadline);
            }
            self.deadlines.pop();
            if let Some(p) = self.requests.get_mut(&id) {
                if let Some(r) = p.reply.take() {
                    self.stats
                        .timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = r.send(Err(Error::Timeout));
                }
                // Pieces still in flight keep their source ids until answered, so a late
                // answer can never be taken for a newer request's.
            }
        }
        None
    }
}

impl Handler for ClientHandler {
    fn on_message(&mut self, _peer: PeerAddr, msg: &Message<'_>, out: &mut Outbox<'_>) {
        self.on_response(msg);
        self.pump(out);
    }

    fn on_peer_event(&mut self, peer: PeerAddr, event: PeerEvent, out: &mut Outbox<'_>) {
        if peer != self.config.peer {
            return;
        }
        match event {
            PeerEvent::Connected(_) => {
                self.connected = true;
                for (w, _) in self.connect_waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                self.pump(out);
            }
            PeerEvent::Closed => {
                for (w, _) in self.close_waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                self.fail_all(Error::PeerClosed);
            }
            PeerEvent::Failed(e) => self.fail_all(Error::LinkFailed(e)),
        }
    }

    fn poll(&mut self, now: Instant, out: &mut Outbox<'_>) -> Option<Instant> {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Connect { reply, deadline }) => {
                    if let Some(e) = &self.dead {
                        let _ = reply.send(Err(e.clone()));
                    } else if self.connected {
                        let _ = reply.send(Ok(()));
                    } else {
                        out.connect(self.config.peer, self.config.variant);
                        self.connect_waiters.push((reply, deadline));
                    }
                }
                Ok(Command::Submit {
                    address,
                    kind,
                    deadline,
                    reply,
                }) => {
                    self.submit(address, kind, deadline, reply);
                }
                Ok(Command::Close { reply, deadline }) => {
                    if self.dead.is_some() || !self.connected {
                        let _ = reply.send(Ok(()));
                    } else {
                        out.close(self.config.peer);
                        self.close_waiters.push((reply, deadline));
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // Connection openings and closings that ran out of time.
        let mut next = expire_waiters(&mut self.connect_waiters, now);
        if let Some(d) = expire_waiters(&mut self.close_waiters, now) {
            next = Some(next.map_or(d, |n: Instant| n.min(d)));
        }
        self.pump(out);
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
