//! Atomic multi-tree writes on sled without sled transactions.
//!
//! Why not sled's transactions: the first transaction (or `apply_batch`) switches sled 0.34,
//! process-wide, from lock-free operation to one global reader-writer lock. A transaction then
//! takes it exclusively and `flush` holds it shared across its disk I/O, so every write waits for
//! the flush in progress and group commit degenerates into write-flush-write-flush (measured in
//! bench/RESULTS.md). This module never calls either, so sled stays lock-free and writes go on
//! while the group commit flushes.
//!
//! What replaces them:
//! - **Isolation**: one writer at a time (a mutex). An operation reads current state, decides, and
//!   stages its writes; later reads in the same operation see the staged writes. Nothing is written
//!   when it returns an error. Readers outside the mutex never block.
//! - **Crash atomicity**: an operation that writes more than one key first stores its whole write
//!   set as one journal record, applies the writes, then removes the record; all three in this
//!   thread's order. sled recovers a prefix of its log, so after a crash either no journal record
//!   is left (every operation was applied whole, or not at all), or the last operation's record is,
//!   with none of its successors' writes: replaying it at open completes that operation.
//! - **Without a journal record**: an operation that calls `Tx::in_safe_order` stages its writes so
//!   that every prefix of them leaves a consistent store (indexes and records nobody can reach yet
//!   first, the write that makes them reachable last), so a crash part-way needs no completing.
//!   The hot insert of a link takes this path: the record costs sled as much log as the writes
//!   themselves (bench/RESULTS.md).
//! - **Durability** is unchanged: the caller waits for the group commit after its write returns.
//!
//! `clippy.toml` refuses sled's transactions and batches anywhere in the crate.

use std::cell::RefCell;

use sled::IVec;

use crate::domain::error::{Error, Reason, Result};

pub fn storage(error: sled::Error) -> Error {
    Error::internal(format!("sled: {error}"))
}

struct Write {
    tree: sled::Tree,
    key: IVec,
    value: Option<IVec>,
}

/// The writes an operation has staged.
#[derive(Default)]
pub struct Tx {
    writes: RefCell<Vec<Write>>,
    safe_order: std::cell::Cell<bool>,
}

impl Tx {
    /// Declares that this operation stages its writes so that any prefix of them, applied alone,
    /// leaves a consistent store: the writer then applies them without a journal record.
    pub fn in_safe_order(&self) {
        self.safe_order.set(true);
    }

    /// A view of `tree` that reads through this operation's staged writes.
    pub fn on<'a>(&'a self, tree: &'a sled::Tree) -> TxTree<'a> {
        TxTree { tree, tx: self }
    }

    fn staged(&self, tree: &sled::Tree, key: &[u8]) -> Option<Option<IVec>> {
        self.writes
            .borrow()
            .iter()
            .rev()
            .find(|write| write.key == key && write.tree.name() == tree.name())
            .map(|write| write.value.clone())
    }

    fn stage(&self, tree: &sled::Tree, key: &[u8], value: Option<IVec>) {
        self.writes.borrow_mut().push(Write {
            tree: tree.clone(),
            key: IVec::from(key),
            value,
        });
    }
}

/// One tree as an operation sees it.
pub struct TxTree<'a> {
    tree: &'a sled::Tree,
    tx: &'a Tx,
}

impl TxTree<'_> {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        let key = key.as_ref();
        match self.tx.staged(self.tree, key) {
            Some(staged) => Ok(staged),
            None => self.tree.get(key).map_err(storage),
        }
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) {
        self.tx.stage(self.tree, key.as_ref(), Some(value.into()));
    }

    /// Removes the key; returns the value it had.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        let previous = self.get(&key)?;
        if previous.is_some() {
            self.tx.stage(self.tree, key.as_ref(), None);
        }
        Ok(previous)
    }
}

