//! `oxmem-net`: moving OmniXtend frames between hosts.
//!
//! - [`Transport`]: something that sends and receives TLoE frames in batches — [`udp`] (the
//!   frame that follows the Ethernet header, in one UDP datagram) and [`ethernet`] (raw frames
//!   on an interface through AF_PACKET, EtherType 0xAAAA).
//! - [`fault::FaultInjector`]: wraps any transport to drop, duplicate, reorder, corrupt and
//!   delay frames, seeded.
//! - [`engine`]: one thread per transport that owns the socket and the link state machine of
//!   every peer, and talks to the rest of the program through queues.
//!
//! All unsafe code and raw syscalls live in the private `sys` module.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use oxmem_link::Integrity;
pub use oxmem_wire::EthernetAddress;

pub mod engine;
pub mod ethernet;
pub mod fault;
pub mod mem;
mod sys;
pub mod udp;

pub use sys::Waker;

/// The UDP port an oxmem node listens on unless told otherwise.
pub const DEFAULT_UDP_PORT: u16 = 7447;

/// Where a frame comes from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    Udp(SocketAddr),
    Ethernet(EthernetAddress),
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Udp(a) => write!(f, "udp://{a}"),
            PeerAddr::Ethernet(m) => write!(f, "eth/{m}"),
        }
    }
}

/// What the link layer must know about a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkParams {
    /// Largest TLoE frame (bytes after the Ethernet header; integrity trailer not included).
    pub max_frame: usize,
    /// Pad frames to at least this many bytes (46 on Ethernet, 0 over UDP).
    pub min_frame: usize,
    /// Integrity check the link adds (none on Ethernet, CRC-32 over UDP).
    pub integrity: Integrity,
}

/// Received frames, filled by [`Transport::recv`].
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// Per received frame: its peer and the range of its buffer holding the TLoE frame.
    frames: Vec<(PeerAddr, core::ops::Range<usize>)>,
}

impl RecvBatch {
    /// Room for `count` frames of up to `buf_len` bytes each (the whole datagram or Ethernet
    /// frame, headers included).
    pub fn new(count: usize, buf_len: usize) -> Self {
        RecvBatch {
            bufs: vec![vec![0; buf_len]; count],
            frames: Vec::with_capacity(count),
        }
    }

    /// Number of frames received by the last `recv`.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the last `recv` received nothing.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frame `i`: its sender and its TLoE bytes (plus integrity trailer, if any).
    pub fn get(&self, i: usize) -> (PeerAddr, &[u8]) {
        let (peer, range) = &self.frames[i];
        (*peer, &self.bufs[i][range.clone()])
    }

    /// Transports: the buffers to receive into.
    pub fn buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs
    }

    /// Transports: forget the previous batch.
    pub fn clear(&mut self) {
        self.frames.clear();
    }

    /// Transports: record that buffer number `self.len()` holds a frame from `peer` at `range`.
    pub fn push(&mut self, peer: PeerAddr, range: core::ops::Range<usize>) {
        debug_assert!(self.frames.len() < self.bufs.len());
        self.frames.push((peer, range));
    }
}

/// A way to send and receive TLoE frames in batches. Non-blocking, except [`Transport::wait`].
pub trait Transport: Send + fmt::Debug + 'static {
    /// The frame limits and integrity check of this transport.
    fn link_params(&self) -> LinkParams;

    /// The address peers use to reach this end.
    fn local_addr(&self) -> PeerAddr;

    /// Sends frames: each the TLoE frame (with its integrity trailer when `link_params` says
    /// so). Returns how many of the first frames were handed to the kernel; fewer than given
    /// when its buffer is full (call `wait` and retry the rest).
    ///
    /// # Errors
    /// Socket errors other than "would block", for `frames[0]` (the engine drops that frame,
    /// as the network would, and goes on).
    fn send(&mut self, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize>;

    /// Receives what has arrived, without blocking, replacing the batch's contents. Frames
    /// that are not for this end (another EtherType, another MAC) are skipped.
    ///
    /// # Errors
    /// Socket errors other than "would block".
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize>;

    /// Blocks until a frame can be received, `waker` is woken, or `timeout` passes.
    ///
    /// # Errors
    /// Errors of poll(2).
    fn wait(&mut self, waker: &Waker, timeout: Option<Duration>) -> io::Result<()>;
}
