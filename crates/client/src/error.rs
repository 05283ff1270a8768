//! Errors of the transfer engine.

use oxmem_link::LinkError;

/// What went wrong with a request or an endpoint.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The node refused the access (outside the grants, read-only, beyond its memory).
    /// `address` is the first refused address.
    #[error("access denied at {address:#x}")]
    Denied { address: u64 },
    /// No complete answer within the request's timeout. For a write, some of its parts may
    /// already have been applied; for a read, the caller's buffer was not touched.
    #[error("timed out")]
    Timeout,
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The link failed (the peer stopped answering).
    #[error("link failed: {0}")]
    LinkFailed(LinkError),
    /// The peer answered with a message that does not fit the request (wrong opcode or
    /// size): it does not follow TileLink.
    #[error("protocol violation by the peer: {0}")]
    Protocol(&'static str),
    /// Caller: the request is not valid (zero length, address overflow, bad width…).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The endpoint's engine stopped.
    #[error("endpoint shut down")]
    Shutdown,
    /// Creating the transport or the engine failed.
    #[error("io: {0}")]
    Io(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}
