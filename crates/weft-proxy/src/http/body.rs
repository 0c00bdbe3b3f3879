//! Body types of the HTTP path.
//!
//! `ReplayBody` streams a request body to the first upstream attempt while keeping a copy (up to
//! a cap) so that a retry can send it again; once the body outgrows the cap, the request is no
//! longer retryable — a body already streamed away is never re-sent incomplete.
//! `MarkEnd` records when a request body has been read to its end (`RequestEnd`), the point
//! from which Envoy's route timeout counts.
//! `ResponseBody` is what goes back downstream: an upstream body or a local reply, and a hook
//! that runs once when the exchange is over (stats, access log) with the byte count. It also
//! enforces the connection manager's `stream_idle_timeout` and the route's deadline on an
//! upstream body: their timers are created only the first time the body has to wait, so a
//! body that arrives with its headers (the common case) costs no timer at all.

use crate::upstream::pool::{BoxError, UpstreamBody, UpstreamError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

type Source = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

struct Shared {
    /// Data frames seen so far (while not capped).
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    buffered: usize,
    capped: bool,
    /// The original body, held by whichever attempt is reading it (None while lent out).
    source: Option<Source>,
    complete: bool,
}

/// A request body that can be replayed for retries while it fits within `cap` bytes.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    cap: usize,
    /// Position in `chunks` for this attempt.
    pos: usize,
    /// The source, taken from `shared` while this attempt reads past the buffer.
    source: Option<Source>,
    trailers_sent: bool,
    size_hint: SizeHint,
}

impl ReplayBody {
    pub fn new(source: Source, cap: usize) -> Self {
        let size_hint = source.size_hint();
        let complete = source.is_end_stream();
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                chunks: Vec::new(),
                trailers: None,
                buffered: 0,
                capped: false,
                source: Some(source),
                complete,
            })),
            cap,
            pos: 0,
            source: None,
            trailers_sent: false,
            size_hint,
        }
    }

    /// A fresh reader from the start, for another attempt; None once the body outgrew the cap.
    pub fn replay(&self) -> Option<ReplayBody> {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if s.capped {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            cap: self.cap,
            pos: 0,
            source: None,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }

    pub fn is_capped(&self) -> bool {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).capped
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(src) = self.source.take() {
            let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            s.source = Some(src);
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        {
            let mut s = this.shared.lock().unwrap_or_else(|p| p.into_inner());
            if this.pos < s.chunks.len() {
                let c = s.chunks[this.pos].clone();
                this.pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(c))));
            }
            if s.complete {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(t) = s.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                return Poll::Ready(None);
            }
            if s.capped && this.source.is_none() {
                // Only the attempt that owns the stream may go on past the cap; any other
                // reader would send a body with a hole in it.
                return Poll::Ready(Some(Err("request body exceeded the retry buffer".into())));
            }
            if this.source.is_none() {
                match s.source.take() {
                    Some(src) => this.source = Some(src),
                    None => {
                        return Poll::Ready(Some(Err(
                            "request body is being read by another attempt".into(),
                        )));
                    }
                }
            }
        }
        let Some(src) = this.source.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(src).poll_frame(cx);
        let mut s = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if !s.capped {
                        s.buffered += d.len();
                        if s.buffered > this.cap {
                            s.capped = true;
                            s.chunks.clear();
                        } else {
                            s.chunks.push(d.clone());
                        }
                    }
                    this.pos = s.chunks.len();
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.complete = true;
                    this.trailers_sent = true;
                }
                if this.source.as_ref().is_some_and(|b| b.is_end_stream()) {
                    s.complete = true;
                }
            }
            Poll::Ready(None) => s.complete = true,
            Poll::Ready(Some(Err(_))) => s.capped = true,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.complete && self.pos >= s.chunks.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

/// When the downstream request was completely received: Envoy's route timeout counts from
/// there. Set by [`MarkEnd`] as the request body ends.
#[derive(Debug)]
pub struct RequestEnd {
    start: std::time::Instant,
    /// Nanoseconds after `start`, plus one; 0 while the request is still arriving.
    at: std::sync::atomic::AtomicU64,
}

