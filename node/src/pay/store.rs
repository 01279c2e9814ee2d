//! The redb files payments keep (a node's ledger, a gateway's wallet), each bound to one
//! deployment so that state from another chain is never used.

use std::path::Path;

use alloy::primitives::B256;
use redb::{Database, ReadableDatabase, TableDefinition};

const META: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("meta");
const DEPLOYMENT: &str = "deployment";

/// Why a payment store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Db(#[from] redb::Error),
    #[error(
        "it belongs to another deployment (chain history {found}, this one is {expected}): use another file"
    )]
    OtherDeployment { found: B256, expected: B256 },
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Opens or creates the store at `path` for the deployment `fingerprint`, creating `table`.
pub fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    path: &Path,
    fingerprint: B256,
    table: TableDefinition<K, V>,
) -> Result<Database, StoreError> {
    let db = Database::create(path)?;
    let found = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => meta.get(DEPLOYMENT)?.map(|v| B256::from(*v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    match found {
        Some(found) if found != fingerprint => {
            Err(StoreError::OtherDeployment { found, expected: fingerprint })
        }
        Some(_) => Ok(db),
        None => {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(DEPLOYMENT, &fingerprint.0)?;
            txn.open_table(table)?;
            txn.commit()?;
            Ok(db)
        }
    }
}
