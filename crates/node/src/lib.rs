//! `oxmem-node`: the memory expansion node's core, sans-IO.
//!
//! - [`Arena`]: the DRAM the node lends, one anonymous mapping on huge pages when the host has
//!   them ([`Backing`] says what it got).
//! - [`GrantTable`]: which peer may read or write which bytes; an open window
//!   ([`PeerMatch::Any`]) lets any OmniXtend host in. [`parse_size`] and [`Window`] read the
//!   command line's `8GiB` and `BASE:LEN`.
//! - [`Executor`]: executes TileLink TL-UH requests (Get, PutFullData, PutPartialData,
//!   ArithmeticData, LogicalData, Intent) under the grants and says what to answer. Everything
//!   outside a grant is answered `denied`, never with data.
//!
//! No sockets, no threads, no clock: the I/O engine in `oxmem-net` feeds parsed messages in and
//! sends the replies out. [`fuzz`] holds the body of the executor's fuzz target.
//!
//! Around that core, for a node in a pool: [`server`] runs the engines over one executor,
//! [`admin`] serves the coordinator's grant and scrub calls over HTTP ([`NodeAdmin`],
//! [`AdminServer`]), and [`agent`] registers the node with the coordinator and heartbeats it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod arena;
pub mod error;
pub mod executor;
pub mod fuzz;
pub mod grant;
pub mod server;

pub use admin::{AdminServer, GrantEntry, NodeAdmin, PutOutcome};
pub use agent::{Agent, AgentConfig, AgentEvent, AgentStatus};
pub use arena::{Arena, ArenaOptions, Backing, PageKind};
pub use error::{Error, Result};
pub use executor::{Counters, DeniedCounters, DenyReason, Executor, OpCounters};
pub use grant::{
    Access, GRANT_ADDRESS_ALIGN, Grant, GrantId, GrantTable, PeerMatch, Window, parse_size,
};
pub use server::{NodeHandler, NodeServer, SharedExecutor};
