//! `Client`: one transport and engine shared by every node a program talks to.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oxmem_link::HeaderVariant;
use oxmem_net::engine::{Engine, EngineConfig, EngineStats, PeerSettings};
use oxmem_net::ethernet::EthernetTransport;
use oxmem_net::fault::{FaultConfig, FaultCounters, FaultInjector, FaultStats};
use oxmem_net::udp::{UdpConfig, UdpTransport};
use oxmem_net::{PeerAddr, Transport};
use oxmem_wire::ByteOrder;
use tokio::sync::oneshot;

use crate::ClientStats;
use crate::endpoint::{Completed, Ticket};
use crate::error::Error;
use crate::handler::{AtomicOp, ClientHandler, Command, Kind, PeerConfig, Reply};

/// How a client behaves, whatever node it talks to.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest a request may take.
    pub timeout: Duration,
    /// Longest a connection may take to open.
    pub connect_timeout: Duration,
    /// Most TileLink messages in flight per node (TileLink source ids in use).
    pub max_in_flight: u32,
    /// Receive buffer for responses (channel D), in flits, per node: how many response flits
    /// may be in flight. The other channels, which a memory node does not use towards a
    /// client, get a token buffer of 384 flits (a 1.1 peer starts with 128 and is then granted
    /// 256, which is what ETRI's endpoint waits for on every channel).
    pub rx_buffer_flits: u32,
    /// UDP socket settings (largest datagram, socket buffers).
    pub udp: UdpConfig,
    /// Faults to inject into everything this client sends (tests, chaos runs).
    pub faults: Option<FaultConfig>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            max_in_flight: 4096,
            rx_buffer_flits: 1 << 17,
            udp: UdpConfig::default(),
            faults: None,
        }
    }
}

/// How to talk to one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeOptions {
    /// Header variant to open the connection in.
    pub variant: HeaderVariant,
    /// Largest TLoE frame towards this node, when smaller than the transport's.
    pub max_frame: Option<usize>,
    /// Largest single message, in bytes (a power of two), when smaller than frames allow.
    pub max_message: Option<usize>,
    /// Write unaligned edges with PutPartialData (off for nodes that lack it).
    pub partial_writes: bool,
    /// Data byte order of the node.
    pub byte_order: ByteOrder,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            variant: HeaderVariant::V1_1,
            max_frame: None,
            max_message: None,
            partial_writes: true,
            byte_order: ByteOrder::Spec,
        }
    }
}

/// The largest message size exponent whose frame fits `max_frame` bytes: a header, a
/// two-flit request header and the data beats, plus the mask flit.
pub(crate) fn max_size_for_frame(max_frame: usize) -> u8 {
    let flits = (max_frame / 8).saturating_sub(2); // TLoE header and mask
    let data_bytes = flits.saturating_sub(2) * 8; // message header + address
    let mut size = 3u8;
    while size < 15 && (1usize << (size + 1)) <= data_bytes {
        size += 1;
    }
    size
}

/// One transport and I/O engine shared by every node this program talks to: nodes see one
/// client address ([`Client::local_addr`]), which is what their grants name.
#[derive(Debug)]
pub struct Client {
    engine: Engine,
    commands: Mutex<Sender<Command>>,
    options: ClientOptions,
    max_frame: usize,
    stats: Arc<ClientStats>,
    /// What the fault injector did, when [`ClientOptions::faults`] asked for one.
    faults: Option<Arc<FaultCounters>>,
}

impl Client {
    /// A client on a UDP socket bound to an ephemeral port on every interface (IPv4, or IPv6
    /// when `ipv6`).
    ///
    /// # Errors
    /// [`Error::Io`] when the socket cannot be opened.
    pub fn udp(ipv6: bool, options: ClientOptions) -> Result<Client, Error> {
        let any: std::net::SocketAddr = if ipv6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let transport = UdpTransport::bind_with(any, options.udp)?;
        Self::with_faults(transport, options)
    }

