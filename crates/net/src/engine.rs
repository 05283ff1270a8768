//! The I/O engine: one thread per transport that owns its socket and the link state machine
//! of every peer.
//!
//! Each turn of the loop receives a batch of frames, feeds each to its peer's
//! [`Connection`], hands delivered TileLink messages to the [`Handler`] (which may answer
//! through the [`Outbox`]), lets the handler take commands from other threads, fires timers,
//! and sends everything the connections want to send in one batch. When a turn does nothing
//! it spins a little (latency), then blocks in `poll(2)` until a frame arrives, a timer is due,
//! or another thread wakes it (so it behaves on a 2-core machine).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use oxmem_link::{
    Config, Connection, Event, FrameError, HeaderVariant, Instant, LinkError, SendError, State,
};
use oxmem_wire::{ByteOrder, Message};

use crate::{PeerAddr, RecvBatch, Transport, Waker};

/// Per-peer settings that differ from the engine's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerSettings {
    /// Largest TLoE frame this peer accepts (ETRI's endpoint takes about 528 bytes).
    pub max_frame: Option<usize>,
    /// Data byte order the peer uses (Western Digital's host library uses memory order).
    pub byte_order: Option<ByteOrder>,
}

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Link parameters; frame limits and integrity come from the transport.
    pub link: Config,
    /// Create a connection for any peer whose first frame arrives (a memory node does; a
    /// client only talks to the peers it connects to).
    pub accept: bool,
    /// Most peers at once; frames from further new peers are dropped and counted.
    pub max_peers: usize,
    /// Per-peer overrides.
    pub peers: HashMap<PeerAddr, PeerSettings>,
    /// Frames received or sent per syscall.
    pub batch: usize,
    /// How long an idle loop keeps polling before it blocks.
    pub spin: Duration,
    /// Name of the thread.
    pub name: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            link: Config {
                // A memory node receives requests on channel A; the other channels get a
                // token buffer of 384 flits (128 to start with in 1.1, then one grant of 256,
                // which is what ETRI's endpoint waits for on every channel).
                rx_buffer_flits: [(1 << 14) + 128, 384, 384, 384, 384],
                ..Config::default()
            },
            accept: false,
            max_peers: 1024,
            peers: HashMap::new(),
            batch: 64,
            spin: Duration::from_micros(50),
            name: "oxmem-engine".into(),
        }
    }
}

/// What happened to a peer's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    Connected(HeaderVariant),
    Closed,
    Failed(LinkError),
}

/// The code that runs on the engine thread: a memory node's executor, or a client's
/// request tracker.
pub trait Handler: Send + 'static {
    /// A TileLink message from `peer`. Answer, or send anything, through `out`.
    fn on_message(&mut self, peer: PeerAddr, msg: &Message<'_>, out: &mut Outbox<'_>);

    /// A peer connected, closed or failed.
    fn on_peer_event(&mut self, peer: PeerAddr, event: PeerEvent, out: &mut Outbox<'_>) {
        let _ = (peer, event, out);
    }

    /// Called every turn of the loop: take commands from other threads, expire deadlines.
    /// Returns when it next needs to be called even if nothing arrives.
    fn poll(&mut self, now: Instant, out: &mut Outbox<'_>) -> Option<Instant> {
        let _ = (now, out);
        None
    }
}

/// Counters of an engine, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub frames_received: AtomicU64,
    pub frames_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Frames the link layer refused: corrupt, malformed, beyond credit.
    pub frames_refused: AtomicU64,
    /// Frames from new peers beyond `max_peers`.
    pub peers_refused: AtomicU64,
    /// Frames the kernel refused to send (no route, interface down, …): dropped, as the
    /// network would drop them; the link layer resends.
    pub send_errors: AtomicU64,
    /// Receive calls that failed (e.g. the interface went down under a raw socket).
    pub recv_errors: AtomicU64,
    pub messages_received: AtomicU64,
    /// Connections accepted (peers whose first frame opened a connection).
    pub peers: AtomicU64,
    /// Loop turns that ended blocked in poll(2).
    pub sleeps: AtomicU64,
    /// Link-layer totals over every connection, ended ones included (refreshed every 100 ms).
    pub retransmitted_frames: AtomicU64,
    pub retransmit_timeouts: AtomicU64,
    pub naks_received: AtomicU64,
    pub credit_stalls: AtomicU64,
    pub duplicates_received: AtomicU64,
}

/// Link counters of ended connections, kept so totals never go backwards.
#[derive(Debug, Default, Clone, Copy)]
struct LinkTotals {
    retransmitted: u64,
    timeouts: u64,
    naks: u64,
    stalls: u64,
    duplicates: u64,
}

