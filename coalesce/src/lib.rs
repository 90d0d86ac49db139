//! A connection that turns the frames h2 writes between two flushes into one `write` system
//! call. On loopback the sender's `write` also runs the receiver's TCP input, so every call
//! costs both ends several microseconds, whatever its size.
//!
//! h2 copies a DATA frame into its write buffer only below a "chain threshold" (256 bytes on
//! a vectored socket, 1,024 otherwise). A larger frame is written as its own chunk, and h2
//! flushes the socket before it buffers the next frame. A unary gRPC response of 256 bytes or
//! more (a range with a 256-byte value) thus went out as two calls: headers and data, then the
//! 10-byte trailers. Under a range load that was 2.4 `writev`s per read, against etcd's 0.5
//! `write`s.
//!
//! This stream tells h2 it has no vectored writes, which raises its threshold to 1,024 bytes.
//! It also keeps what h2 writes until h2 flushes, or until a large chunk arrives. That chunk
//! goes out in one `writev` together with what is kept, uncopied.
//!
//! A flush waits one turn of the scheduler. hyper runs each request in its own task, and a
//! task that finishes a response wakes the connection's task, which tokio runs next: every
//! response was flushed alone, though a batch of reads released by one read index finishes
//! together. The deferred flush lets the tasks already queued add their responses first, as
//! grpc-go's writer flushes only when no more frames are queued.
//!
//! Both ends use it: the store wraps every connection it accepts, and the load generator
//! dials with [`dial`], since h2's client side writes a request of 256 bytes or more as two
//! calls too, where etcd's benchmark tool (grpc-go) coalesces.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

/// Bytes a connection keeps from h2's writes before it sends them without waiting for a flush.
pub const COALESCED_WRITE_BYTES_MAX: usize = 64 * 1024;
/// A chunk h2 writes of at least this many bytes is not copied: it leaves in one `writev`
/// together with the kept bytes.
pub const UNCOPIED_WRITE_BYTES_MIN: usize = 8 * 1024;

/// A byte stream whose writes are kept until a flush and then sent in one system call.
#[derive(Debug)]
pub struct CoalescingStream<T> {
    inner: T,
    /// Accepted bytes not yet handed to `inner`; those before `sent` already were.
    kept: Vec<u8>,
    sent: usize,
    /// A flush found kept bytes and yielded once; the next one sends them.
    flush_deferred: bool,
}

impl<T> CoalescingStream<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        CoalescingStream { inner, kept: Vec::new(), sent: 0, flush_deferred: false }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn unsent(&self) -> &[u8] {
        &self.kept[self.sent..]
    }

    /// Records that `n` kept bytes reached `inner`.
    fn mark_sent(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.kept.len() {
            self.kept.clear();
            self.sent = 0;
        }
    }
}