    /// A client on a UDP socket bound to `addr` (port 0 for any). Bind to the IP the nodes
    /// will see, not a wildcard, when the address goes into grants (pools do this).
    ///
    /// # Errors
    /// [`Error::Io`] when the socket cannot be opened.
    pub fn udp_at(addr: std::net::SocketAddr, options: ClientOptions) -> Result<Client, Error> {
        let transport = UdpTransport::bind_with(addr, options.udp)?;
        Self::with_faults(transport, options)
    }

    /// A client on raw Ethernet interface `interface` (needs root or CAP_NET_RAW).
    ///
    /// # Errors
    /// [`Error::Io`] when the interface cannot be opened.
    pub fn ethernet(interface: &str, options: ClientOptions) -> Result<Client, Error> {
        let transport = EthernetTransport::open(interface)?;
        Self::with_faults(transport, options)
    }

    fn with_faults<T: Transport>(transport: T, options: ClientOptions) -> Result<Client, Error> {
        match options.faults {
            Some(f) => {
                let injector = FaultInjector::new(transport, f);
                let counters = injector.counters();
                let mut client = Self::with_transport(injector, options)?;
                client.faults = Some(counters);
                Ok(client)
            }
            None => Self::with_transport(transport, options),
        }
    }

    /// A client on any transport.
    ///
    /// # Errors
    /// [`Error::Io`] when the engine thread cannot start.
    pub fn with_transport<T: Transport>(
        transport: T,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let max_frame = transport.link_params().max_frame;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(ClientStats::default());
        let handler = ClientHandler::new(options.max_in_flight, rx, stats.clone());
        let mut config = EngineConfig {
            name: format!("oxmem-client {}", transport.local_addr()),
            ..EngineConfig::default()
        };
        // 1.1 starts the peer at 128: buffer + 128 hands out exactly `rx_buffer_flits` more in
        // as few power-of-two grants as possible.
        let d = options.rx_buffer_flits.saturating_add(128);
        config.link.rx_buffer_flits = [384, 384, 384, d, 384];
        config.link.send_queue_bytes = 64 << 20;
        let engine = Engine::spawn(transport, handler, config)?;
        Ok(Client {
            engine,
            commands: Mutex::new(tx),
            options,
            max_frame,
            stats,
            faults: None,
        })
    }

