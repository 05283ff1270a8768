//! Options shared by the commands that talk to a memory node.

use std::time::Duration;

use clap::{Args, ValueEnum};
use oxmem_client::{EndpointOptions, Target};
use oxmem_link::HeaderVariant;
use oxmem_net::fault::FaultConfig;
use oxmem_wire::ByteOrder;

/// The OmniXtend header variant.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Variant {
    /// The "1.1" header with a message type and open/close (what public implementations use).
    #[value(name = "1.1")]
    V1_1,
    /// OmniXtend 1.0.3: no connection messages.
    #[value(name = "1.0.3")]
    V1_0_3,
}

impl From<Variant> for HeaderVariant {
    fn from(v: Variant) -> Self {
        match v {
            Variant::V1_1 => HeaderVariant::V1_1,
            Variant::V1_0_3 => HeaderVariant::V1_0_3,
        }
    }
}

/// Data byte order within flits.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Order {
    /// As the spec and SiFive hardware.
    Spec,
    /// As Western Digital's host library.
    Memory,
}

impl From<Order> for ByteOrder {
    fn from(o: Order) -> Self {
        match o {
            Order::Spec => ByteOrder::Spec,
            Order::Memory => ByteOrder::Memory,
        }
    }
}

/// How to reach a node.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The node: udp://HOST:PORT or eth://IFACE/PEER_MAC.
    #[arg(long)]
    pub target: Target,
    /// Give up on a request after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Header variant to open the connection in.
    #[arg(long, value_enum, default_value_t = Variant::V1_1)]
    pub variant: Variant,
    /// Data byte order of the node.
    #[arg(long, value_enum, default_value_t = Order::Spec)]
    pub byte_order: Order,
    /// Largest frame to send to the node, in bytes (e.g. 528 for ETRI's endpoint).
    #[arg(long)]
    pub max_frame: Option<usize>,
    /// Largest single TileLink message in bytes, e.g. 32 for ETRI's endpoint, whose read
    /// replies of 64 bytes or more are malformed.
    #[arg(long, value_parser = parse_number)]
    pub max_message: Option<u64>,
    /// Largest UDP datagram (the frame limit on udp:// targets).
    #[arg(long, default_value_t = oxmem_net::udp::MAX_DATAGRAM)]
    pub max_datagram: usize,
    /// Write unaligned edges with PutFullData pieces instead of PutPartialData (for nodes
    /// that lack PutPartialData).
    #[arg(long)]
    pub no_partial_writes: bool,
    /// Inject faults, e.g. `loss=0.05,dup=0.01,reorder=0.02,seed=7`.
    #[arg(long)]
    pub faults: Option<FaultConfig>,
}

impl ClientArgs {
    /// Endpoint options from the flags.
    pub fn options(&self) -> EndpointOptions {
        let mut o = EndpointOptions {
            variant: self.variant.into(),
            timeout: self.timeout,
            connect_timeout: self.timeout,
            partial_writes: !self.no_partial_writes,
            max_frame: self.max_frame,
            max_message: self.max_message.map(|m| m as usize),
            byte_order: self.byte_order.into(),
            faults: self.faults,
            ..EndpointOptions::default()
        };
        o.udp.max_datagram = self.max_datagram;
        o
    }
}

/// Parses an address or length: decimal, 0x hex, or a size like 4KiB.
pub fn parse_number(s: &str) -> Result<u64, String> {
    oxmem_node::parse_size(s).map_err(|e| e.to_string())
}
