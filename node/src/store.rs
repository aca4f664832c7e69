//! The node's store: sled in `<data_dir>/store`, one tree per module.
//!
//! A `meta` tree holds `schema_version` (u32 LE). [`Store::open`] runs the
//! migration steps from the stored version up to [`SCHEMA_VERSION`] and
//! refuses a store written by a newer binary. Writes that must survive a
//! crash call [`Store::flush`] (or [`Store::flush_async`]) before they are
//! acknowledged.
//!
//! sled 0.34 takes an exclusive `flock` on open and releases it from its
//! background flusher thread some moments *after* the last `Db` handle is
//! dropped (spacejam/sled#1289). So [`Store::open`] waits, boundedly
//! ([`LOCK_WAIT`]), for a lock that is held: an in-process restart (tests,
//! a node restarting its services) then opens cleanly, and a second process
//! on the same data dir still gets [`StoreError::Locked`] after that wait.

use std::path::{Path, PathBuf};

/// Current schema version.
pub const SCHEMA_VERSION: u32 = 2;

/// How long [`Store::open`] waits for sled's file lock to be released. The
/// release can wait for a flush in progress, which on a loaded machine
/// takes seconds; a second node on the same data dir hears of it after
/// this.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Trees the node uses, one per module.
pub const TREES: [&str; 5] = ["anchors", "capacity", "jobs", "ledger", "receipts"];

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed.
    #[error("store at {path}: {source}")]
    Sled {
        /// Store path.
        path: PathBuf,
        /// Cause.
        source: sled::Error,
    },
    /// Another handle (another process, or one of this process's not yet
    /// fully closed) held the store's lock for all of [`LOCK_WAIT`].
    #[error(
        "store at {path} is in use: expected no other node on this data dir, found sled's lock \
         held for {waited_ms} ms"
    )]
    Locked {
        /// Store path.
        path: PathBuf,
        /// How long the open waited.
        waited_ms: u64,
    },
    /// The store was written by a newer binary.
    #[error(
        "store at {path} has schema version {found}, newer than this binary's {supported}: upgrade rendertrust"
    )]
    TooNew {
        /// Store path.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// The stored version is unreadable.
    #[error("store at {path}: schema_version is not a u32")]
    BadVersion {
        /// Store path.
        path: PathBuf,
    },
}

/// The node's store (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store under `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        let err = |source| StoreError::Sled {
            path: path.clone(),
            source,
        };
        let db = open_waiting(&path)?;
        let store = Store {
            db,
            path: path.clone(),
        };
        let meta = store.tree("meta")?;
        let found = match meta.get("schema_version").map_err(err)? {
            None => 0,
            Some(v) => u32::from_le_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::BadVersion { path: path.clone() })?,
            ),
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for version in found..SCHEMA_VERSION {
            store.migrate_from(version)?;
            meta.insert("schema_version", &(version + 1).to_le_bytes())
                .map_err(err)?;
        }
        let starts = meta
            .get("started_count")
            .map_err(err)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        meta.insert("started_count", &(starts + 1).to_le_bytes())
            .map_err(err)?;
        store.flush()?;
        Ok(store)
    }

    /// One migration step: from `version` to `version + 1`.
    fn migrate_from(&self, version: u32) -> Result<(), StoreError> {
        match version {
            // 0 → 1: a fresh store; create the module trees.
            0 => {
                for t in TREES {
                    self.tree(t)?;
                }
                Ok(())
            }
            // 1 → 2: the anchor journal (`anchor::journal`).
            1 => {
                self.tree(crate::anchor::journal::TREE)?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A module's tree.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|source| StoreError::Sled {
            path: self.path.clone(),
            source,
        })
    }

    /// The stored schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let v = self
            .tree("meta")?
            .get("schema_version")
            .map_err(|source| StoreError::Sled {
                path: self.path.clone(),
                source,
            })?;
        Ok(
            v.and_then(|v| v.as_ref().try_into().ok().map(u32::from_le_bytes))
                .unwrap_or(0),
        )
    }

    /// Flushes to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|source| StoreError::Sled {
                path: self.path.clone(),
                source,
            })
    }

    /// Flushes to disk without blocking the runtime.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|source| StoreError::Sled {
                path: self.path.clone(),
                source,
            })
    }
}

/// Whether sled refused to open because its file lock is held. sled 0.34
/// reports this as an `io::ErrorKind::Other` whose text names the lock
/// (`config.rs`), so the text is all there is to match.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// `sled::open`, retrying for at most [`LOCK_WAIT`] while the lock is held.
fn open_waiting(path: &Path) -> Result<sled::Db, StoreError> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_held(&e) => {
                let waited = start.elapsed();
                if waited >= LOCK_WAIT {
                    return Err(StoreError::Locked {
                        path: path.to_path_buf(),
                        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                tracing::debug!(path = %path.display(), "store lock held; waiting");
                std::thread::sleep(pause.min(LOCK_WAIT.saturating_sub(waited)));
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(source) => {
                return Err(StoreError::Sled {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_keeps_data_and_version() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            s.tree("jobs").unwrap().insert("k", "v").unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.tree("jobs").unwrap().get("k").unwrap().unwrap().as_ref(),
            b"v"
        );
    }

    #[test]
    fn migrates_a_v1_store_to_v2_with_the_anchor_journal() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.tree("jobs").unwrap().insert("k", "v").unwrap();
            // What a v1 store looks like: no `anchors` tree.
            assert!(s.db.drop_tree("anchors").unwrap());
            s.tree("meta")
                .unwrap()
                .insert("schema_version", &1u32.to_le_bytes())
                .unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        let names = s.db.tree_names();
        assert!(names.iter().any(|n| n.as_ref() == b"anchors"), "{names:?}");
        assert!(s.tree("jobs").unwrap().get("k").unwrap().is_some());
    }

    #[test]
    fn a_held_store_is_refused_as_locked_after_the_wait() {
        let d = tempfile::tempdir().unwrap();
        let held = Store::open(d.path()).unwrap();
        match Store::open(d.path()) {
            Err(StoreError::Locked { waited_ms, .. }) => {
                assert!(waited_ms >= LOCK_WAIT.as_millis() as u64, "{waited_ms}")
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        // Dropped: the open waits out sled's background release.
        Store::open(d.path()).unwrap();
    }

    #[test]
    fn refuses_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.tree("meta")
                .unwrap()
                .insert("schema_version", &99u32.to_le_bytes())
                .unwrap();
            s.flush().unwrap();
        }
        assert!(matches!(
            Store::open(d.path()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
