//! The container's stdio: pipes between the process and containerd's fifos.
//!
//! The process gets pipe ends, never the fifos: the shim copies, so the process does not die of
//! SIGPIPE when the client goes away, containerd sees EOF exactly when the process and its
//! children closed their side, and CloseIO can end stdin without the client's cooperation.
//! A missing path gives the process /dev/null.
//!
//! Log URIs (what `ctr run --log-uri` and nerdctl send) instead of fifos:
//! - `file:///path`: both streams appended to the file;
//! - `binary:///path?key=value`: a logger process started with the process's stdout and stderr
//!   pipes as fds 3 and 4 and a ready pipe as fd 5, which it closes once it is ready; arguments
//!   are the query's keys and values, `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its
//!   environment, as containerd-shim-runc-v2 does.

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

/// Where an output stream goes.
#[derive(Debug, PartialEq, Eq)]
enum Sink {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_sink(uri: &str) -> io::Result<Sink> {
    if uri.is_empty() {
        return Ok(Sink::Null);
    }
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("log URI {uri:?}: {why}"),
        )
    };
    if let Some(rest) = uri.strip_prefix("binary://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(bad("the logger path must be absolute"));
        }
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            args.push(percent_decode(k));
            if !v.is_empty() {
                args.push(percent_decode(v));
            }
        }
        return Ok(Sink::Binary {
            path: PathBuf::from(percent_decode(path)),
            args,
        });
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("the file path must be absolute"));
        }
        return Ok(Sink::File(PathBuf::from(percent_decode(rest))));
    }
    if uri.contains("://") {
        return Err(bad(
            "unknown scheme; fifo paths, file:// and binary:// are supported",
        ));
    }
    Ok(Sink::Fifo(PathBuf::from(uri)))
}

/// How long a `binary://` logger may take to say it is ready.
const LOGGER_READY_LIMIT: Duration = Duration::from_secs(60);

/// Who the logger is logging for.
pub struct LogContext<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
}

/// Starts a `binary://` logger on the read ends of the process's output pipes and waits until
/// it says it is ready (closes fd 5).
async fn start_logger(
    path: &Path,
    args: &[String],
    ctx: &LogContext<'_>,
    out: OwnedFd,
    err: OwnedFd,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (ready_r, ready_w) = cloexec_pipe()?;
    let mut cmd = std::process::Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", ctx.container_id)
        .env("CONTAINER_NAMESPACE", ctx.namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let raw = [
        (out.as_raw_fd(), 3),
        (err.as_raw_fd(), 4),
        (ready_w.as_raw_fd(), 5),
    ];
    // SAFETY: runs in the forked child before exec, only fcntl and dup2 (async-signal-safe),
    // reading the copied `raw` array.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [(0i32, 0i32); 3];
            for (i, (src, to)) in raw.iter().enumerate() {
                let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 10);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                high[i] = (fd, *to);
            }
            for (fd, to) in high {
                if libc::dup2(fd, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // The reaper collects the logger when it exits; nobody waits on it here.
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("start logger {}: {e}", path.display())))?;
    drop((out, err, ready_w));
    // Waited for asynchronously: the server answers every other RPC meanwhile.
    let mut ready = pipe::Receiver::from_owned_fd(ready_r)?;
    let mut buf = [0u8; 1];
    let waited = tokio::time::timeout(
        LOGGER_READY_LIMIT,
        tokio::io::AsyncReadExt::read(&mut ready, &mut buf),
    )
    .await;
    let never = |why: String| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "logger {} (pid {}) never got ready: {why}",
                path.display(),
                child.id()
            ),
        )
    };
    match waited {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(never(e.to_string())),
        Err(_) => Err(never(format!(
            "it did not close fd 5 within {LOGGER_READY_LIMIT:?}"
        ))),
    }
}

