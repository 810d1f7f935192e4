//! Stored files served as mapped windows, and sent without a copy on
//! plain TCP connections.
//!
//! A blob (or a fill's spool) on local disk is read as windows: each one a
//! read-only mapping of part of the file, handed on as ordinary `Bytes`.
//! Every path can read those bytes (TLS encrypts them, HTTP/2 frames
//! them), but on a plain TCP connection nothing needs to: the connection's
//! writer ([`Window::find`]) recognises a window's bytes by their address
//! and asks the kernel to send the file's pages (`sendfile`), so the bytes
//! are never copied through kura and the mapping is never touched. Pages
//! of a mapping count towards a process's resident memory only once they
//! are touched, so such a window costs address space, not memory.
//!
//! Whether the mapping will be read is decided where the window is made:
//! inside a plain connection's task ([`SENDS_FILES`]) it is not, and the
//! mapping is made lazily and large; elsewhere its pages are faulted in up
//! front and it stays small, bounding what a reader keeps resident.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use kura_core::ByteStream;

tokio::task_local! {
    /// Set for the task of a connection that sends windows with
    /// `sendfile`: windows made while serving it are not read by kura.
    pub static SENDS_FILES: bool;
}

/// Bytes mapped at a time when the mapping is read: its pages count as
/// resident while a window is being sent, so this bounds a reader's
/// footprint.
const READ_WINDOW: u64 = 2 * 1024 * 1024;

/// Bytes mapped at a time when the kernel sends them from the file: only
/// address space, so fewer, larger mappings.
const SENT_WINDOW: u64 = 16 * 1024 * 1024;

/// Mapping offsets must be page-aligned; 64 KiB is a multiple of every
/// page size Linux uses (4, 16 and 64 KiB).
const MAP_ALIGN: u64 = 64 * 1024;

/// A mapped part of a stored file.
///
/// Safety of the mapping: kura never changes a stored file's existing
/// bytes. Objects are written to a staging file and renamed into place,
/// and appends only add bytes past what readers are told exists; deletes
/// unlink, which leaves both the mapping and the descriptor valid.
pub struct Window {
    map: memmap2::Mmap,
    /// Kept open while the window lives: the writer sends from it.
    _file: Arc<File>,
    /// Where in the file the mapping starts.
    offset: u64,
}

/// Every live window by the address its mapping starts at: how the writer
/// tells a window's bytes from any others.
static LIVE: LazyLock<RwLock<BTreeMap<usize, Live>>> = LazyLock::new(Default::default);
/// How many windows are live: lets writers skip the lookup when none are.
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Bytes sent from files so far (`kura_sent_from_file_bytes_total`).
static SENT_FROM_FILES: AtomicU64 = AtomicU64::new(0);

/// Bytes the kernel has sent straight from stored files.
pub fn sent_from_files() -> u64 {
    SENT_FROM_FILES.load(Ordering::Relaxed)
}

struct Live {
    end: usize,
    fd: RawFd,
    offset: u64,
}

fn live() -> std::sync::RwLockWriteGuard<'static, BTreeMap<usize, Live>> {
    LIVE.write().unwrap_or_else(|p| p.into_inner())
}

impl Window {
    /// Map `len` bytes of `file` from `pos` (within the file), faulting
    /// them in now if they will be read.
    fn map(file: Arc<File>, pos: u64, len: u64, read: bool) -> io::Result<Window> {
        let aligned = pos - pos % MAP_ALIGN;
        let mut options = memmap2::MmapOptions::new();
        options.offset(aligned).len((pos - aligned + len) as usize);
        if read {
            options.populate();
        }
        // SAFETY: see the type's doc; the range is within the file.
        let map = unsafe { options.map(&*file)? };
        let start = map.as_ptr() as usize;
        live().insert(
            start,
            Live {
                end: start + map.len(),
                fd: file.as_raw_fd(),
                offset: aligned,
            },
        );
        LIVE_COUNT.fetch_add(1, Ordering::Relaxed);
        Ok(Window {
            map,
            _file: file,
            offset: aligned,
        })
    }

    /// The file and offset `bytes` were mapped from, if they lie in a live
    /// window. The caller must hold what keeps `bytes` alive (the `Bytes`
    /// owning the window) while it uses the descriptor.
    pub fn find(bytes: &[u8]) -> Option<(RawFd, u64)> {
        find_at(bytes.as_ptr() as usize, bytes.len())
    }
}

/// The live window holding `len` bytes at address `at`, as the file and
/// offset they were mapped from.
fn find_at(at: usize, len: usize) -> Option<(RawFd, u64)> {
    if len == 0 || LIVE_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let windows = LIVE.read().unwrap_or_else(|p| p.into_inner());
    let (start, w) = windows.range(..=at).next_back()?;
    (at + len <= w.end).then(|| (w.fd, w.offset + (at - start) as u64))
}

