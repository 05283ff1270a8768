//! Serving the executor over the network: an engine [`Handler`] that executes every request
//! a peer sends and answers it, and [`NodeServer`], which runs one engine per transport over a
//! shared executor.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use oxmem_link::Instant;
use oxmem_net::engine::{Engine, EngineConfig, Handler, Outbox, PeerEvent};
use oxmem_net::{PeerAddr, Transport};
use oxmem_wire::{ByteOrder, FLIT, Message, Op, data_beats};

use crate::executor::Executor;

/// The executor shared by the engines of a node.
pub type SharedExecutor = Arc<Mutex<Executor<PeerAddr>>>;

/// Runs on an engine thread: executes each request and queues the answer to its peer.
///
/// A request is executed only when the link to its peer has room for the answer; otherwise it
/// waits, in order, with the peer's later requests behind it, and runs once frames have left.
/// So no answer is ever dropped for lack of queue space, and a write is never applied without
/// its acknowledgement being queued.
#[derive(Debug)]
pub struct NodeHandler {
    executor: SharedExecutor,
    /// Requests waiting for queue room, per peer, as encoded messages.
    backlog: HashMap<PeerAddr, Backlog>,
    /// Answers the link refused although there was room (a reply larger than the peer's
    /// frames, say).
    unsent: u64,
    /// Requests dropped unanswered because their peer's backlog was full.
    overflowed: u64,
}

/// Most requests one peer may have waiting for room to answer them. A client has at most as
/// many requests outstanding as it has source ids in use (4096 by default), so only a peer
/// that keeps sending while it never takes its answers (and so never returns the credit they
/// need) gets here; what it sends beyond this is dropped unanswered, so the node's memory for
/// it stays bounded.
pub const MAX_BACKLOG_REQUESTS: usize = 1 << 16;
/// Most bytes of encoded requests one peer may have waiting (puts carry their data).
pub const MAX_BACKLOG_BYTES: usize = 64 << 20;

#[derive(Debug, Default)]
struct Backlog {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl NodeHandler {
    /// A handler over `executor`.
    pub fn new(executor: SharedExecutor) -> Self {
        NodeHandler {
            executor,
            backlog: HashMap::new(),
            unsent: 0,
            overflowed: 0,
        }
    }

    /// Requests dropped unanswered because their peer's backlog was full (see
    /// [`MAX_BACKLOG_REQUESTS`]).
    pub fn backlog_dropped(&self) -> u64 {
        self.overflowed
    }

    /// Requests waiting for room to answer them.
    pub fn backlog_len(&self) -> usize {
        self.backlog.values().map(|b| b.queue.len()).sum()
    }

