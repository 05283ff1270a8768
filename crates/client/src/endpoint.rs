//! `Endpoint`: reads, writes, batches and atomics against one memory node.

use std::time::Duration;

use oxmem_link::HeaderVariant;
use oxmem_net::engine::EngineStats;
use oxmem_net::fault::FaultConfig;
use oxmem_net::udp::UdpConfig;
use oxmem_net::{PeerAddr, Transport};
use oxmem_wire::ByteOrder;
use tokio::sync::oneshot;

use crate::client::{Client, ClientOptions, NodeOptions};
use crate::error::Error;
use crate::handler::{AtomicOp, Kind, Reply};
use crate::{ClientStats, Target};

/// How an endpoint behaves.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Header variant to open the connection in.
    pub variant: HeaderVariant,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Longest the connection may take to open.
    pub connect_timeout: Duration,
    /// Write unaligned edges with PutPartialData (off for peers that lack it).
    pub partial_writes: bool,
    /// Most TileLink messages in flight (TileLink source ids in use).
    pub max_in_flight: u32,
    /// Largest TLoE frame towards this node, when smaller than the transport's.
    pub max_frame: Option<usize>,
    /// Largest single message, in bytes (a power of two), when smaller than frames allow.
    pub max_message: Option<usize>,
    /// Data byte order of the node.
    pub byte_order: ByteOrder,
    /// Receive buffer for responses (channel D), in flits: how many response flits may be in
    /// flight (see [`ClientOptions::rx_buffer_flits`]).
    pub rx_buffer_flits: u32,
    /// UDP socket settings (largest datagram, socket buffers) for `udp://` targets.
    pub udp: UdpConfig,
    /// Faults to inject into this endpoint's traffic (tests, chaos runs).
    pub faults: Option<FaultConfig>,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        let c = ClientOptions::default();
        let n = NodeOptions::default();
        EndpointOptions {
            variant: n.variant,
            timeout: c.timeout,
            connect_timeout: c.connect_timeout,
            partial_writes: n.partial_writes,
            max_in_flight: c.max_in_flight,
            max_frame: n.max_frame,
            max_message: n.max_message,
            byte_order: n.byte_order,
            rx_buffer_flits: c.rx_buffer_flits,
            udp: c.udp,
            faults: c.faults,
        }
    }
}

impl EndpointOptions {
    fn split(&self) -> (ClientOptions, NodeOptions) {
        (
            ClientOptions {
                timeout: self.timeout,
                connect_timeout: self.connect_timeout,
                max_in_flight: self.max_in_flight,
                rx_buffer_flits: self.rx_buffer_flits,
                udp: self.udp,
                faults: self.faults,
            },
            NodeOptions {
                variant: self.variant,
                max_frame: self.max_frame,
                max_message: self.max_message,
                partial_writes: self.partial_writes,
                byte_order: self.byte_order,
            },
        )
    }
}

/// A connection to one memory node, usable from many threads at once: a [`Client`] of its
/// own, talking to one node.
///
/// Blocking calls ([`read`](Self::read), [`write`](Self::write), …) and async calls
/// ([`read_async`](Self::read_async), …) may be mixed. Every request is split into TileLink
/// messages that the endpoint's engine thread keeps in flight as far as credits and the
/// window allow. Read data is assembled in one buffer and handed over only when the whole read
/// has arrived, so a failed or timed-out read never leaves a half-filled buffer.
#[derive(Debug)]
pub struct Endpoint {
    client: Client,
    peer: PeerAddr,
    closed: bool,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Say goodbye, briefly, unless unwinding from a panic.
        if !self.closed && !std::thread::panicking() {
            self.closed = true;
            let _ = self.client.close(self.peer, Duration::from_millis(200));
        }
    }
}