impl<T: AsyncWrite + Unpin> CoalescingStream<T> {
    /// Hands every kept byte to `inner`.
    fn poll_send_kept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent().is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.kept[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.mark_sent(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescingStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescingStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.len() < UNCOPIED_WRITE_BYTES_MIN && this.unsent().len() + buf.len() <= COALESCED_WRITE_BYTES_MAX {
            this.kept.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // A large chunk, or the kept bytes are at their limit: both go out in one call.
        loop {
            let kept = this.unsent().len();
            if kept == 0 {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            let slices = [IoSlice::new(&this.kept[this.sent..]), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.mark_sent(n.min(kept));
            if n > kept {
                return Poll::Ready(Ok(n - kept));
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.unsent().is_empty() && !self.flush_deferred {
            // Woken by itself, the task goes to the back of the run queue (tokio's yield).
            self.flush_deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.flush_deferred = false;
        ready!(self.poll_send_kept(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_kept(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// False, so that h2 copies frames of up to 1,024 bytes into its buffer (see the module
    /// comment); a large chunk still leaves in one `writev` with the kept bytes.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected> Connected for CoalescingStream<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Dials `uri` (`http://host:port`) with Nagle's algorithm off and the connection's writes
/// coalesced: a connector for tonic's `Endpoint::connect_with_connector`.
pub async fn dial(uri: http::Uri) -> io::Result<TokioIo<CoalescingStream<TcpStream>>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
    // An IPv6 literal comes bracketed ("[::1]"), which a socket address does not take.
    let host = uri.host().ok_or_else(|| invalid("no host"))?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(CoalescingStream::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A sink that records each call it gets and accepts at most `per_call` bytes per call.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<Vec<u8>>,
        per_call: Option<usize>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = self.per_call.unwrap_or(usize::MAX).min(buf.len());
            self.calls.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = self.per_call.unwrap_or(usize::MAX).min(all.len());
            self.calls.push(all[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_leave_in_one_call_at_the_flush() {
        let mut s = CoalescingStream::new(Recorder::default());
        s.write_all(b"headers").await.unwrap();
        s.write_all(&[7u8; 300]).await.unwrap();
        s.write_all(b"trailers").await.unwrap();
        assert!(s.inner.calls.is_empty(), "nothing may leave before the flush");
        s.flush().await.unwrap();
        assert_eq!(s.inner.calls.len(), 1, "three frames, one call");
        let want: Vec<u8> = [&b"headers"[..], &[7u8; 300], b"trailers"].concat();
        assert_eq!(s.inner.calls[0], want);
        assert_eq!(s.inner.flushes, 1);
        assert!(!s.is_write_vectored(), "h2 must see an unvectored stream to copy frames below 1 KiB");
    }

    #[test]
    fn a_flush_yields_once_then_sends() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(me: &std::sync::Arc<Self>) {
                me.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let wakes = std::sync::Arc::new(Count(0.into()));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut s = CoalescingStream::new(Recorder::default());
        let mut s = Pin::new(&mut s);
        assert!(s.as_mut().poll_flush(&mut cx).is_ready(), "nothing kept: no reason to wait");
        assert!(matches!(s.as_mut().poll_write(&mut cx, b"frame"), Poll::Ready(Ok(5))));
        assert!(s.as_mut().poll_flush(&mut cx).is_pending(), "the first flush yields");
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1, "and wakes its task to come back");
        assert!(s.inner.calls.is_empty());
        assert!(s.as_mut().poll_write(&mut cx, b" more").is_ready());
        assert!(s.as_mut().poll_flush(&mut cx).is_ready(), "the second flush sends");
        assert_eq!(s.inner.calls, vec![b"frame more".to_vec()]);
        assert!(matches!(s.as_mut().poll_write(&mut cx, b"next"), Poll::Ready(Ok(4))));
        assert!(s.as_mut().poll_flush(&mut cx).is_pending(), "each flush with kept bytes yields once");
    }

    #[tokio::test]
    async fn a_large_chunk_leaves_with_the_kept_bytes_in_one_vectored_call() {
        let mut s = CoalescingStream::new(Recorder::default());
        let big = vec![1u8; UNCOPIED_WRITE_BYTES_MIN];
        s.write_all(b"head").await.unwrap();
        s.write_all(&big).await.unwrap();
        assert_eq!(s.inner.calls, vec![[&b"head"[..], &big].concat()]);
        s.flush().await.unwrap();
        assert_eq!(s.inner.calls.len(), 1, "nothing was left to send at the flush");
    }

    #[tokio::test]
    async fn partial_writes_keep_the_byte_order() {
        let mut s = CoalescingStream::new(Recorder { per_call: Some(3), ..Default::default() });
        let big: Vec<u8> = (0..UNCOPIED_WRITE_BYTES_MIN).map(|i| i as u8).collect();
        s.write_all(b"abcdefg").await.unwrap();
        s.write_all(&big).await.unwrap();
        s.write_all(b"xyz").await.unwrap();
        s.shutdown().await.unwrap();
        let sent: Vec<u8> = s.inner.calls.concat();
        assert_eq!(sent, [&b"abcdefg"[..], &big, b"xyz"].concat());
    }

    #[tokio::test]
    async fn the_kept_bytes_are_bounded() {
        let mut s = CoalescingStream::new(Recorder::default());
        let chunk = vec![2u8; UNCOPIED_WRITE_BYTES_MIN - 1];
        let mut written = 0;
        while written <= COALESCED_WRITE_BYTES_MAX {
            s.write_all(&chunk).await.unwrap();
            written += chunk.len();
            assert!(s.unsent().len() <= COALESCED_WRITE_BYTES_MAX);
        }
        assert!(!s.inner.calls.is_empty(), "a full buffer is sent without waiting for a flush");
        s.flush().await.unwrap();
        assert_eq!(s.inner.calls.concat().len(), written);
    }

    #[tokio::test]
    async fn dialed_connections_have_nagle_off_and_coalesce() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let io = dial(format!("http://127.0.0.1:{port}").parse().unwrap()).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let stream = io.inner();
        assert!(stream.get_ref().nodelay().unwrap(), "a dialed connection still runs Nagle's algorithm");
        assert!(!AsyncWrite::is_write_vectored(stream), "not the coalescing stream");
        let mut stream = io.into_inner();
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_url_without_a_port_is_an_error_not_a_guess() {
        let err = dial("http://127.0.0.1".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("no port"), "{err}");
    }
}