    fn run(&mut self, peer: PeerAddr, msg: &Message<'_>, out: &mut Outbox<'_>) {
        let start = std::time::Instant::now();
        let _timer = ServiceTimer(start);
        let mut exec = lock(&self.executor);
        let unsent = &mut self.unsent;
        exec.execute(&peer, msg, &mut |reply| {
            if out.send(peer, &reply).is_err() {
                *unsent += 1;
            }
        });
    }
}

/// Records a request's service time (execution and queueing of the answer) when dropped, in
/// the `oxmem_node_service_seconds` histogram (a no-op unless a metrics recorder is installed).
struct ServiceTimer(std::time::Instant);

impl Drop for ServiceTimer {
    fn drop(&mut self) {
        metrics::histogram!("oxmem_node_service_seconds").record(self.0.elapsed().as_secs_f64());
    }
}

/// Bytes the answer to `msg` takes in the link's queue, at most.
fn answer_len(msg: &Message<'_>) -> usize {
    let data = match msg.op {
        Op::Get | Op::ArithmeticData | Op::LogicalData | Op::AcquireBlock => {
            data_beats(msg.size.min(15)) * FLIT
        }
        _ => 0,
    };
    2 * FLIT + data
}

fn lock(executor: &SharedExecutor) -> MutexGuard<'_, Executor<PeerAddr>> {
    // A panic while holding the lock cannot leave the arena half-updated in a way later
    // requests could observe as unsafe, so a poisoned lock is still usable.
    executor
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Handler for NodeHandler {
    fn on_message(&mut self, peer: PeerAddr, msg: &Message<'_>, out: &mut Outbox<'_>) {
        let waiting = self.backlog.get(&peer).is_some_and(|b| !b.queue.is_empty());
        if !waiting && out.room(&peer) >= answer_len(msg) {
            self.run(peer, msg, out);
            return;
        }
        // Keep it, in order, for when frames have left. Encoded in memory order, so it reads
        // back the same whatever the peer's byte order.
        let backlog = self.backlog.entry(peer).or_default();
        if backlog.queue.len() >= MAX_BACKLOG_REQUESTS
            || backlog.bytes + msg.buffer_len() > MAX_BACKLOG_BYTES
        {
            self.overflowed += 1;
            metrics::counter!("oxmem_node_backlog_dropped_total").increment(1);
            return;
        }
        let mut bytes = vec![0u8; msg.buffer_len()];
        if msg.emit(&mut bytes, ByteOrder::Memory).is_ok() {
            backlog.bytes += bytes.len();
            backlog.queue.push_back(bytes);
        }
    }

    fn on_peer_event(&mut self, peer: PeerAddr, event: PeerEvent, _out: &mut Outbox<'_>) {
        if matches!(event, PeerEvent::Closed | PeerEvent::Failed(_)) {
            // Requests of a connection that ended are not answered on a later one.
            self.backlog.remove(&peer);
        }
    }

    fn poll(&mut self, _now: Instant, out: &mut Outbox<'_>) -> Option<Instant> {
        let peers: Vec<PeerAddr> = self.backlog.keys().copied().collect();
        for peer in peers {
            while let Some(bytes) = self.backlog.get_mut(&peer).and_then(|b| {
                let bytes = b.queue.pop_front()?;
                b.bytes -= bytes.len();
                Some(bytes)
            }) {
                let Ok(msg) = Message::parse(&bytes, ByteOrder::Memory) else {
                    continue;
                };
                if out.connection(&peer).is_none() {
                    continue; // the peer is gone: drop what it asked
                }
                if out.room(&peer) < answer_len(&msg) {
                    let b = self.backlog.get_mut(&peer).expect("present");
                    b.bytes += bytes.len();
                    b.queue.push_front(bytes);
                    break;
                }
                self.run(peer, &msg, out);
            }
        }
        self.backlog.retain(|_, b| !b.queue.is_empty());
        None
    }
}

/// A memory node: one executor, served by one engine per transport.
#[derive(Debug)]
pub struct NodeServer {
    executor: SharedExecutor,
    engines: Vec<Engine>,
}

impl NodeServer {
    /// A node over `executor`, serving nothing yet.
    pub fn new(executor: Executor<PeerAddr>) -> Self {
        NodeServer {
            executor: Arc::new(Mutex::new(executor)),
            engines: Vec::new(),
        }
    }

    /// Serves every peer that reaches `transport`.
    ///
    /// # Errors
    /// When the engine thread cannot start.
    pub fn serve<T: Transport>(
        &mut self,
        transport: T,
        config: EngineConfig,
    ) -> std::io::Result<PeerAddr> {
        let local = transport.local_addr();
        let config = EngineConfig {
            accept: true,
            name: format!("oxmem-node {local}"),
            ..config
        };
        let engine = Engine::spawn(transport, NodeHandler::new(self.executor.clone()), config)?;
        self.engines.push(engine);
        Ok(local)
    }

    /// The executor, to read counters or change grants while serving.
    pub fn executor(&self) -> &SharedExecutor {
        &self.executor
    }

    /// The engines, one per transport, for their counters.
    pub fn engines(&self) -> &[Engine] {
        &self.engines
    }

    /// Stops every engine.
    ///
    /// # Errors
    /// The first IO error an engine stopped with.
    pub fn shutdown(self) -> std::io::Result<()> {
        let mut result = Ok(());
        for e in self.engines {
            if let Err(err) = e.shutdown() {
                result = result.and(Err(err));
            }
        }
        result
    }
}