    /// The address nodes see this client at (what a grant must name).
    pub fn local_addr(&self) -> PeerAddr {
        self.engine.local_addr()
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Counters of this client.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// What the fault injector has done to the frames this client sent (`None` without
    /// [`ClientOptions::faults`]).
    pub fn fault_stats(&self) -> Option<FaultStats> {
        self.faults.as_ref().map(|c| c.snapshot())
    }

    /// Counters of the engine under it (frames, bytes, sleeps).
    pub fn engine_stats(&self) -> &EngineStats {
        self.engine.stats()
    }

    fn command(&self, c: Command) -> Result<(), Error> {
        self.commands
            .lock()
            .map_err(|_| Error::Shutdown)?
            .send(c)
            .map_err(|_| Error::Shutdown)?;
        self.engine.waker().wake();
        Ok(())
    }

    /// Opens the connection to `node` (or confirms it is open).
    ///
    /// # Errors
    /// [`Error::Timeout`] when the node does not answer within `connect_timeout`.
    pub fn connect(&self, node: PeerAddr, options: NodeOptions) -> Result<(), Error> {
        let max_frame = options
            .max_frame
            .map_or(self.max_frame, |m| m.min(self.max_frame));
        let mut max_size = max_size_for_frame(max_frame);
        if let Some(m) = options.max_message {
            max_size = max_size.min(m.max(1).ilog2() as u8);
        }
        let config = PeerConfig {
            variant: options.variant,
            max_size,
            partial_writes: options.partial_writes,
            settings: PeerSettings {
                max_frame: Some(max_frame),
                byte_order: Some(options.byte_order),
            },
        };
        let (reply, wait) = oneshot::channel();
        let deadline = self.engine.now() + self.options.connect_timeout;
        self.command(Command::Connect {
            peer: node,
            config,
            reply,
            deadline,
        })?;
        wait.blocking_recv().map_err(|_| Error::Shutdown)?
    }

    /// Closes the connection to `node` (the 1.1 close handshake) within `wait`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the node does not answer the close in time.
    pub fn close(&self, node: PeerAddr, wait: Duration) -> Result<(), Error> {
        // A std channel, not tokio's: this may run in Drop, possibly inside an async runtime,
        // where tokio's blocking receive would panic.
        let (reply, rx) = mpsc::channel();
        let deadline = self.engine.now() + wait;
        self.command(Command::Close {
            peer: node,
            reply,
            deadline,
        })?;
        rx.recv_timeout(wait + Duration::from_millis(100))
            .map_err(|_| Error::Timeout)?
    }

    pub(crate) fn submit(
        &self,
        node: PeerAddr,
        address: u64,
        kind: Kind,
    ) -> Result<oneshot::Receiver<Result<Reply, Error>>, Error> {
        let len = match &kind {
            Kind::Read { len, .. } => *len,
            Kind::Write { data } => data.len(),
            Kind::Atomic { width, .. } => {
                if !matches!(width, 1 | 2 | 4 | 8) {
                    return Err(Error::InvalidRequest("atomic width must be 1, 2, 4 or 8"));
                }
                if address % u64::from(*width) != 0 {
                    return Err(Error::InvalidRequest(
                        "atomic address must be aligned to its width",
                    ));
                }
                usize::from(*width)
            }
        };
        if len == 0 {
            return Err(Error::InvalidRequest("zero-length transfer"));
        }
        if address.checked_add(len as u64).is_none() {
            return Err(Error::InvalidRequest("address range overflows"));
        }
        let (reply, rx) = oneshot::channel();
        let deadline = self.engine.now() + self.options.timeout;
        self.command(Command::Submit {
            peer: node,
            address,
            kind,
            deadline,
            reply,
        })?;
        Ok(rx)
    }

    /// Starts a read of `len` bytes at `address` on `node`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] or [`Error::Shutdown`] when the request cannot start.
    pub fn start_read(&self, node: PeerAddr, address: u64, len: usize) -> Result<Ticket, Error> {
        self.submit(
            node,
            address,
            Kind::Read {
                len,
                into: Vec::new(),
            },
        )
        .map(Ticket)
    }

    /// Starts a read into `buf` (all of it); the ticket gives the buffer back, filled.
    ///
    /// # Errors
    /// As [`start_read`](Self::start_read).
    pub fn start_read_into(
        &self,
        node: PeerAddr,
        address: u64,
        buf: Vec<u8>,
    ) -> Result<Ticket, Error> {
        let len = buf.len();
        self.submit(node, address, Kind::Read { len, into: buf })
            .map(Ticket)
    }

    /// Starts a write.
    ///
    /// # Errors
    /// As [`start_read`](Self::start_read).
    pub fn start_write(&self, node: PeerAddr, address: u64, data: &[u8]) -> Result<Ticket, Error> {
        self.submit(
            node,
            address,
            Kind::Write {
                data: data.to_vec(),
            },
        )
        .map(Ticket)
    }

    /// Starts an atomic operation.
    ///
    /// # Errors
    /// As [`start_read`](Self::start_read).
    pub fn start_atomic(
        &self,
        node: PeerAddr,
        address: u64,
        op: AtomicOp,
        width: u8,
        operand: u64,
    ) -> Result<Ticket, Error> {
        self.submit(node, address, Kind::Atomic { op, width, operand })
            .map(Ticket)
    }

    /// Reads `buf.len()` bytes at `address` on `node`; `buf` is untouched on error.
    ///
    /// # Errors
    /// [`Error::Denied`], [`Error::Timeout`], [`Error::PeerClosed`], [`Error::LinkFailed`]…
    pub fn read(&self, node: PeerAddr, address: u64, buf: &mut [u8]) -> Result<(), Error> {
        match self.start_read(node, address, buf.len())?.wait()? {
            Completed::Read(data) => {
                buf.copy_from_slice(&data);
                Ok(())
            }
            _ => Err(Error::Protocol("reply kind")),
        }
    }

    /// Writes `data` at `address` on `node`.
    ///
    /// # Errors
    /// As [`read`](Self::read). After [`Error::Timeout`] part of the data may be written.
    pub fn write(&self, node: PeerAddr, address: u64, data: &[u8]) -> Result<(), Error> {
        self.start_write(node, address, data)?.wait().map(|_| ())
    }
}
