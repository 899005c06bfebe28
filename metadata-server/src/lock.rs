//! The single-writer lock of an embedded index.
//!
//! RocksDB refuses a second opener with a terse error; we take our own
//! advisory lock first (`flock` through `File::try_lock`), record the
//! holder's pid in it, and either wait for it or refuse with a message that
//! says what to do. The lock dies with its process, so a killed backup
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::IndexError;

/// How long to wait for another process's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockWait(pub Duration);

/// A held lock; released on drop.
#[derive(Debug)]
pub struct IndexLock {
    _file: File,
}

impl IndexLock {
    /// Takes the lock at `dir/LOCK.cairn`, waiting up to `wait`.
    pub fn acquire(dir: &Path, wait: LockWait, on_wait: &dyn Fn(&str)) -> Result<Self, IndexError> {
        let io = |source| IndexError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK.cairn"))
            .map_err(io)?;
        let deadline = Instant::now() + wait.0;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let _ = file.rewind();
                    let holder = match holder.trim() {
                        "" => String::new(),
                        pid => format!(" (pid {pid})"),
                    };
                    if Instant::now() >= deadline {
                        return Err(IndexError::Locked {
                            path: dir.to_path_buf(),
                            holder,
                        });
                    }
                    if !told {
                        on_wait(&format!(
                            "index {} is in use by another cairn process{holder}; waiting up to {}s",
                            dir.display(),
                            wait.0.as_secs()
                        ));
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file })
    }
}
