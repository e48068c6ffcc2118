//! Accepts the clouds' sample requests as they are written. Seed 000's sample puts a raw JSON
//! array in the query (`TrafficMirrorSourceIds=["eni-…"]`), and clients copy it as is; the
//! HTTP parser rejects `"` (and `<`, `>`, `\`, `` ` ``, non-ASCII bytes) in the request line
//! before any handler runs. This wrapper percent-encodes those bytes in the request line of
//! each connection's first request, which is what a browser would have sent.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Lenient<L>(pub L);

impl<L: axum::serve::Listener> axum::serve::Listener for Lenient<L> {
    type Io = FixRequestLine<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (FixRequestLine::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

pub struct FixRequestLine<S> {
    inner: S,
    /// Still inside the first request line.
    in_line: bool,
    /// Spaces seen on the line: the request target is between the first and the second.
    spaces: u8,
    /// Transformed bytes not yet handed to the reader.
    pending: Vec<u8>,
}

impl<S> FixRequestLine<S> {
    pub fn new(inner: S) -> Self {
        FixRequestLine {
            inner,
            in_line: true,
            spaces: 0,
            pending: Vec::new(),
        }
    }

    fn transform(&mut self, input: &[u8]) -> usize {
        for (i, &b) in input.iter().enumerate() {
            if !self.in_line {
                self.pending.extend_from_slice(&input[i..]);
                return input.len();
            }
            match b {
                b'\n' => {
                    self.in_line = false;
                    self.pending.push(b);
                }
                b' ' => {
                    self.spaces += 1;
                    self.pending.push(b);
                }
                b'"' | b'<' | b'>' | b'\\' | b'`' | 0x80..=0xff if self.spaces == 1 => {
                    self.pending
                        .extend_from_slice(format!("%{b:02X}").as_bytes());
                }
                _ => self.pending.push(b),
            }
        }
        input.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixRequestLine<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.pending.is_empty() {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..n]);
            this.pending.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if !this.in_line {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut tmp = [0u8; 1024];
        let mut rb = ReadBuf::new(&mut tmp);
        match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let filled = rb.filled().len();
                if filled == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.transform(&tmp[..filled]);
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixRequestLine<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_request_target_of_the_first_line_is_encoded() {
        let mut f = FixRequestLine::new(());
        f.transform(b"GET /?a=[\"x\"]&b=<y> HTTP/1.1\r\nX-H: \"kept\"\r\n\r\n");
        assert_eq!(
            String::from_utf8_lossy(&f.pending),
            "GET /?a=[%22x%22]&b=%3Cy%3E HTTP/1.1\r\nX-H: \"kept\"\r\n\r\n"
        );
    }
}
