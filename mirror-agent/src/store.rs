//! The agent's desired state in an embedded ACID store (redb) under `--state-dir`.
//!
//! Every API change is one write transaction: the objects it touches and, with a ClientToken,
//! the answer to replay. A change is acknowledged only after its transaction committed, so a
//! restart or `kill -9` at any moment keeps every acknowledged change.

use std::{path::Path, sync::Arc};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

use crate::records::{
    FilterRecord, FlowLogRecord, ReceiverRecord, SessionRecord, SessionState, TargetRecord,
    TokenRecord,
};

/// Objects by `kind/id`, JSON values.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// ClientToken answers by `Action/token`.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: decoding {key}: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("store: encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("store: creating {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Filter,
    Target,
    Session,
    FlowLog,
    Receiver,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Filter => "filter/",
            Kind::Target => "target/",
            Kind::Session => "session/",
            Kind::FlowLog => "flowlog/",
            Kind::Receiver => "receiver/",
        }
    }
}

/// Everything the store holds, read in one consistent snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub filters: Vec<FilterRecord>,
    pub targets: Vec<TargetRecord>,
    pub sessions: Vec<SessionRecord>,
    pub flow_logs: Vec<FlowLogRecord>,
    pub receivers: Vec<ReceiverRecord>,
}

impl Snapshot {
    pub fn filter(&self, id: &str) -> Option<&FilterRecord> {
        self.filters.iter().find(|f| f.id == id)
    }
    pub fn target(&self, id: &str) -> Option<&TargetRecord> {
        self.targets.iter().find(|t| t.id == id)
    }
    pub fn session(&self, id: &str) -> Option<&SessionRecord> {
        self.sessions.iter().find(|s| s.id == id)
    }
    pub fn flow_log(&self, id: &str) -> Option<&FlowLogRecord> {
        self.flow_logs.iter().find(|f| f.id == id)
    }
    pub fn receiver(&self, id: &str) -> Option<&ReceiverRecord> {
        self.receivers.iter().find(|r| r.id == id)
    }
}

/// Changes to commit together.
#[derive(Debug, Default)]
pub struct Batch {
    puts: Vec<(String, Vec<u8>)>,
    deletes: Vec<String>,
    tokens: Vec<(String, Vec<u8>)>,
}

impl Batch {
    pub fn put_filter(&mut self, f: &FilterRecord) -> Result<(), StoreError> {
        self.put(Kind::Filter, &f.id, f)
    }
    pub fn put_target(&mut self, t: &TargetRecord) -> Result<(), StoreError> {
        self.put(Kind::Target, &t.id, t)
    }
    pub fn put_session(&mut self, s: &SessionRecord) -> Result<(), StoreError> {
        self.put(Kind::Session, &s.id, s)
    }
    /// Sessions that use a filter get re-applied when it changes (by the API or a declared
    /// source): each one not being deleted gets a new generation, and `Created` ones become
    /// `Modifying` until the reconciler settles them.
    pub fn touch_sessions_of_filter(
        &mut self,
        snap: &Snapshot,
        filter_id: &str,
    ) -> Result<(), StoreError> {
        for s in snap.sessions.iter().filter(|s| s.filter_id == filter_id) {
            if s.state == SessionState::Deleting {
                continue;
            }
            let mut s = s.clone();
            s.generation += 1;
            if s.state == SessionState::Created {
                s.state = SessionState::Modifying;
            }
            self.put_session(&s)?;
        }
        Ok(())
    }
    pub fn put_flow_log(&mut self, f: &FlowLogRecord) -> Result<(), StoreError> {
        self.put(Kind::FlowLog, &f.id, f)
    }
    pub fn put_receiver(&mut self, r: &ReceiverRecord) -> Result<(), StoreError> {
        self.put(Kind::Receiver, &r.id, r)
    }
    fn put<T: Serialize>(&mut self, kind: Kind, id: &str, v: &T) -> Result<(), StoreError> {
        self.puts
            .push((format!("{}{id}", kind.prefix()), serde_json::to_vec(v)?));
        Ok(())
    }
    pub fn delete(&mut self, kind: Kind, id: &str) {
        self.deletes.push(format!("{}{id}", kind.prefix()));
    }
    pub fn put_token(&mut self, key: &str, t: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.push((key.to_string(), serde_json::to_vec(t)?));
        Ok(())
    }
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && self.tokens.is_empty()
    }
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: key.to_string(),
        source,
    })
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let db = Database::create(state_dir.join("state.redb"))?;
        // Create the tables so that readers never see them missing.
        let tx = db.begin_write()?;
        {
            tx.open_table(OBJECTS)?;
            tx.open_table(TOKENS)?;
        }
        tx.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        let mut snap = Snapshot::default();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let key = k.value();
            let bytes = v.value();
            if key.starts_with(Kind::Filter.prefix()) {
                snap.filters.push(decode(key, bytes)?);
            } else if key.starts_with(Kind::Target.prefix()) {
                snap.targets.push(decode(key, bytes)?);
            } else if key.starts_with(Kind::Session.prefix()) {
                snap.sessions.push(decode(key, bytes)?);
            } else if key.starts_with(Kind::FlowLog.prefix()) {
                snap.flow_logs.push(decode(key, bytes)?);
            } else if key.starts_with(Kind::Receiver.prefix()) {
                snap.receivers.push(decode(key, bytes)?);
            }
        }
        Ok(snap)
    }

    pub fn token(&self, key: &str) -> Result<Option<TokenRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOKENS)?;
        match table.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Commits the batch atomically (and durably: redb fsyncs on commit).
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut objects = tx.open_table(OBJECTS)?;
            for (k, v) in &batch.puts {
                objects.insert(k.as_str(), v.as_slice())?;
            }
            for k in &batch.deletes {
                objects.remove(k.as_str())?;
            }
            let mut tokens = tx.open_table(TOKENS)?;
            for (k, v) in &batch.tokens {
                tokens.insert(k.as_str(), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets ClientToken answers older than `max_age_secs` (clouds keep them for hours).
    pub fn prune_tokens(&self, now: i64, max_age_secs: i64) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut tokens = tx.open_table(TOKENS)?;
            let mut old = Vec::new();
            for entry in tokens.iter()? {
                let (k, v) = entry?;
                let t: TokenRecord = decode(k.value(), v.value())?;
                if now - t.created_unix > max_age_secs {
                    old.push(k.value().to_string());
                }
            }
            for k in old {
                tokens.remove(k.as_str())?;
                removed += 1;
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}