impl RequestEnd {
    pub fn new(start: std::time::Instant) -> Arc<Self> {
        Arc::new(RequestEnd {
            start,
            at: std::sync::atomic::AtomicU64::new(0),
        })
    }
    /// Records that the request has been completely received, now.
    pub fn mark(&self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = self.at.compare_exchange(
            0,
            ns + 1,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    /// When the request was completely received, once it has been.
    pub fn at(&self) -> Option<std::time::Instant> {
        match self.at.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(self.start + Duration::from_nanos(n - 1)),
        }
    }
}

/// A request body that records in a [`RequestEnd`] when it has been read to its end.
pub struct MarkEnd {
    inner: Source,
    end: Arc<RequestEnd>,
}

impl MarkEnd {
    pub fn new(inner: Source, end: Arc<RequestEnd>) -> Self {
        MarkEnd { inner, end }
    }
}

impl Body for MarkEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.end.mark(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.end.mark(),
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a downstream response is finished (or abandoned): `bytes_sent` counts body
/// bytes delivered, `completed` tells whether the stream reached its end.
/// `cut` tells why the proxy reset a response body it was still sending.
pub trait OnDone: Send + 'static {
    fn done(
        self: Box<Self>,
        bytes_sent: u64,
        trailers: Option<&HeaderMap>,
        completed: bool,
        cut: Option<Cut>,
    );
}

/// Why a response body ended before its end.
#[derive(Debug)]
pub enum Cut {
    /// Nothing arrived from upstream for `stream_idle_timeout`.
    StreamIdle,
    /// The route's timeout passed before the upstream response was complete.
    RouteTimeout,
    /// The upstream side failed mid-body (closed, reset, broke framing) — or the downstream
    /// request body it was still being sent failed.
    Upstream(UpstreamError),
}

/// The error a response body ends with when the route's timeout passed mid-body.
#[derive(Debug, thiserror::Error)]
#[error("upstream response timeout")]
pub struct RouteTimeout;

/// The error a response body ends with when `stream_idle_timeout` fired.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
pub struct StreamIdleTimeout;

pub enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
    Empty,
}

/// The body of every downstream response.
pub struct ResponseBody {
    inner: Inner,
    sent: u64,
    on_done: Option<Box<dyn OnDone>>,
    idle: Option<Duration>,
    /// Armed the first time the upstream body had to wait; reset whenever a frame arrives.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame arrived since the timer was last (re)set.
    progressed: bool,
    /// The route's deadline for the whole response; its timer too is armed only on a wait.
    deadline: Option<tokio::time::Instant>,
    deadline_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ResponseBody {
    pub fn new(inner: Inner, on_done: Option<Box<dyn OnDone>>) -> Self {
        ResponseBody {
            inner,
            sent: 0,
            on_done,
            idle: None,
            idle_timer: None,
            progressed: false,
            deadline: None,
            deadline_timer: None,
        }
    }
    /// Resets the stream when the upstream body is not complete by `deadline`.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }
    /// Resets the stream when the upstream body sends nothing for `idle`.
    pub fn with_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }
    pub fn full(b: Bytes) -> Self {
        Self::new(
            if b.is_empty() {
                Inner::Empty
            } else {
                Inner::Full(Some(b))
            },
            None,
        )
    }
    pub fn set_on_done(&mut self, f: Box<dyn OnDone>) {
        self.on_done = Some(f);
    }
    fn finish(&mut self, trailers: Option<&HeaderMap>, completed: bool) {
        self.finish_with(trailers, completed, None);
    }
    fn finish_with(&mut self, trailers: Option<&HeaderMap>, completed: bool, cut: Option<Cut>) {
        if let Some(f) = self.on_done.take() {
            f.done(self.sent, trailers, completed, cut);
        }
    }
    /// Polls the route deadline of a waiting upstream body: true when it passed.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.deadline else {
            return false;
        };
        self.deadline_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
    /// Polls the idle timer of a waiting upstream body: true when it fired.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle else {
            return false;
        };
        let timer = match &mut self.idle_timer {
            Some(t) => {
                if std::mem::take(&mut self.progressed) {
                    t.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                t
            }
            None => self.idle_timer.insert(Box::pin(tokio::time::sleep(idle))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish(None, false);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = match &mut this.inner {
            Inner::Upstream(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Pending if this.idle_expired(cx) => {
                    this.finish_with(None, false, Some(Cut::StreamIdle));
                    return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout))));
                }
                Poll::Pending if this.deadline_passed(cx) => {
                    this.finish_with(None, false, Some(Cut::RouteTimeout));
                    return Poll::Ready(Some(Err(Box::new(RouteTimeout))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let msg = e.to_string();
                    this.finish_with(None, false, Some(Cut::Upstream(e)));
                    return Poll::Ready(Some(Err(msg.into())));
                }
                Poll::Ready(r) => {
                    this.progressed = true;
                    Poll::Ready(r.map(|f| f.map_err(BoxError::from)))
                }
                Poll::Pending => Poll::Pending,
            },
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Empty => Poll::Ready(None),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
                if let Some(t) = f.trailers_ref() {
                    let t = t.clone();
                    this.finish(Some(&t), true);
                } else if this.is_end_stream() {
                    this.finish(None, true);
                }
            }
            Poll::Ready(None) => this.finish(None, true),
            Poll::Ready(Some(Err(_))) => this.finish(None, false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
            Inner::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            _ => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn boxed<B>(b: B) -> Source
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        b.map_err(Into::into).boxed_unsync()
    }

    #[tokio::test]
    async fn replays_a_small_body() {
        let first = ReplayBody::new(boxed(Full::new(Bytes::from_static(b"hello"))), 1024);
        let second = first.replay().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(second.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn stops_being_replayable_past_the_cap() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..4)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 100]))))
            .collect();
        let first = ReplayBody::new(
            boxed(StreamBody::new(futures_util::stream::iter(chunks))),
            250,
        );
        let handle = first.replay().unwrap();
        let all = first.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 400);
        assert!(handle.is_capped());
        assert!(handle.replay().is_none());
    }
}
