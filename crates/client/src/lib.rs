//! `oxmem-client`: the transfer engine.
//!
//! An [`Endpoint`] talks to one memory node: [`Endpoint::read`], [`Endpoint::write`] of any
//! length and alignment, atomics ([`Endpoint::fetch_add`], [`Endpoint::swap`], …), and
//! [`Batch`]es completed together, each blocking or async. Transfers are split into aligned
//! power-of-two TileLink messages that fit the path's frames ([`split`]), kept in flight as
//! far as credits and the window allow, and matched back by source id.

#![forbid(unsafe_code)]

use std::sync::atomic::AtomicU64;

mod client;
mod endpoint;
pub mod error;
mod handler;
pub mod pool;
pub mod split;
pub mod target;

pub use client::{Client, ClientOptions, NodeOptions};
pub use endpoint::{Batch, Completed, Endpoint, EndpointOptions, Ticket};
pub use error::Error;
pub use handler::AtomicOp;
pub use pool::{AllocOptions, Pool, PoolError, PoolOptions, Region};
pub use target::{Target, TargetError};

/// Counters of an endpoint.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub messages_sent: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub timeouts: AtomicU64,
    /// Responses that matched no request in flight.
    pub unexpected: AtomicU64,
}
