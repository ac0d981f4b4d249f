//! Freezing the filesystems of a consistency group (FIFREEZE) and thawing them (FITHAW), with a
//! bound no freeze outlives: a watchdog thaws at the deadline whatever the caller does, dropping
//! a [`Freeze`] thaws, and every freeze is recorded in a state file on the host before the first
//! filesystem is frozen, so an agent killed while it holds one thaws it at its next start
//! ([`thaw_leftovers`]). A filesystem that is not frozen (thawed already, by us or by anyone)
//! thaws without error.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from `linux/fs.h`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// The default bound of a freeze.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("freezing {mount}: {source}")]
    Freeze {
        mount: PathBuf,
        source: std::io::Error,
    },
    #[error("thawing {mount}: {source}")]
    Thaw {
        mount: PathBuf,
        source: std::io::Error,
    },
    #[error("recording the freeze in {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a state file records: the mounts a freeze holds.
#[derive(Serialize, Deserialize)]
struct State {
    mounts: Vec<PathBuf>,
}

/// The mounts still frozen, taken by whoever thaws first (the caller, a drop, the watchdog).
type Held = Arc<Mutex<Option<Vec<(PathBuf, File)>>>>;

/// Filesystems frozen together; thawed by [`Freeze::thaw`], on drop, or at the deadline.
pub struct Freeze {
    held: Held,
    state: PathBuf,
    started: Instant,
    stop_watchdog: Option<mpsc::Sender<()>>,
}

fn ioctl(file: &File, request: libc::c_ulong) -> std::io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE and FITHAW take a pointer to an int the kernel ignores; `file` is an open
    // descriptor of the mount's root directory for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut arg) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Thaws one mount; one that is not frozen (EINVAL) counts as thawed.
fn thaw_one(mount: &Path, file: &File) -> Result<(), FreezeError> {
    match ioctl(file, FITHAW) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(source) => Err(FreezeError::Thaw {
            mount: mount.to_path_buf(),
            source,
        }),
    }
}

/// Thaws what `held` still holds; the first error is returned after every mount was tried.
fn thaw_held(held: &Held) -> Result<(), FreezeError> {
    let Some(mounts) = held.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return Ok(());
    };
    let mut first = Ok(());
    for (mount, file) in &mounts {
        if let Err(e) = thaw_one(mount, file) {
            tracing::error!(error = %e, "a frozen filesystem could not be thawed");
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

fn open_mount(mount: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(mount)
}

fn write_state(path: &Path, mounts: &[PathBuf]) -> Result<(), FreezeError> {
    let fail = |source| FreezeError::State {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec(&State {
        mounts: mounts.to_vec(),
    })
    .expect("a list of paths serializes");
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(fail)?;
    std::io::Write::write_all(&mut f, &body).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    File::open(path.parent().unwrap_or(Path::new("/")))
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Freezes `mounts` (their root directories) together, recording them under `state_dir` (a
/// host directory on none of them) first. Fails, with everything thawed, when one cannot be
/// frozen; thaws all at `timeout` at the latest.
pub fn freeze(
    mounts: &[PathBuf],
    timeout: Duration,
    state_dir: &Path,
) -> Result<Freeze, FreezeError> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = state_dir.join(format!("freeze-{}-{n}.json", std::process::id()));
    std::fs::create_dir_all(state_dir).map_err(|source| FreezeError::State {
        path: state_dir.to_path_buf(),
        source,
    })?;
    write_state(&state, mounts)?;
    let held: Held = Arc::new(Mutex::new(Some(Vec::new())));
    let started = Instant::now();
    for mount in mounts {
        let frozen = open_mount(mount).and_then(|f| ioctl(&f, FIFREEZE).map(|()| f));
        match frozen {
            Ok(f) => {
                if let Some(list) = held.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    list.push((mount.clone(), f));
                }
            }
            Err(source) => {
                let _ = thaw_held(&held);
                let _ = std::fs::remove_file(&state);
                return Err(FreezeError::Freeze {
                    mount: mount.clone(),
                    source,
                });
            }
        }
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let (watched, record) = (held.clone(), state.clone());
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
            tracing::warn!(
                seconds = timeout.as_secs_f64(),
                "a freeze reached its bound: thawing"
            );
            if thaw_held(&watched).is_ok() {
                let _ = std::fs::remove_file(&record);
            }
        }
    });
    Ok(Freeze {
        held,
        state,
        started,
        stop_watchdog: Some(stop),
    })
}

impl Freeze {
    /// Thaws every mount and forgets the freeze; returns how long the filesystems were frozen
    /// (up to the thaw, or to the watchdog's if it came first).
    pub fn thaw(mut self) -> Result<Duration, FreezeError> {
        self.release()
    }

    fn release(&mut self) -> Result<Duration, FreezeError> {
        let thawed = thaw_held(&self.held);
        let frozen_for = self.started.elapsed();
        if let Some(stop) = self.stop_watchdog.take() {
            let _ = stop.send(());
        }
        if thawed.is_ok() {
            let _ = std::fs::remove_file(&self.state);
        }
        thawed.map(|()| frozen_for)
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        if self.stop_watchdog.is_some()
            && let Err(e) = self.release()
        {
            tracing::error!(error = %e, "thawing a dropped freeze");
        }
    }
}

/// At an agent's start: thaws what freezes recorded under `state_dir` still hold (an agent
/// killed while frozen) and removes their records. Returns the mounts it thawed.
pub fn thaw_leftovers(state_dir: &Path) -> Result<Vec<PathBuf>, FreezeError> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Ok(vec![]);
    };
    let mut thawed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("freeze-") || !(name.ends_with(".json") || name.ends_with(".tmp")) {
            continue;
        }
        // A record is small; anything else is not one of ours.
        let body = match std::fs::metadata(&path) {
            Ok(m) if m.len() <= 1 << 20 => std::fs::read(&path).unwrap_or_default(),
            _ => continue,
        };
        let state: State = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "an unreadable freeze record");
                continue;
            }
        };
        for mount in state.mounts {
            // A mount gone since (unmounted with its pod) is not frozen any more.
            let Ok(file) = open_mount(&mount) else {
                continue;
            };
            thaw_one(&mount, &file)?;
            thawed.push(mount);
        }
        let _ = std::fs::remove_file(&path);
    }
    Ok(thawed)
}
