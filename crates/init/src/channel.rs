//! The channel between the helper and the stages it forks: one JSON [`Sync`] message per line
//! over a socket pair, and fds passed alongside with SCM_RIGHTS. Read byte by byte, so that no
//! buffered message is left behind in a process that forks.

use crate::proto::Sync;
use crate::InitError;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

/// One JSON message per line over a socket shared by the helper and its children.
pub(crate) struct Channel(UnixStream);

impl Channel {
    pub(crate) fn send(&mut self, msg: &Sync) -> Result<(), InitError> {
        let mut line = serde_json::to_vec(msg).map_err(InitError::json("encode sync message"))?;
        line.push(b'\n');
        self.0
            .write_all(&line)
            .map_err(InitError::io("write sync message"))
    }

    pub(crate) fn recv(&mut self) -> Result<Sync, InitError> {
        // Byte by byte: messages are tiny and no buffered data may be left behind a fork.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            let n = self
                .0
                .read(&mut byte)
                .map_err(InitError::io("read sync message"))?;
            if n == 0 {
                return Err(InitError::Protocol("peer exited before answering".into()));
            }
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        let msg: Sync =
            serde_json::from_slice(&line).map_err(InitError::json("decode sync message"))?;
        match msg {
            Sync::Error(e, kind) => Err(InitError::Child(e, kind)),
            other => Ok(other),
        }
    }

    pub(crate) fn new(stream: UnixStream) -> Self {
        Channel(stream)
    }

    pub(crate) fn try_clone(&self) -> Result<Self, InitError> {
        Ok(Channel(
            self.0
                .try_clone()
                .map_err(InitError::io("dup sync socket"))?,
        ))
    }

    /// Sends `fd` along with one byte (SCM_RIGHTS).
    pub(crate) fn send_fd(&self, fd: std::os::fd::RawFd) -> Result<(), InitError> {
        crate::send_fd(&self.0, b"F", fd).map_err(InitError::io("send a file descriptor"))
    }

    /// Receives an fd sent with [`Channel::send_fd`].
    pub(crate) fn recv_fd(&self) -> Result<OwnedFd, InitError> {
        let (_, fd) = crate::recv_with_fd(&self.0, &mut [0u8; 1])
            .map_err(InitError::io("receive a file descriptor"))?;
        fd.ok_or_else(|| InitError::Protocol("expected a file descriptor".into()))
    }

    /// Waits for the container (or exec'd) process to be ready; takes the master of its pty if
    /// it sends one first.
    pub(crate) fn await_ready(&mut self) -> Result<Option<OwnedFd>, InitError> {
        let mut console = None;
        loop {
            match self.recv()? {
                Sync::Ready => return Ok(console),
                Sync::Console => console = Some(self.recv_fd()?),
                other => {
                    return Err(InitError::Protocol(format!(
                        "expected Ready, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Waits for the helper's go-ahead.
    pub(crate) fn expect_proceed(&mut self) -> Result<(), InitError> {
        self.expect_msg("Proceed", |m| matches!(m, Sync::Proceed))
            .map(drop)
    }

    pub(crate) fn expect_msg(
        &mut self,
        what: &str,
        pred: impl Fn(&Sync) -> bool,
    ) -> Result<Sync, InitError> {
        let msg = self.recv()?;
        if pred(&msg) {
            Ok(msg)
        } else {
            Err(InitError::Protocol(format!("expected {what}, got {msg:?}")))
        }
    }
}