impl Drop for Window {
    fn drop(&mut self) {
        // Out of the registry before the mapping goes (the fields drop
        // after this): its addresses may be mapped again at once.
        live().remove(&(self.map.as_ptr() as usize));
        LIVE_COUNT.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// A local file's `range` as mapped windows.
pub fn stream(file: File, range: Range<u64>) -> ByteStream {
    // Inside a connection that sends files, the windows are never read.
    let read = !SENDS_FILES.try_with(|s| *s).unwrap_or(false);
    let window = if read { READ_WINDOW } else { SENT_WINDOW };
    let file = Arc::new(file);
    let windows = futures::stream::try_unfold(range.start, move |pos| {
        let file = file.clone();
        let end = range.end;
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = window.min(end - pos);
            let map = move || -> io::Result<Bytes> {
                let w = Window::map(file, pos, len, read)?;
                let skip = (pos - w.offset) as usize;
                Ok(Bytes::from_owner(w).slice(skip..))
            };
            // Faulting pages in may wait for the disk: not on a runtime
            // thread. An unread mapping waits for nothing.
            let bytes = if read {
                tokio::task::spawn_blocking(map)
                    .await
                    .map_err(io::Error::other)??
            } else {
                map()?
            };
            Ok(Some((bytes, pos + len)))
        }
    });
    Box::pin(windows)
}

/// A connection that can send a file's bytes itself.
pub trait SendFile {
    /// Whether [`SendFile::poll_send_file`] works on this connection.
    fn sends_files(&self) -> bool {
        false
    }

    /// Send up to `len` bytes of `fd` from `offset`; the bytes sent.
    fn poll_send_file(
        &mut self,
        _cx: &mut Context<'_>,
        _fd: RawFd,
        _offset: u64,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

impl SendFile for tokio::net::TcpStream {
    fn sends_files(&self) -> bool {
        cfg!(target_os = "linux")
    }

    #[cfg(target_os = "linux")]
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        fd: RawFd,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let socket = self.as_raw_fd();
        loop {
            ready!(self.poll_write_ready(cx))?;
            let sent = self.try_io(tokio::io::Interest::WRITABLE, || {
                let mut at = offset as libc::off_t;
                // SAFETY: both descriptors are open (the caller holds the
                // window); sendfile reads the file, writes the socket and
                // updates `at`, nothing else.
                let n = unsafe { libc::sendfile(socket, fd, &mut at, len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    SENT_FROM_FILES.fetch_add(n as u64, Ordering::Relaxed);
                    Ok(n as usize)
                }
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

impl<T> SendFile for tokio_rustls::server::TlsStream<T> {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::StreamExt;

    const MIB: usize = 1024 * 1024;

    pub(crate) fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 65536) as u8)
            .collect()
    }

    pub(crate) fn file_of(data: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, data).unwrap();
        let file = File::open(&path).unwrap();
        (dir, file)
    }

    /// The windows of `range` as made in a task that does (or does not)
    /// send files.
    pub(crate) async fn windows(file: File, range: Range<u64>, sends_files: bool) -> Vec<Bytes> {
        SENDS_FILES
            .scope(sends_files, async move {
                stream(file, range)
                    .map(|w| w.unwrap())
                    .collect::<Vec<_>>()
                    .await
            })
            .await
    }

    #[tokio::test]
    async fn windows_name_their_file_and_offset_while_they_live() {
        let data = pattern(40 * MIB + 5);
        for sends_files in [false, true] {
            let (_dir, file) = file_of(&data);
            let fd = file.as_raw_fd();
            let range = 100_001..(data.len() as u64 - 3);
            let chunks = windows(file, range.clone(), sends_files).await;
            let size = if sends_files {
                SENT_WINDOW
            } else {
                READ_WINDOW
            };
            assert_eq!(
                chunks.len() as u64,
                (range.end - range.start).div_ceil(size),
                "windows of {size} bytes"
            );
            let mut pos = range.start;
            let mut seen = Vec::new();
            for c in &chunks {
                assert_eq!(&c[..], &data[pos as usize..pos as usize + c.len()]);
                assert_eq!(Window::find(c), Some((fd, pos)));
                // Any part of a window names its own place in the file.
                for skip in [1, 2, 3, c.len() / 2, c.len() - 1] {
                    let part = c.slice(skip..);
                    assert_eq!(Window::find(&part), Some((fd, pos + skip as u64)));
                }
                seen.push((c.as_ptr() as usize, c.len()));
                pos += c.len() as u64;
            }
            assert_eq!(pos, range.end);
            // Ordinary memory is no window.
            assert_eq!(Window::find(&data[..10]), None);
            drop(chunks);
            for (at, len) in seen {
                assert_eq!(find_at(at, len), None, "a dropped window is forgotten");
            }
        }
    }
}
