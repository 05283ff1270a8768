//! Where the coordinator keeps its metadata.
//!
//! The coordinator's state is a set of records (nodes, tenants, sessions, regions, counters),
//! each stored as JSON under a key such as `region/42`. A [`MetadataStore`] loads them all at
//! start (or on becoming leader) and applies batches of changes atomically, so a crash between
//! two changes of one operation can never leave half an operation behind. The embedded store
//! is redb; clusters use etcd. [`MemoryStore`] is for tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// Why the store failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (disk, network, etcd).
    #[error("metadata store: {0}")]
    Backend(String),
    /// This coordinator lost leadership: it must stop writing.
    #[error("not the leader any more")]
    NotLeader,
}

/// A durable key-value store for the coordinator's records.
pub trait MetadataStore: Send + Sync + 'static {
    /// Every record, sorted by key.
    fn load_all(&self) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;

    /// Applies `changes` atomically: all or none.
    fn apply(&self, changes: Vec<Change>) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A store in memory: loses everything when dropped. For tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl MetadataStore for MemoryStore {
    async fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let map = self
            .map
            .lock()
            .map_err(|_| StoreError::Backend("poisoned".into()))?;
        Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| StoreError::Backend("poisoned".into()))?;
        for c in changes {
            match c {
                Change::Put { key, value } => {
                    map.insert(key, value);
                }
                Change::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }
}