impl Endpoint {
    /// Connects to the node at `target` over UDP (from an ephemeral port) or raw Ethernet.
    ///
    /// # Errors
    /// [`Error::Io`] when the socket cannot be opened (raw Ethernet needs root or
    /// CAP_NET_RAW), [`Error::Timeout`] when the node does not answer.
    pub fn connect(target: &Target, options: EndpointOptions) -> Result<Endpoint, Error> {
        let (copts, nopts) = options.split();
        let (client, peer) = match target {
            Target::Udp(addr) => (Client::udp(addr.is_ipv6(), copts)?, PeerAddr::Udp(*addr)),
            Target::Ethernet { interface, peer } => (
                Client::ethernet(interface, copts)?,
                PeerAddr::Ethernet(*peer),
            ),
        };
        Self::open(client, peer, nopts)
    }

    /// Connects to the node at `peer` through `transport`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the connection does not open in time, [`Error::Io`] when the
    /// engine cannot start.
    pub fn with_transport<T: Transport>(
        transport: T,
        peer: PeerAddr,
        options: EndpointOptions,
    ) -> Result<Endpoint, Error> {
        let (copts, nopts) = options.split();
        Self::open(Client::with_transport(transport, copts)?, peer, nopts)
    }

    fn open(client: Client, peer: PeerAddr, options: NodeOptions) -> Result<Endpoint, Error> {
        client.connect(peer, options)?;
        Ok(Endpoint {
            client,
            peer,
            closed: false,
        })
    }