impl ProcessIo {
    /// Sets up the copies and returns the fds the process gets as 0, 1 and 2. The pipes are
    /// given to `owner` (the host ids of the process's user), so that a non-root process in a
    /// user namespace can reopen `/dev/stdout` and `/dev/stderr` (containerd issue 10598);
    /// /dev/null is never chowned.
    pub async fn open(
        paths: &StdioPaths,
        owner: Option<(u32, u32)>,
        ctx: &LogContext<'_>,
    ) -> io::Result<(ProcessIo, [OwnedFd; 3])> {
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
        let (stdout, stderr) = match (parse_sink(&paths.stdout)?, parse_sink(&paths.stderr)?) {
            (Sink::Binary { path, args }, _) => {
                let (out_r, out_w) = cloexec_pipe()?;
                let (err_r, err_w) = cloexec_pipe()?;
                start_logger(&path, &args, ctx, out_r, err_r).await?;
                (out_w, err_w)
            }
            (out, err) => (io.output(out)?, io.output(err)?),
        };
        if let Some((uid, gid)) = owner {
            for (fd, path) in [
                (&stdin, &paths.stdin),
                (&stdout, &paths.stdout),
                (&stderr, &paths.stderr),
            ] {
                if !path.is_empty() {
                    nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into()))?;
                }
            }
        }
        Ok((io, [stdin, stdout, stderr]))
    }

    /// The process's end of one output stream, with the copy to its sink running.
    fn output(&mut self, sink: Sink) -> io::Result<OwnedFd> {
        let (r, w) = match sink {
            Sink::Null => return dev_null(),
            Sink::Binary { .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a binary:// logger takes both streams: set it on stdout",
                ))
            }
            _ => cloexec_pipe()?,
        };
        let reader = pipe::Receiver::from_owned_fd(r)?;
        let copy = match sink {
            Sink::Fifo(path) => {
                // Read-write so the open never blocks on a reader and containerd's reader sees
                // EOF only when we close it.
                let fifo = pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(path)?;
                tokio::spawn(copy_out(reader, fifo))
            }
            Sink::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                tokio::spawn(copy_out(reader, tokio::fs::File::from_std(file)))
            }
            Sink::Null | Sink::Binary { .. } => unreachable!("handled above"),
        };
        self.outputs.push(copy);
        Ok(w)
    }

    /// For a process with a pty: the helper gets /dev/null, the container makes the pty.
    pub fn for_terminal() -> io::Result<(ProcessIo, [OwnedFd; 3])> {
        Ok((
            ProcessIo::default(),
            [dev_null()?, dev_null()?, dev_null()?],
        ))
    }

    /// Copies between the pty's master and the fifos: stdin into it, its output to stdout.
    /// Blocking copies on blocking threads: a pty master signals the end with EIO, which the
    /// loops treat as EOF.
    pub fn attach_console(&mut self, master: OwnedFd, paths: &StdioPaths) -> io::Result<()> {
        let reader = std::fs::File::from(master);
        if !paths.stdin.is_empty() {
            let mut writer = reader.try_clone()?;
            let fifo = PathBuf::from(&paths.stdin);
            let (tx, rx) = oneshot::channel();
            self.close_stdin = Some(tx);
            self.stdin_fifo = Some(fifo.clone());
            tokio::task::spawn_blocking(move || {
                let Ok(mut input) = std::fs::File::open(&fifo) else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let mut closed = rx;
                loop {
                    if closed.try_recv().is_ok() {
                        return;
                    }
                    match std::io::Read::read(&mut input, &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if std::io::Write::write_all(&mut writer, &buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        if !paths.stdout.is_empty() {
            let mut out = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&paths.stdout)?;
            let mut reader = reader;
            self.outputs.push(tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match std::io::Read::read(&mut reader, &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if std::io::Write::write_all(&mut out, &buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }));
        }
        Ok(())
    }

    /// CloseIO: the process sees EOF on stdin.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.close_stdin.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most `limit` for all outputs together) until the process's output reached
    /// containerd, then stops copying. Called when the process exited, before its exit is
    /// published.
    pub async fn drain(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let outputs = std::mem::take(&mut self.outputs);
        for handle in outputs {
            let abort = handle.abort_handle();
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                abort.abort();
            }
        }
        self.release_stdin();
    }

    /// Ends the stdin copy, including an open of the fifo that still waits for containerd to
    /// open the writer.
    fn release_stdin(&mut self) {
        self.close_stdin();
        if let Some(fifo) = self.stdin_fifo.take() {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
        }
    }
}

impl Drop for ProcessIo {
    /// A process that never ran (its Create failed) leaves no thread blocked on its fifo.
    fn drop(&mut self) {
        self.release_stdin();
    }
}

async fn copy_out(mut reader: pipe::Receiver, mut sink: impl tokio::io::AsyncWrite + Unpin) {
    if let Err(e) = tokio::io::copy(&mut reader, &mut sink).await {
        log::debug!("stdio copy ended: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fifos_files_and_logger_uris() {
        assert_eq!(parse_sink("").expect("empty"), Sink::Null);
        assert_eq!(
            parse_sink("/run/fifo/1-stdout").expect("fifo"),
            Sink::Fifo("/run/fifo/1-stdout".into())
        );
        assert_eq!(
            parse_sink("file:///var/log/a%20b.log").expect("file"),
            Sink::File("/var/log/a b.log".into())
        );
        assert_eq!(
            parse_sink("binary:///usr/bin/logger?id=abc&dir=%2Fvar%2Flog&flag").expect("binary"),
            Sink::Binary {
                path: "/usr/bin/logger".into(),
                args: vec![
                    "id".into(),
                    "abc".into(),
                    "dir".into(),
                    "/var/log".into(),
                    "flag".into()
                ],
            }
        );
        for bad in ["binary://relative", "file://rel", "http://x/y"] {
            assert!(parse_sink(bad).is_err(), "{bad}");
        }
    }
}
