//! [`LocalOp::ForwardInto`](nexus_protocol::LocalOp::ForwardInto): the
//! daemon writes a file's data straight into a descriptor its caller
//! passed, as OpenSSH's multiplexing client hands its stdio to the master.
//! Each byte then skips a copy through `shim.sock` and a wake-up of the
//! caller's process.
//!
//! The exchange on `shim.sock`, after the request: the daemon relays a
//! `FileStart`; the caller answers with one byte carrying the file's
//! descriptor (`SCM_RIGHTS`); the daemon writes the file's data into it,
//! closes it and sends `Written` before the next `FileStart` or the final
//! reply. The caller sends nothing else: any other byte, or its end, is a
//! hang-up, and the call is abandoned as with `Forward`.
//!
//! Only a regular file or the null device is taken ([`takes`]): a write
//! into one never waits on another program, so it cannot hold a thread for
//! good. Output into a pipe, a terminal or a socket is relayed as frames,
//! and the command writes it itself. Writes (and the final close, which
//! may flush a network file system) run on the blocking pool, one at a time,
//! while the next frame is read: the daemon's one thread never waits on
//! the caller's file. The file's bytes pass through buffers wiped after use
//! (a `file sync` set may hold credentials).

use std::io::Write;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nexus_protocol::LocalReply;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// Whether the daemon writes into a file like this one: a regular file or
/// the null device, whose writes never wait on another program.
pub(crate) fn takes(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_file()
        || (meta.file_type().is_char_device()
            && std::fs::metadata("/dev/null").is_ok_and(|null| null.rdev() == meta.rdev()))
}

/// The caller's side of a `ForwardInto` call: where descriptors come from,
/// and how its hang-up shows.
#[derive(Debug)]
pub(crate) struct Caller<'a> {
    conn: &'a UnixStream,
    /// Set while the daemon waits for a descriptor: the caller's byte is
    /// then not a hang-up.
    awaiting: AtomicBool,
    /// Told when `awaiting` clears.
    settled: Notify,
}

impl<'a> Caller<'a> {
    pub(crate) fn new(conn: &'a UnixStream) -> Self {
        Self {
            conn,
            awaiting: AtomicBool::new(false),
            settled: Notify::new(),
        }
    }

    /// Called before a `FileStart` is relayed: the caller's next byte is
    /// its descriptor, not a hang-up.
    pub(crate) fn expect_descriptor(&self) {
        self.awaiting.store(true, Ordering::SeqCst);
    }

    /// The descriptor the caller sends for the file just announced.
    async fn descriptor(&self) -> std::io::Result<OwnedFd> {
        let got = self
            .conn
            .async_io(Interest::READABLE, || receive(self.conn))
            .await;
        self.awaiting.store(false, Ordering::SeqCst);
        self.settled.notify_one();
        got
    }

    /// Resolves when the caller hangs up (or sends what it must not).
    pub(crate) async fn hung_up(&self) {
        loop {
            if self.awaiting.load(Ordering::SeqCst) {
                self.settled.notified().await;
                continue;
            }
            if self.conn.readable().await.is_err() {
                return;
            }
            if self.awaiting.load(Ordering::SeqCst) {
                continue;
            }
            let mut byte = [0u8; 1];
            match self.conn.try_io(Interest::READABLE, || {
                rustix::net::recv(self.conn, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT)
                    .map_err(std::io::Error::from)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The end, an error, or a byte nobody asked for.
                _ => return,
            }
        }
    }
}

/// One byte and the descriptor riding on it.
fn receive(conn: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    #[cfg(target_os = "linux")]
    let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let flags = RecvFlags::DONTWAIT;
    let got = rustix::net::recvmsg(
        conn,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut control,
        flags,
    )?;
    if got.bytes == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    // Exactly one descriptor; any other (cut short, or more than one: the
    // rest are closed as they drop) ends the call.
    let mut fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) || fds.len() != 1 {
        return Err(std::io::Error::other(
            "the caller must send exactly one descriptor for the file",
        ));
    }
    fds.pop()
        .ok_or_else(|| std::io::Error::other("the caller sent no descriptor for the file"))
}

/// What a finished write hands back: the file, the buffer (for the next
/// frame) and how it went.
type Done = (std::fs::File, Zeroizing<Vec<u8>>, std::io::Result<()>);

/// The file being written.
struct Open {
    /// Bytes the laptop announced.
    expected: u64,
    /// Bytes handed to writes so far.
    given: u64,
    /// Bytes known written.
    written: u64,
    /// The file, while no write holds it.
    file: Option<std::fs::File>,
    /// The write under way.
    pending: Option<JoinHandle<Done>>,
}