    /// Closes the connection (the 1.1 close handshake, waiting at most `connect_timeout`)
    /// once everything in flight is done. Dropping an endpoint does the same, bounded to
    /// 200 ms, so the node does not keep retransmitting to a client that left.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the node does not answer the close in time.
    pub fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        let wait = self.client.options().connect_timeout;
        self.client.close(self.peer, wait)
    }

    /// The node's address.
    pub fn peer(&self) -> PeerAddr {
        self.peer
    }

    /// The client under this endpoint (its local address is what the node sees).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Counters of this endpoint.
    pub fn stats(&self) -> &ClientStats {
        self.client.stats()
    }

    /// Counters of the engine under it (frames, bytes, sleeps).
    pub fn engine_stats(&self) -> &EngineStats {
        self.client.engine_stats()
    }

    fn submit(
        &self,
        address: u64,
        kind: Kind,
    ) -> Result<oneshot::Receiver<Result<Reply, Error>>, Error> {
        self.client.submit(self.peer, address, kind)
    }

    /// Reads `buf.len()` bytes at `address`.
    ///
    /// # Errors
    /// [`Error::Denied`], [`Error::Timeout`], [`Error::PeerClosed`], [`Error::LinkFailed`]…;
    /// `buf` is untouched on error.
    ///
    /// # Panics
    /// When called from inside an async runtime (use [`read_async`](Self::read_async)).
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), Error> {
        let rx = self.submit(
            address,
            Kind::Read {
                len: buf.len(),
                into: Vec::new(),
            },
        )?;
        match rx.blocking_recv().map_err(|_| Error::Shutdown)?? {
            Reply::Read(data) => {
                buf.copy_from_slice(&data);
                Ok(())
            }
            _ => Err(Error::Protocol("reply kind")),
        }
    }

    /// Writes `data` at `address`.
    ///
    /// # Errors
    /// As [`read`](Self::read). After [`Error::Timeout`] part of the data may be written.
    pub fn write(&self, address: u64, data: &[u8]) -> Result<(), Error> {
        let rx = self.submit(
            address,
            Kind::Write {
                data: data.to_vec(),
            },
        )?;
        rx.blocking_recv().map_err(|_| Error::Shutdown)?.map(|_| ())
    }

    /// Applies an atomic operation to the `width`-byte little-endian integer at `address`
    /// and returns its previous value.
    ///
    /// # Errors
    /// As [`read`](Self::read), and [`Error::InvalidRequest`] for a width other than 1, 2, 4
    /// or 8 or an address not aligned to it.
    pub fn atomic(
        &self,
        address: u64,
        op: AtomicOp,
        width: u8,
        operand: u64,
    ) -> Result<u64, Error> {
        let rx = self.submit(address, Kind::Atomic { op, width, operand })?;
        match rx.blocking_recv().map_err(|_| Error::Shutdown)?? {
            Reply::Atomic(v) => Ok(v),
            _ => Err(Error::Protocol("reply kind")),
        }
    }

    /// Adds `v` to the u64 at `address`; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn fetch_add(&self, address: u64, v: u64) -> Result<u64, Error> {
        self.atomic(address, AtomicOp::Add, 8, v)
    }

    /// Stores `v` in the u64 at `address`; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn swap(&self, address: u64, v: u64) -> Result<u64, Error> {
        self.atomic(address, AtomicOp::Swap, 8, v)
    }

    /// Stores the signed minimum of the i64 at `address` and `v`; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn fetch_min(&self, address: u64, v: i64) -> Result<i64, Error> {
        self.atomic(address, AtomicOp::Min, 8, v as u64)
            .map(|x| x as i64)
    }

    /// Stores the signed maximum; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn fetch_max(&self, address: u64, v: i64) -> Result<i64, Error> {
        self.atomic(address, AtomicOp::Max, 8, v as u64)
            .map(|x| x as i64)
    }

    /// Bitwise AND; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn fetch_and(&self, address: u64, v: u64) -> Result<u64, Error> {
        self.atomic(address, AtomicOp::And, 8, v)
    }

    /// Bitwise OR; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn fetch_or(&self, address: u64, v: u64) -> Result<u64, Error> {
        self.atomic(address, AtomicOp::Or, 8, v)
    }

    /// Bitwise XOR; returns the previous value.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub fn fetch_xor(&self, address: u64, v: u64) -> Result<u64, Error> {
        self.atomic(address, AtomicOp::Xor, 8, v)
    }

    /// Reads `buf.len()` bytes at `address`, asynchronously. Dropping the future cancels the
    /// wait; the request still completes or times out inside the engine, and `buf` is only
    /// written once the whole read has arrived.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn read_async(&self, address: u64, buf: &mut [u8]) -> Result<(), Error> {
        let rx = self.submit(
            address,
            Kind::Read {
                len: buf.len(),
                into: Vec::new(),
            },
        )?;
        match rx.await.map_err(|_| Error::Shutdown)?? {
            Reply::Read(data) => {
                buf.copy_from_slice(&data);
                Ok(())
            }
            _ => Err(Error::Protocol("reply kind")),
        }
    }

    /// Writes `data` at `address`, asynchronously.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub async fn write_async(&self, address: u64, data: &[u8]) -> Result<(), Error> {
        let rx = self.submit(
            address,
            Kind::Write {
                data: data.to_vec(),
            },
        )?;
        rx.await.map_err(|_| Error::Shutdown)?.map(|_| ())
    }

    /// An atomic operation, asynchronously.
    ///
    /// # Errors
    /// As [`atomic`](Self::atomic).
    pub async fn atomic_async(
        &self,
        address: u64,
        op: AtomicOp,
        width: u8,
        operand: u64,
    ) -> Result<u64, Error> {
        let rx = self.submit(address, Kind::Atomic { op, width, operand })?;
        match rx.await.map_err(|_| Error::Shutdown)?? {
            Reply::Atomic(v) => Ok(v),
            _ => Err(Error::Protocol("reply kind")),
        }
    }

    /// Starts a read and returns at once; [`Ticket::wait`] gives its data. For callers that
    /// keep many requests in flight from one thread (benchmarks, pipelines).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] or [`Error::Shutdown`] when the request cannot start.
    pub fn start_read(&self, address: u64, len: usize) -> Result<Ticket, Error> {
        self.submit(
            address,
            Kind::Read {
                len,
                into: Vec::new(),
            },
        )
        .map(Ticket)
    }

    /// Starts a read into `buf` (all of it) and returns at once; the ticket's
    /// `Completed::Read` gives the same buffer back, filled. Reusing buffers this way, data is
    /// copied once, from the frame into the buffer, and nothing is allocated per read.
    ///
    /// # Errors
    /// As [`start_read`](Self::start_read).
    pub fn start_read_into(&self, address: u64, buf: Vec<u8>) -> Result<Ticket, Error> {
        let len = buf.len();
        self.submit(address, Kind::Read { len, into: buf })
            .map(Ticket)
    }

    /// Reads `len` bytes at `address` into a new buffer (one copy, from the frames).
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_to_vec(&self, address: u64, len: usize) -> Result<Vec<u8>, Error> {
        match self.start_read(address, len)?.wait()? {
            Completed::Read(v) => Ok(v),
            _ => Err(Error::Protocol("reply kind")),
        }
    }

    /// Starts a write and returns at once.
    ///
    /// # Errors
    /// As [`start_read`](Self::start_read).
    pub fn start_write(&self, address: u64, data: &[u8]) -> Result<Ticket, Error> {
        self.submit(
            address,
            Kind::Write {
                data: data.to_vec(),
            },
        )
        .map(Ticket)
    }

    /// Starts an atomic operation and returns at once.
    ///
    /// # Errors
    /// As [`start_read`](Self::start_read).
    pub fn start_atomic(
        &self,
        address: u64,
        op: AtomicOp,
        width: u8,
        operand: u64,
    ) -> Result<Ticket, Error> {
        self.submit(address, Kind::Atomic { op, width, operand })
            .map(Ticket)
    }

    /// Starts a batch of requests that are all in flight together.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            endpoint: self,
            ops: Vec::new(),
        }
    }
}

