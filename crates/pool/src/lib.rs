//! `oxmem-pool`: the coordinator.
//!
//! It turns separate memory nodes into one pool: a node registry with leases, placement of
//! regions in stripes (optionally replicated) over nodes, tenants with tokens and quotas,
//! client sessions with leases, grants pushed to nodes before an allocation returns and
//! revoked before a free returns, scrubbing, and re-replication when a node dies. Its metadata
//! lives behind [`store::MetadataStore`]: redb embedded, or etcd for several coordinators.

#![forbid(unsafe_code)]

pub mod etcd;
pub mod store;