impl LinkTotals {
    fn add(&mut self, s: &oxmem_link::Stats) {
        self.retransmitted += s.frames_retransmitted;
        self.timeouts += s.retransmit_timeouts;
        self.naks += s.naks_received;
        self.stalls += s.credit_stalls;
        self.duplicates += s.duplicates_received;
    }
}

/// Lets the handler send messages and manage connections.
#[derive(Debug)]
pub struct Outbox<'e> {
    conns: &'e mut Peers,
    now: Instant,
}

impl Outbox<'_> {
    /// Queues a message to `peer`.
    ///
    /// # Errors
    /// [`SendError`] when the message is refused; `SendError::Closing` when there is no
    /// connection to that peer.
    pub fn send(&mut self, peer: PeerAddr, msg: &Message<'_>) -> Result<(), SendError> {
        match self.conns.map.get_mut(&peer) {
            Some(conn) => conn.send(msg),
            None => Err(SendError::Closing),
        }
    }

    /// Bytes of messages the connection to `peer` will still queue (0 without a connection).
    pub fn room(&self, peer: &PeerAddr) -> usize {
        self.conns
            .map
            .get(peer)
            .map_or(0, Connection::send_queue_room)
    }

    /// Opens a connection to `peer` (if there is none) with settings of its own.
    pub fn connect_with(&mut self, peer: PeerAddr, variant: HeaderVariant, settings: PeerSettings) {
        self.conns.overrides.insert(peer, settings);
        self.connect(peer, variant);
    }

    /// Opens a connection to `peer` (if there is none) in the given header variant.
    pub fn connect(&mut self, peer: PeerAddr, variant: HeaderVariant) {
        let now = self.now;
        let config = self.conns.config_for(peer);
        self.conns
            .map
            .entry(peer)
            .or_insert_with(|| Connection::connect(config, variant, now));
    }

    /// Starts closing the connection to `peer`.
    pub fn close(&mut self, peer: PeerAddr) {
        if let Some(c) = self.conns.map.get_mut(&peer) {
            c.close();
        }
    }

    /// The connection to `peer`, to read its state and counters.
    pub fn connection(&self, peer: &PeerAddr) -> Option<&Connection> {
        self.conns.map.get(peer)
    }

    /// The current time of the loop.
    pub fn now(&self) -> Instant {
        self.now
    }
}

#[derive(Debug)]
struct Peers {
    map: HashMap<PeerAddr, Connection>,
    base: Config,
    overrides: HashMap<PeerAddr, PeerSettings>,
}

impl Peers {
    fn config_for(&self, peer: PeerAddr) -> Config {
        let mut c = self.base.clone();
        if let Some(s) = self.overrides.get(&peer) {
            if let Some(m) = s.max_frame {
                c.max_frame = m.min(c.max_frame);
            }
            if let Some(o) = s.byte_order {
                c.byte_order = o;
            }
        }
        c
    }
}