/// A request in flight, started with [`Endpoint::start_read`] and friends.
#[derive(Debug)]
pub struct Ticket(pub(crate) oneshot::Receiver<Result<Reply, Error>>);

impl Ticket {
    /// Blocks until the request completes.
    ///
    /// # Errors
    /// The request's error.
    ///
    /// # Panics
    /// When called from inside an async runtime (await the ticket instead).
    pub fn wait(self) -> Result<Completed, Error> {
        convert(self.0.blocking_recv().map_err(|_| Error::Shutdown)?)
    }
}

impl std::future::Future for Ticket {
    type Output = Result<Completed, Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| convert(r.map_err(|_| Error::Shutdown)?))
    }
}

/// The result of one operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    Read(Vec<u8>),
    Write,
    Atomic(u64),
}

/// Many reads, writes and atomics submitted together and completed together.
#[derive(Debug)]
pub struct Batch<'e> {
    endpoint: &'e Endpoint,
    ops: Vec<(u64, Kind)>,
}

impl Batch<'_> {
    /// Adds a read of `len` bytes at `address`.
    pub fn read(&mut self, address: u64, len: usize) -> &mut Self {
        self.ops.push((
            address,
            Kind::Read {
                len,
                into: Vec::new(),
            },
        ));
        self
    }

    /// Adds a write.
    pub fn write(&mut self, address: u64, data: &[u8]) -> &mut Self {
        self.ops.push((
            address,
            Kind::Write {
                data: data.to_vec(),
            },
        ));
        self
    }

    /// Adds an atomic operation.
    pub fn atomic(&mut self, address: u64, op: AtomicOp, width: u8, operand: u64) -> &mut Self {
        self.ops
            .push((address, Kind::Atomic { op, width, operand }));
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn submit_all(&mut self) -> Vec<Result<oneshot::Receiver<Result<Reply, Error>>, Error>> {
        self.ops
            .drain(..)
            .map(|(a, k)| self.endpoint.submit(a, k))
            .collect()
    }

    /// Submits everything and waits for all of it; one result per operation, in order.
    pub fn run(&mut self) -> Vec<Result<Completed, Error>> {
        self.submit_all()
            .into_iter()
            .map(|rx| convert(rx?.blocking_recv().map_err(|_| Error::Shutdown)?))
            .collect()
    }

    /// As [`run`](Self::run), asynchronously.
    pub async fn run_async(&mut self) -> Vec<Result<Completed, Error>> {
        let mut out = Vec::with_capacity(self.ops.len());
        for rx in self.submit_all() {
            out.push(match rx {
                Ok(rx) => match rx.await {
                    Ok(r) => convert(r),
                    Err(_) => Err(Error::Shutdown),
                },
                Err(e) => Err(e),
            });
        }
        out
    }
}

pub(crate) fn convert(r: Result<Reply, Error>) -> Result<Completed, Error> {
    Ok(match r? {
        Reply::Read(v) => Completed::Read(v),
        Reply::Write => Completed::Write,
        Reply::Atomic(v) => Completed::Atomic(v),
    })
}