/// The single writer: runs operations one at a time and applies their writes atomically.
pub struct Writer {
    db: sled::Db,
    journal: sled::Tree,
    /// The next journal sequence number; holding it is holding the right to write. `None` once a
    /// write failed half-applied: its journal record must stay the last one (it is completed at the
    /// next start), so nothing more is written in this process.
    next_seq: tokio::sync::Mutex<Option<u64>>,
    /// Set with `next_seq = None`, readable without the lock.
    refusing: std::sync::atomic::AtomicBool,
    /// Tests: stop applying after this many of an operation's writes, as a crash would.
    #[cfg(test)]
    pub crash_after: std::sync::atomic::AtomicUsize,
}

const JOURNAL_TREE: &str = "journal";

impl Writer {
    /// Opens the journal and completes the operation a crash interrupted, if any.
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        let journal = db.open_tree(JOURNAL_TREE)?;
        for entry in journal.iter() {
            let (seq, record) = entry?;
            match decode_record(&record) {
                Some(writes) => {
                    tracing::warn!(writes = writes.len(), "completing a write interrupted by a crash");
                    for (tree, key, value) in writes {
                        let tree = db.open_tree(tree)?;
                        match value {
                            Some(value) => tree.insert(key, value)?,
                            None => tree.remove(key)?,
                        };
                    }
                }
                None => tracing::error!("skipping an unreadable journal record"),
            }
            journal.remove(seq)?;
        }
        db.flush()?;
        Ok(Self {
            db: db.clone(),
            journal,
            next_seq: tokio::sync::Mutex::new(Some(0)),
            refusing: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            crash_after: std::sync::atomic::AtomicUsize::new(usize::MAX),
        })
    }

    /// Runs `operation` alone, then applies what it staged (nothing if it failed). The writes are
    /// visible to readers on return, durable only after the group commit.
    pub async fn write<T>(&self, operation: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        // An async lock: a runtime worker waiting for its turn serves other calls meanwhile.
        let mut next_seq = self.next_seq.lock().await;
        let Some(seq) = next_seq.as_mut() else {
            return Err(Error::new(
                Reason::STORE_UNAVAILABLE,
                "the store stopped writing after a storage error; restart latchkey",
            ));
        };
        let tx = Tx::default();
        let value = operation(&tx)?;
        let safe_order = tx.safe_order.get();
        let writes = tx.writes.into_inner();
        if let Err(error) = self.apply(seq, &writes, safe_order) {
            tracing::error!(%error, "a write failed part-way; no more writes until a restart completes it");
            *next_seq = None;
            self.refusing.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(storage(error));
        }
        Ok(value)
    }

    fn apply(&self, seq: &mut u64, writes: &[Write], safe_order: bool) -> sled::Result<()> {
        let journaled = writes.len() > 1 && !safe_order;
        let journal_key = seq.to_be_bytes();
        if journaled {
            self.journal.insert(journal_key, encode_record(writes))?;
            *seq += 1;
        }
        #[cfg(test)]
        let (writes, crashed) = {
            let crash_after = self.crash_after.load(std::sync::atomic::Ordering::Relaxed);
            (&writes[..writes.len().min(crash_after)], crash_after < writes.len())
        };
        for write in writes {
            match &write.value {
                Some(value) => write.tree.insert(&write.key, value.clone())?,
                None => write.tree.remove(&write.key)?,
            };
        }
        #[cfg(test)]
        if crashed {
            return Err(sled::Error::Unsupported("a simulated crash".into()));
        }
        if journaled {
            self.journal.remove(journal_key)?;
        }
        Ok(())
    }

    /// Whether a write failed part-way, so nothing more is written until a restart.
    pub fn refuses_writes(&self) -> bool {
        self.refusing.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// Journal record: per write, tree name, key and value (absent for a removal), each
/// length-prefixed (u32 big-endian; a value length of u32::MAX marks a removal).
fn encode_record(writes: &[Write]) -> Vec<u8> {
    let size: usize = writes
        .iter()
        .map(|w| 12 + w.tree.name().len() + w.key.len() + w.value.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(size);
    for write in writes {
        put(&mut out, &write.tree.name());
        put(&mut out, &write.key);
        match &write.value {
            Some(value) => put(&mut out, value),
            None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

type Recorded<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);

fn decode_record(mut record: &[u8]) -> Option<Vec<Recorded<'_>>> {
    fn take<'a>(record: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
        let (length, rest) = record.split_first_chunk::<4>()?;
        let length = u32::from_be_bytes(*length);
        if length == u32::MAX {
            *record = rest;
            return Some(None);
        }
        let (bytes, rest) = rest.split_at_checked(length as usize)?;
        *record = rest;
        Some(Some(bytes))
    }
    let mut writes = Vec::new();
    while !record.is_empty() {
        let tree = take(&mut record)??;
        let key = take(&mut record)??;
        let value = take(&mut record)?;
        writes.push((tree, key, value));
    }
    Some(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn an_operation_reads_its_own_writes_and_a_failed_one_writes_nothing() {
        let (_dir, db) = temp_db();
        let writer = Writer::open(&db).unwrap();
        let (a, b) = (db.open_tree("a").unwrap(), db.open_tree("b").unwrap());
        writer
            .write(|tx| {
                tx.on(&a).insert("k", "1");
                assert_eq!(tx.on(&a).get("k")?.as_deref(), Some(&b"1"[..]));
                assert_eq!(tx.on(&b).get("k")?, None, "trees are apart");
                assert_eq!(tx.on(&a).remove("k")?.as_deref(), Some(&b"1"[..]));
                assert_eq!(tx.on(&a).get("k")?, None);
                tx.on(&b).insert("k", "2");
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(a.get("k").unwrap(), None);
        assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"2"[..]));
        let failed: Result<()> = writer
            .write(|tx| {
                tx.on(&a).insert("x", "1");
                tx.on(&b).insert("x", "1");
                Err(Error::internal("decided against it"))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!((a.get("x").unwrap(), b.get("x").unwrap()), (None, None));
        assert!(writer.journal.is_empty(), "applied records leave the journal");

        // After a write that failed part-way, nothing more is written.
        *writer.next_seq.lock().await = None;
        let refused = writer
            .write(|tx| {
                tx.on(&a).insert("y", "1");
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), Reason::STORE_UNAVAILABLE);
        assert_eq!(a.get("y").unwrap(), None);
    }

    #[tokio::test]
    async fn a_journal_record_left_by_a_crash_is_completed_at_open() {
        let (_dir, db) = temp_db();
        let (a, b) = (db.open_tree("a").unwrap(), db.open_tree("b").unwrap());
        a.insert("gone", "x").unwrap();
        let writes = vec![
            Write {
                tree: a.clone(),
                key: IVec::from("k"),
                value: Some(IVec::from("1")),
            },
            Write {
                tree: b.clone(),
                key: IVec::from(&[0u8, 255][..]),
                value: Some(IVec::from(&[][..])),
            },
            Write {
                tree: a.clone(),
                key: IVec::from("gone"),
                value: None,
            },
        ];
        // What a crash after the record and the first write leaves behind (sled holds its lock
        // for a while after a handle drops, so the store is not reopened here).
        db.open_tree(JOURNAL_TREE)
            .unwrap()
            .insert(7u64.to_be_bytes(), encode_record(&writes))
            .unwrap();
        a.insert("k", "1").unwrap();

        let writer = Writer::open(&db).unwrap();
        assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(b.get([0u8, 255]).unwrap().as_deref(), Some(&[][..]));
        assert_eq!(a.get("gone").unwrap(), None);
        assert!(writer.journal.is_empty());
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let (_dir, db) = temp_db();
        let a = db.open_tree("a").unwrap();
        let writes = vec![
            Write {
                tree: a.clone(),
                key: IVec::from("k"),
                value: None,
            },
            Write {
                tree: a,
                key: IVec::from("v"),
                value: Some(IVec::from("value")),
            },
        ];
        let record = encode_record(&writes);
        let decoded = decode_record(&record).unwrap();
        assert_eq!(
            decoded,
            vec![
                (&b"a"[..], &b"k"[..], None),
                (&b"a"[..], &b"v"[..], Some(&b"value"[..]))
            ]
        );
        assert!(decode_record(&record[..record.len() - 1]).is_none());
    }
}