/// A running engine. Dropping it stops the thread.
#[derive(Debug)]
pub struct Engine {
    epoch: std::time::Instant,
    waker: Waker,
    stop: Arc<AtomicBool>,
    stats: Arc<EngineStats>,
    local: PeerAddr,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Engine {
    /// Starts the engine thread on `transport`, running `handler`.
    ///
    /// # Errors
    /// When the waker or the thread cannot be created.
    pub fn spawn<T: Transport, H: Handler>(
        mut transport: T,
        handler: H,
        config: EngineConfig,
    ) -> io::Result<Engine> {
        let waker = Waker::new()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(EngineStats::default());
        let local = transport.local_addr();
        let params = transport.link_params();
        let mut link = config.link.clone();
        link.max_frame = params.max_frame;
        link.min_frame = params.min_frame;
        link.integrity = params.integrity;
        let epoch = std::time::Instant::now();
        let run = Runner {
            peers: Peers {
                map: HashMap::new(),
                base: link,
                overrides: config.peers.clone(),
            },
            config,
            waker: waker.clone(),
            stop: stop.clone(),
            stats: stats.clone(),
            epoch,
        };
        let thread = std::thread::Builder::new()
            .name(run.config.name.clone())
            .spawn(move || run.run(&mut transport, handler))?;
        Ok(Engine {
            epoch,
            waker,
            stop,
            stats,
            local,
            thread: Some(thread),
        })
    }

    /// The engine's clock: deadlines handed to its handler are in this time.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Wakes the engine: call after giving its handler work through a queue.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// The transport's local address.
    pub fn local_addr(&self) -> PeerAddr {
        self.local
    }

    /// Stops the thread and returns how it ended.
    ///
    /// # Errors
    /// The IO error that stopped the engine, if one did.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("engine thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

struct Runner {
    peers: Peers,
    config: EngineConfig,
    waker: Waker,
    stop: Arc<AtomicBool>,
    stats: Arc<EngineStats>,
    epoch: std::time::Instant,
}

impl Runner {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn run<T: Transport, H: Handler>(
        mut self,
        transport: &mut T,
        mut handler: H,
    ) -> io::Result<()> {
        let params = transport.link_params();
        let frame_room = params.max_frame + params.integrity.trailer_len() + 64;
        let mut batch = RecvBatch::new(self.config.batch, frame_room);
        let mut out_bufs: Vec<Vec<u8>> = (0..self.config.batch)
            .map(|_| vec![0; frame_room])
            .collect();
        let mut out_meta: Vec<(PeerAddr, usize)> = Vec::with_capacity(self.config.batch);
        let mut events: Vec<(PeerAddr, Event)> = Vec::new();
        let mut idle_since: Option<std::time::Instant> = None;
        self.waker.disarm();
        let mut armed = false;
        let mut ended_totals = LinkTotals::default();
        let mut last_publish = std::time::Instant::now();
        let mut handler_due: Option<Instant>;

        while !self.stop.load(Ordering::Acquire) {
            let mut busy = false;
            let now = self.now();

            // 1. Receive. An error (the interface went down under a raw socket, say) is
            // counted and the engine goes on: it must serve again once the path is back.
            let n = match transport.recv(&mut batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(_) => {
                    self.stats.recv_errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                    0
                }
            };
            if n > 0 {
                busy = true;
                self.stats
                    .frames_received
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            for i in 0..n {
                let (peer, bytes) = batch.get(i);
                self.stats
                    .bytes_received
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let fresh = !self.peers.map.contains_key(&peer);
                if fresh {
                    if !self.config.accept {
                        continue;
                    }
                    if self.peers.map.len() >= self.config.max_peers && !self.evict_idle(now) {
                        self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let config = self.peers.config_for(peer);
                    self.peers.map.insert(peer, Connection::accept(config, now));
                }
                let conn = self
                    .peers
                    .map
                    .get_mut(&peer)
                    .expect("present or just inserted");
                match conn.handle_frame(now, bytes) {
                    Ok(()) => {}
                    Err(FrameError::PeerRestarted) => {
                        // The peer started over on the same address: so do we. The handler
                        // hears that the old connection ended.
                        *conn = Connection::accept(conn.config().clone(), now);
                        if conn.handle_frame(now, bytes).is_err() {
                            self.stats.frames_refused.fetch_add(1, Ordering::Relaxed);
                        }
                        events.push((peer, Event::Closed));
                    }
                    Err(_) => {
                        self.stats.frames_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if conn.variant().is_none() {
                    // Not a valid first frame: keep no state for it.
                    self.peers.map.remove(&peer);
                    continue;
                }
                if fresh {
                    self.stats.peers.fetch_add(1, Ordering::Relaxed);
                }
                while let Some(e) = conn.poll_event() {
                    events.push((peer, e));
                }
                // Dispatch now, so replies join this turn's transmit batch.
                self.dispatch(&mut events, &mut handler, now);
            }

            // 2. Commands from other threads and handler deadlines.
            {
                let mut out = Outbox {
                    conns: &mut self.peers,
                    now,
                };
                handler_due = handler.poll(now, &mut out);
            }

            // 3. Timers.
            let mut next_timer: Option<Instant> = handler_due;
            for (peer, conn) in &mut self.peers.map {
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
                while let Some(e) = conn.poll_event() {
                    events.push((*peer, e));
                }
            }
            self.dispatch(&mut events, &mut handler, now);

            // 4. Transmit.
            for (peer, conn) in &mut self.peers.map {
                loop {
                    if out_meta.len() == out_bufs.len() {
                        flush(transport, &out_bufs, &mut out_meta, &self.stats)?;
                    }
                    let slot = out_meta.len();
                    let Some(len) = conn.poll_transmit(now, &mut out_bufs[slot]) else {
                        break;
                    };
                    out_meta.push((*peer, len));
                    busy = true;
                }
                if let Some(t) = conn.poll_timeout() {
                    next_timer = Some(next_timer.map_or(t, |n: Instant| n.min(t)));
                }
            }
            flush(transport, &out_bufs, &mut out_meta, &self.stats)?;

            // Forget connections that ended (a new first frame starts a fresh one), keeping
            // their counters.
            let ended = &mut ended_totals;
            self.peers.map.retain(|_, c| {
                let keep = !matches!(c.state(), State::Closed | State::Failed);
                if !keep {
                    ended.add(c.stats());
                }
                keep
            });
            if last_publish.elapsed() >= Duration::from_millis(100) {
                last_publish = std::time::Instant::now();
                let mut t = ended_totals;
                for c in self.peers.map.values() {
                    t.add(c.stats());
                }
                let st = &self.stats;
                st.retransmitted_frames
                    .store(t.retransmitted, Ordering::Relaxed);
                st.retransmit_timeouts.store(t.timeouts, Ordering::Relaxed);
                st.naks_received.store(t.naks, Ordering::Relaxed);
                st.credit_stalls.store(t.stalls, Ordering::Relaxed);
                st.duplicates_received
                    .store(t.duplicates, Ordering::Relaxed);
            }

            // 5. Idle: spin briefly, then block until a frame, a timer or a wake. Other threads
            // wake us with a syscall only while the waker is armed; so arm it, take one more
            // full turn (work queued before the arm is found there), and only then block.
            if busy {
                idle_since = None;
                if armed {
                    self.waker.disarm();
                    armed = false;
                }
                continue;
            }
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < self.config.spin {
                std::hint::spin_loop();
                continue;
            }
            if !armed {
                self.waker.arm();
                armed = true;
                continue;
            }
            let timeout = next_timer.map(|t| t.saturating_duration_since(self.now()));
            if timeout.is_some_and(|t| t.is_zero()) {
                continue;
            }
            self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            transport.wait(&self.waker, timeout)?;
            self.waker.disarm();
            armed = false;
            idle_since = None;
        }
        Ok(())
    }

    /// Makes room in a full peer table: forgets the connection idle the longest, if it has
    /// heard nothing for `dead_after` (a peer that left without closing). Returns whether a
    /// slot was freed.
    fn evict_idle(&mut self, now: Instant) -> bool {
        let dead_after = self.peers.base.dead_after;
        let oldest = self
            .peers
            .map
            .iter()
            .map(|(p, c)| (*p, c.idle_for(now)))
            .filter(|(_, idle)| *idle >= dead_after)
            .max_by_key(|(_, idle)| *idle);
        match oldest {
            Some((peer, _)) => {
                self.peers.map.remove(&peer);
                true
            }
            None => false,
        }
    }

    fn dispatch<H: Handler>(
        &mut self,
        events: &mut Vec<(PeerAddr, Event)>,
        handler: &mut H,
        now: Instant,
    ) {
        for (peer, event) in events.drain(..) {
            let mut out = Outbox {
                conns: &mut self.peers,
                now,
            };
            match event {
                Event::Message(m) => {
                    self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                    handler.on_message(peer, &m.message(), &mut out);
                }
                Event::Connected(v) => {
                    handler.on_peer_event(peer, PeerEvent::Connected(v), &mut out)
                }
                Event::Closed => handler.on_peer_event(peer, PeerEvent::Closed, &mut out),
                Event::Failed(e) => handler.on_peer_event(peer, PeerEvent::Failed(e), &mut out),
            }
        }
    }
}

/// Sends the batch; on a full socket buffer, waits until the kernel takes the rest. A frame
/// the kernel refuses (its route is gone, the interface is down: a partition) is dropped and
/// counted, like a frame the network lost; the engine keeps serving every other peer and
/// recovers when the path comes back.
fn flush<T: Transport>(
    transport: &mut T,
    bufs: &[Vec<u8>],
    meta: &mut Vec<(PeerAddr, usize)>,
    stats: &EngineStats,
) -> io::Result<()> {
    let mut done = 0;
    while done < meta.len() {
        let frames: Vec<(PeerAddr, &[u8])> = meta[done..]
            .iter()
            .enumerate()
            .map(|(i, (p, len))| (*p, &bufs[done + i][..*len]))
            .collect();
        let sent = match transport.send(&frames) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(_) => {
                // The error concerns the first frame (Transport::send's contract).
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                done += 1;
                continue;
            }
        };
        for (_, len) in &meta[done..done + sent] {
            stats.bytes_sent.fetch_add(*len as u64, Ordering::Relaxed);
        }
        stats.frames_sent.fetch_add(sent as u64, Ordering::Relaxed);
        done += sent;
        if sent == 0 {
            // The kernel's buffer is full: give it a moment rather than spin.
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    meta.clear();
    Ok(())
}
