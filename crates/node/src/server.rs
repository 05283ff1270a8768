//! Serving the executor over the network: an engine [`Handler`] that executes every request
//! a peer sends and answers it, and [`NodeServer`], which runs one engine per transport over a
//! shared executor.

use std::sync::{Arc, Mutex, MutexGuard};

use oxmem_net::engine::{Engine, EngineConfig, Handler, Outbox};
use oxmem_net::{PeerAddr, Transport};
use oxmem_wire::Message;

use crate::executor::Executor;

/// The executor shared by the engines of a node.
pub type SharedExecutor = Arc<Mutex<Executor<PeerAddr>>>;

/// Runs on an engine thread: executes each request and queues the answer to its peer.
#[derive(Debug)]
pub struct NodeHandler {
    executor: SharedExecutor,
    /// Answers the link refused (a reply larger than the peer's frames, say).
    unsent: u64,
}

impl NodeHandler {
    /// A handler over `executor`.
    pub fn new(executor: SharedExecutor) -> Self {
        NodeHandler {
            executor,
            unsent: 0,
        }
    }
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
        let mut exec = lock(&self.executor);
        let unsent = &mut self.unsent;
        exec.execute(&peer, msg, &mut |reply| {
            if out.send(peer, &reply).is_err() {
                *unsent += 1;
            }
        });
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
