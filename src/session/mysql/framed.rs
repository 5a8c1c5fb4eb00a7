//! A MySQL packet connection: one byte stream and its read buffer, read and written
//! in whole logical packets. Both sides of a MySQL session (client and upstream) use
//! it, as mini-redis's `Connection` does for frames.

use bytes::BytesMut;
use sqlgate_mysql::frame::{self, Packet};
use sqlgate_mysql::ProtocolError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::session::BoxStream;

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Framed {
    pub stream: BoxStream,
    pub buf: BytesMut,
    /// Packets queued by [`Framed::queue`], written by [`Framed::flush`].
    out: BytesMut,
}

impl Framed {
    pub fn new(stream: BoxStream, buf: BytesMut) -> Self {
        Framed {
            stream,
            buf,
            out: BytesMut::new(),
        }
    }

    /// The next whole packet already in the buffer, if any (no IO).
    pub fn buffered(&mut self, max: usize) -> Result<Option<Packet>, ProtocolError> {
        frame::decode(&mut self.buf, max)
    }

    /// The next packet; `Ok(None)` when the peer closed the connection.
    pub async fn read(&mut self, max: usize) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(packet) = frame::decode(&mut self.buf, max)? {
                return Ok(Some(packet));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Gives back a read buffer that a large packet grew, once it is empty, so an
    /// idle session holds kilobytes, not the largest packet it ever saw.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 1 << 20 {
            self.buf = BytesMut::with_capacity(8 * 1024);
        }
        if self.out.is_empty() && self.out.capacity() > 1 << 20 {
            self.out = BytesMut::new();
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Queues a packet; returns the next sequence id.
    pub fn queue(&mut self, seq: u8, payload: &[u8]) -> u8 {
        frame::encode(seq, payload, &mut self.out)
    }

    /// Whether packets are queued.
    pub fn pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes the queued packets.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = self.out.split();
            self.stream.write_all(&out).await?;
        }
        self.stream.flush().await
    }

    /// Writes one packet now; returns the next sequence id.
    pub async fn send(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<u8> {
        let next = self.queue(seq, payload);
        self.flush().await?;
        Ok(next)
    }
}

/// A stream that first yields bytes already read from it. MySQL clients start TLS
/// right after their SSLRequest without waiting for an answer, so the bytes read
/// past that packet are the start of the TLS handshake and belong to the TLS layer,
/// which authenticates them like the rest.
pub struct Prefixed {
    prefix: bytes::Bytes,
    inner: BoxStream,
}

impl Prefixed {
    pub fn new(prefix: bytes::Bytes, inner: BoxStream) -> Self {
        Prefixed { prefix, inner }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
