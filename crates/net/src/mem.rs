//! An in-process transport: endpoints joined by queues, for tests of the engine and of
//! everything above it without sockets.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oxmem_link::Integrity;

use crate::{LinkParams, PeerAddr, RecvBatch, Transport, Waker};

/// Frames waiting for one endpoint (sender, bytes), and the waker of the engine that owns it.
type Inbox = (VecDeque<(PeerAddr, Vec<u8>)>, Option<Waker>);

#[derive(Debug, Default)]
struct Hub {
    inboxes: HashMap<PeerAddr, Inbox>,
}

/// A network of [`MemTransport`]s. Frames to an address nobody holds are dropped.
#[derive(Debug, Clone, Default)]
pub struct MemNetwork {
    hub: Arc<Mutex<Hub>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport reachable at `127.0.0.1:port` (as a UDP-like address) with the given
    /// largest frame; it behaves like the UDP transport (CRC-32 integrity, no padding).
    pub fn endpoint(&self, port: u16, max_frame: usize) -> MemTransport {
        let addr = PeerAddr::Udp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        self.hub
            .lock()
            .expect("hub lock")
            .inboxes
            .entry(addr)
            .or_default();
        MemTransport {
            hub: self.hub.clone(),
            addr,
            max_frame,
        }
    }
}

/// One end of a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    hub: Arc<Mutex<Hub>>,
    addr: PeerAddr,
    max_frame: usize,
}

impl Transport for MemTransport {
    fn link_params(&self) -> LinkParams {
        LinkParams {
            max_frame: self.max_frame,
            min_frame: 0,
            integrity: Integrity::Crc32,
        }
    }

    fn local_addr(&self) -> PeerAddr {
        self.addr
    }

    fn send(&mut self, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize> {
        let mut hub = self.hub.lock().expect("hub lock");
        for (peer, bytes) in frames {
            if let Some((queue, waker)) = hub.inboxes.get_mut(peer) {
                queue.push_back((self.addr, bytes.to_vec()));
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
        Ok(frames.len())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        let mut hub = self.hub.lock().expect("hub lock");
        let (queue, _) = hub.inboxes.get_mut(&self.addr).expect("registered");
        let room = batch.buffers_mut().len();
        for i in 0..room {
            let Some((peer, bytes)) = queue.pop_front() else {
                break;
            };
            let buf = &mut batch.buffers_mut()[i];
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            batch.push(peer, 0..n);
        }
        Ok(batch.len())
    }

    fn wait(&mut self, waker: &Waker, timeout: Option<Duration>) -> io::Result<()> {
        {
            let mut hub = self.hub.lock().expect("hub lock");
            let (queue, slot) = hub.inboxes.get_mut(&self.addr).expect("registered");
            *slot = Some(waker.clone());
            if !queue.is_empty() {
                return Ok(());
            }
        }
        crate::sys::wait_readable(waker.as_raw_fd(), waker, timeout)
    }
}
