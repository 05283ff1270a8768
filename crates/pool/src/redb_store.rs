//! [`RedbStore`]: the embedded [`MetadataStore`], one redb table of key → JSON bytes in a
//! file under a data directory. Every batch is one durable write transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::{Change, MetadataStore, StoreError};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// The file name inside the data directory.
pub const FILE_NAME: &str = "coordinator.redb";

/// A [`MetadataStore`] in a redb file.
#[derive(Debug, Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `dir/coordinator.redb`, creating `dir` if needed.
    ///
    /// # Errors
    ///
    /// The directory cannot be created, or the file cannot be opened (e.g. another process
    /// has it open).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir.as_ref()).map_err(backend)?;
        let path = dir.as_ref().join(FILE_NAME);
        let db = Database::create(&path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(RECORDS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(RedbStore {
            db: Arc::new(db),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_blocking(db: &Database) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let table = txn.open_table(RECORDS).map_err(backend)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply_blocking(db: &Database, changes: Vec<Change>) -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(backend)?;
            for c in &changes {
                match c {
                    Change::Put { key, value } => {
                        table
                            .insert(key.as_str(), value.as_slice())
                            .map_err(backend)?;
                    }
                    Change::Delete { key } => {
                        table.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
        }
        txn.commit().map_err(backend)
    }
}

impl MetadataStore for RedbStore {
    async fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || Self::load_blocking(&db))
            .await
            .map_err(backend)?
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || Self::apply_blocking(&db, changes))
            .await
            .map_err(backend)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "oxmem-redb-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn batches_survive_reopening() {
        let dir = tmpdir("reopen");
        {
            let s = RedbStore::open(&dir).unwrap();
            s.apply(vec![
                Change::Put {
                    key: "b".into(),
                    value: b"2".to_vec(),
                },
                Change::Put {
                    key: "a".into(),
                    value: b"1".to_vec(),
                },
                Change::Put {
                    key: "c".into(),
                    value: b"3".to_vec(),
                },
            ])
            .await
            .unwrap();
            s.apply(vec![
                Change::Delete { key: "c".into() },
                Change::Put {
                    key: "a".into(),
                    value: b"9".to_vec(),
                },
            ])
            .await
            .unwrap();
        }
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(
            s.load_all().await.unwrap(),
            vec![
                ("a".to_string(), b"9".to_vec()),
                ("b".to_string(), b"2".to_vec())
            ]
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
