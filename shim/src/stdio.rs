//! The container's stdio: pipes between the process and containerd's fifos.
//!
//! The process gets pipe ends, never the fifos: the shim copies, so the process does not die of
//! SIGPIPE when the client goes away, containerd sees EOF exactly when the process and its
//! children closed their side, and CloseIO can end stdin without the client's cooperation.
//! A missing path gives the process /dev/null.

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The fifo paths of one process, as containerd sent them.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// The shim's half of a process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    stdin_fifo: Option<PathBuf>,
    close_stdin: Option<oneshot::Sender<()>>,
    outputs: Vec<JoinHandle<()>>,
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe2(OFlag::O_CLOEXEC)?)
}

impl ProcessIo {
    /// Sets up the copies and returns the fds the process gets as 0, 1 and 2. The pipes are
    /// given to `owner` (the host ids of the process's user), so that a non-root process in a
    /// user namespace can reopen `/dev/stdout` and `/dev/stderr` (containerd issue 10598);
    /// /dev/null is never chowned.
    pub fn open(paths: &StdioPaths, owner: Option<(u32, u32)>) -> io::Result<(ProcessIo, [OwnedFd; 3])> {
        let mut io = ProcessIo::default();
        let stdin = if paths.stdin.is_empty() {
            dev_null()?
        } else {
            let (r, w) = cloexec_pipe()?;
            let (tx, rx) = oneshot::channel();
            io.close_stdin = Some(tx);
            io.stdin_fifo = Some(PathBuf::from(&paths.stdin));
            tokio::spawn(copy_stdin(PathBuf::from(&paths.stdin), w, rx));
            r
        };
        let mut output = |path: &str| -> io::Result<OwnedFd> {
            if path.is_empty() {
                return dev_null();
            }
            let (r, w) = cloexec_pipe()?;
            // Read-write so the open never blocks on a reader and containerd's reader sees EOF
            // only when we close it.
            let fifo = pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)?;
            let reader = pipe::Receiver::from_owned_fd(r)?;
            io.outputs.push(tokio::spawn(async move {
                let mut reader = reader;
                let mut fifo = fifo;
                if let Err(e) = tokio::io::copy(&mut reader, &mut fifo).await {
                    log::debug!("stdio copy ended: {e}");
                }
            }));
            Ok(w)
        };
        let stdout = output(&paths.stdout)?;
        let stderr = output(&paths.stderr)?;
        if let Some((uid, gid)) = owner {
            for (fd, path) in [(&stdin, &paths.stdin), (&stdout, &paths.stdout), (&stderr, &paths.stderr)] {
                if !path.is_empty() {
                    nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into()))?;
                }
            }
        }
        Ok((io, [stdin, stdout, stderr]))
    }

    /// CloseIO: the process sees EOF on stdin.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.close_stdin.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most `limit`) until the process's output reached containerd, then stops
    /// copying. Called when the process exited, before its exit is published.
    pub async fn drain(&mut self, limit: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        for handle in outputs {
            let abort = handle.abort_handle();
            if tokio::time::timeout(limit, handle).await.is_err() {
                abort.abort();
            }
        }
        self.close_stdin();
        // Unblock a stdin open that still waits for containerd to open the writer.
        if let Some(fifo) = self.stdin_fifo.take() {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
        }
    }
}

async fn copy_stdin(fifo: PathBuf, pipe_w: OwnedFd, closed: oneshot::Receiver<()>) {
    // Opening the read side blocks until containerd opens the write side; do it off the
    // runtime. EOF on the fifo or CloseIO ends the copy and closes the process's stdin.
    let open = tokio::task::spawn_blocking(move || open_read(&fifo));
    let copy = async move {
        let fifo = open.await.map_err(io::Error::other)??;
        let mut reader = pipe::Receiver::from_owned_fd(fifo)?;
        let mut writer = pipe::Sender::from_owned_fd(pipe_w)?;
        tokio::io::copy(&mut reader, &mut writer).await
    };
    tokio::select! {
        r = copy => if let Err(e) = r { log::debug!("stdin copy ended: {e}") },
        _ = closed => {}
    }
}

fn open_read(path: &Path) -> io::Result<OwnedFd> {
    Ok(OpenOptions::new().read(true).open(path)?.into())
}