impl Drop for Open {
    /// The caller's descriptor is closed on the blocking pool: a close may
    /// flush a network file system's pages.
    fn drop(&mut self) {
        if let Some(file) = self.file.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(runtime.spawn_blocking(move || drop(file)));
        }
    }
}

/// The files of one `ForwardInto` answer.
pub(crate) struct Files<'c, 'a> {
    caller: &'c Caller<'a>,
    current: Option<Open>,
    /// A buffer back from a finished write, for the next frame.
    spare: Zeroizing<Vec<u8>>,
}

impl<'c, 'a> Files<'c, 'a> {
    pub(crate) fn new(caller: &'c Caller<'a>) -> Self {
        Self {
            caller,
            current: None,
            spare: Zeroizing::new(Vec::new()),
        }
    }

    /// Before a `FileStart` is relayed: see [`Caller::expect_descriptor`].
    pub(crate) fn expect_descriptor(&self) {
        self.caller.expect_descriptor();
    }

    /// After a `FileStart` of `size` bytes was relayed: takes the caller's
    /// descriptor for it. `Err`: the caller hung up or broke protocol.
    pub(crate) async fn open(&mut self, size: u64) -> std::io::Result<()> {
        let fd = self.caller.descriptor().await?;
        let file = std::fs::File::from(fd);
        if !file.metadata().is_ok_and(|m| takes(&m)) {
            return Err(std::io::Error::other(
                "the daemon writes only into a regular file or /dev/null",
            ));
        }
        self.current = Some(Open {
            expected: size,
            given: 0,
            written: 0,
            file: Some(file),
            pending: None,
        });
        Ok(())
    }

    /// Writes `body[at]` into the current file: `body` goes to the write and
    /// a spare buffer takes its place. Waits only for the previous write.
    /// `Err`: the `Written` that ends the call.
    pub(crate) async fn write(
        &mut self,
        body: &mut Zeroizing<Vec<u8>>,
        at: Range<usize>,
    ) -> Result<(), LocalReply> {
        let Some(open) = self.current.as_mut() else {
            return Err(written(0, "the laptop sent data before a file header"));
        };
        // The write under way ends first, so nothing reaches the file
        // after the caller is told the call ended.
        let file = settle(open, &mut self.spare).await?;
        let len = at.len() as u64;
        if open.given + len > open.expected {
            open.file = Some(file);
            return Err(written(
                open.written,
                "the laptop sent more data than it announced",
            ));
        }
        let buf = Zeroizing::new(std::mem::replace(
            &mut **body,
            std::mem::take(&mut *self.spare),
        ));
        open.given += len;
        open.pending = Some(tokio::task::spawn_blocking(move || {
            let r = (&file).write_all(&buf[at]);
            (file, buf, r)
        }));
        Ok(())
    }

    /// Ends the current file, if one is open: waits for its last write,
    /// closes the descriptor, and gives the `Written` to send. Its `error`
    /// is set when the call must end.
    pub(crate) async fn close(&mut self) -> Option<LocalReply> {
        let mut open = self.current.take()?;
        Some(match settle(&mut open, &mut self.spare).await {
            Ok(file) => {
                // Closed as `open` drops, off this thread.
                open.file = Some(file);
                LocalReply::Written {
                    bytes: open.written,
                    error: None,
                    broken_pipe: false,
                }
            }
            Err(reply) => reply,
        })
    }
}

/// Waits for `open`'s write under way; the file back, or the `Written`
/// that ends the call.
async fn settle(
    open: &mut Open,
    spare: &mut Zeroizing<Vec<u8>>,
) -> Result<std::fs::File, LocalReply> {
    if let Some(pending) = open.pending.take() {
        let Ok((file, buf, result)) = pending.await else {
            return Err(written(open.written, "the write into the file failed"));
        };
        *spare = buf;
        match result {
            Ok(()) => {
                open.written = open.given;
                open.file = Some(file);
            }
            Err(e) => {
                return Err(LocalReply::Written {
                    bytes: open.written,
                    broken_pipe: e.kind() == std::io::ErrorKind::BrokenPipe,
                    error: Some(format!("writing the file: {e}")),
                });
            }
        }
    }
    open.file
        .take()
        .ok_or_else(|| written(open.written, "the file was lost"))
}

fn written(bytes: u64, error: &str) -> LocalReply {
    LocalReply::Written {
        bytes,
        error: Some(error.to_owned()),
        broken_pipe: false,
    }
}
