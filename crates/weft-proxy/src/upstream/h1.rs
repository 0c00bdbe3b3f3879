//! The HTTP/1.1 client side of pooled upstream connections, written for the proxy's hot path.
//!
//! hyper's client gives every connection a task of its own and talks to it through channels:
//! each proxied request then costs several wake-ups between tasks (request in, response head
//! out, body chunks out) and a dispatcher on each side. Here the exchange runs inside the task
//! of the request that owns the connection: the request head and body are written, the response
//! head is parsed with `httparse` out of the connection's own read buffer (reused from request
//! to request), and the response body is decoded from that buffer as the downstream side polls
//! it. An idle connection has no task; the pool's reaper watches it for the peer closing it.
//!
//! Framing follows RFC 9112: `content-length` or chunked request bodies (chunked when the length
//! is not known, trailers carried), responses delimited by length, chunked coding (trailers
//! returned as a trailers frame) or connection close; 1xx interim responses are skipped, `101`
//! hands the raw connection over for an upgrade. A connection is reused only after a response
//! read to its exact end, with the request fully sent and no `connection: close`.

use crate::http::is_response_hop_by_hop;
use crate::io::{Rewind, Upstream};
use crate::upstream::pool::{Body, ConnGuard, UpstreamError};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

/// Response headers parsed at most (hyper's default).
const MAX_HEADERS: usize = 100;
/// Response headers whose positions are noted on the stack while a head is parsed.
const FEW_HEADERS: usize = 24;
/// Largest response head accepted (Envoy's default `max_response_headers_kb`, 60 KiB).
const MAX_HEAD: usize = 60 * 1024;
/// Largest chunk-size line or trailer section accepted.
const MAX_CHUNK_META: usize = 16 * 1024;
/// Read-buffer space made available before each read.
const READ_SPACE: usize = 16 * 1024;
/// Room below which a buffer that cannot be taken back to its start is replaced by a new one.
const MIN_READ_SPACE: usize = 1024;
/// Request bytes gathered before they are written out.
const WRITE_BATCH: usize = 64 * 1024;

/// One HTTP/1.1 connection to an endpoint, idle or carrying one exchange.
pub struct H1Conn {
    io: Upstream,
    /// Bytes read and not yet consumed; also the storage response heads and bodies are cut from.
    rbuf: BytesMut,
    /// Request bytes encoded and not yet written.
    wbuf: Vec<u8>,
    guard: ConnGuard,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H1Conn")
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoder {
    /// No body (or an empty one): nothing follows the head.
    Empty,
    /// `content-length`: exactly this many bytes still to send.
    Length(u64),
    Chunked,
}

/// A request on its way out: its body (None once it ended), framing, and how much of the write
/// buffer is already written.
struct Sending {
    body: Option<Body>,
    enc: Encoder,
    written: usize,
    flushed: bool,
}

/// The parts of a response head the exchange needs besides the `Response` itself.
struct Head {
    response: Response<()>,
    decoder: Decoder,
    keep_alive: bool,
}

/// How the response body is delimited, and how far it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes the connection.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

fn protocol(what: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Protocol(what.to_string())
}

/// A response body the codec cannot read: the upstream broke HTTP/1 framing.
fn invalid(what: &'static str) -> UpstreamError {
    UpstreamError::Protocol(format!("response body: {what}"))
}

impl H1Conn {
    pub fn new(io: Upstream, guard: ConnGuard) -> Self {
        Self {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            guard,
        }
    }

    /// Whether the connection is still open as far as can be told without waiting: the peer
    /// has not closed it and sent nothing unasked. `waker` is woken when that changes (the
    /// pool's reaper), or is a no-op waker for a one-off check.
    pub fn poll_idle_alive(&mut self, waker: &Waker) -> bool {
        let mut cx = Context::from_waker(waker);
        if self.rbuf.capacity() - self.rbuf.len() < 64 {
            self.rbuf.reserve(READ_SPACE);
        }
        // Pending is the only good answer: anything else is a close, an error or bytes that
        // belong to no request.
        poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.rbuf).is_pending()
            && self.rbuf.is_empty()
    }

    /// Sends one request and waits for the response head. The connection travels inside the
    /// returned body, which gives it back (see `H1Body::take_reusable`) once read to its end;
    /// a request body still being sent when the head arrives goes on being sent as the
    /// response body is read (a server may answer before it has read the whole request).
    // An async block rather than an `async fn`: an `async fn` moves its parameters into locals of
    // its own, so its future holds each of them twice and copies each once more per call (see
    // docs/ARCHITECTURE.md, "Request futures").
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        mut self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<H1Body>, UpstreamError>> {
        async move {
            let (parts, body) = req.into_parts();
            let enc = self.encode_head(&parts, &body);
            let head_req = parts.method == Method::HEAD;
            // Not needed past this point (the head is encoded), but dropped only after the first
            // poll, which writes the head: freeing the headers is not worth delaying the request.
            let mut req_parts = Some(parts);
            let mut sending = Some(Sending {
                body: (enc != Encoder::Empty).then_some(body),
                enc,
                written: 0,
                flushed: false,
            });
            let mut cut = false;
            let head = std::future::poll_fn(|cx| {
                let r = self.poll_exchange(cx, &mut sending, &mut cut, head_req);
                drop(req_parts.take());
                r
            })
            .await?;
            let (parts, ()) = head.response.into_parts();
            let upgraded = parts.status == StatusCode::SWITCHING_PROTOCOLS;
            let mut body = H1Body {
                decoder: if upgraded {
                    Decoder::Done
                } else {
                    head.decoder
                },
                reusable: head.keep_alive && !cut && !upgraded,
                upgraded,
                sending: sending.map(Box::new),
                conn: Some(self),
            };
            body.settle();
            Ok(Response::from_parts(parts, body))
        }
    }

    /// Writes the request line and headers into the write buffer and picks the body framing.
    fn encode_head(&mut self, parts: &http::request::Parts, body: &Body) -> Encoder {
        let w = &mut self.wbuf;
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        w.extend_from_slice(pq.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        let mut length = None;
        for (name, value) in &parts.headers {
            if name == CONTENT_LENGTH {
                // Written once below; a value that does not parse leaves the body's own size
                // to decide.
                if length.is_none() {
                    length = parse_length(value.as_bytes());
                }
                continue;
            }
            if name == TRANSFER_ENCODING {
                // Framing is chosen here, never copied from the client.
                continue;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if let Some(n) = length {
            write_length(w, n);
        }
        let enc = match length {
            Some(0) => Encoder::Empty,
            Some(n) => Encoder::Length(n),
            None if body.is_end_stream() => {
                // Servers expect a length on methods that carry a body, even an empty one.
                if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                    w.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Empty
            }
            None => match body.size_hint().exact() {
                Some(n) => {
                    write_length(w, n);
                    if n == 0 {
                        Encoder::Empty
                    } else {
                        Encoder::Length(n)
                    }
                }
                None => {
                    w.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Encoder::Chunked
                }
            },
        };
        w.extend_from_slice(b"\r\n");
        enc
    }

    /// Drives the exchange until the response head is in: sends what it can of the request
    /// and reads all along, so an answer that comes before the request is fully sent is seen.
    /// A failed write stops the sending (`cut`) but not the reading: the peer may have
    /// answered and closed.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        sending: &mut Option<Sending>,
        cut: &mut bool,
        head_req: bool,
    ) -> Poll<Result<Head, UpstreamError>> {
        if let Some(s) = sending.as_mut() {
            match self.poll_send(cx, s) {
                Poll::Ready(Ok(())) => *sending = None,
                Poll::Ready(Err(e @ UpstreamError::DownstreamBody(_))) => {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Err(_)) => {
                    *sending = None;
                    *cut = true;
                }
                Poll::Pending => {}
            }
        }
        self.poll_head(cx, head_req)
    }

    /// Moves the request forward: gathers body frames into the write buffer (so a body that is
    /// already there leaves with the head), writes and flushes. Ready once all of it is out.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut Sending,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            let mut progressed = false;
            while let Some(b) = s.body.as_mut() {
                if self.wbuf.len() - s.written >= WRITE_BATCH {
                    break;
                }
                match Pin::new(b).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => {
                        encode_frame(&mut self.wbuf, &mut s.enc, frame)?
                    }
                    Poll::Ready(None) => {
                        finish_body(&mut self.wbuf, &mut s.enc)?;
                        s.body = None;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(UpstreamError::DownstreamBody(e.to_string())));
                    }
                }
            }
            while s.written < self.wbuf.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[s.written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(UpstreamError::ConnectionTermination));
                    }
                    Poll::Ready(Ok(n)) => {
                        s.written += n;
                        s.flushed = false;
                        progressed = true;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.wbuf.clear();
            s.written = 0;
            // TLS keeps records until flushed; a plain socket flushes for free.
            if !s.flushed {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => s.flushed = true,
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(UpstreamError::ConnectionTermination));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if s.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// Reads until a final response head (1xx other than 101 skipped) is parsed.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_req: bool,
    ) -> Poll<Result<Head, UpstreamError>> {
        loop {
            if !self.rbuf.is_empty() {
                match parse_head(&mut self.rbuf, head_req)? {
                    // An interim answer (100 Continue, 103 Early Hints) is skipped; the final
                    // head may already be buffered behind it.
                    Some(h)
                        if h.response.status().is_informational()
                            && h.response.status() != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue;
                    }
                    Some(h) => return Poll::Ready(Ok(h)),
                    None if self.rbuf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(protocol("response headers too large")));
                    }
                    None => {}
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(UpstreamError::ConnectionTermination));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(UpstreamError::ConnectionTermination));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Once the previous response's bytes are all dropped (the usual case when the next one
        // is read), take the buffer back to its start instead of reading on at its tail: every
        // response lands in the same, still-cached memory and a small one never straddles the
        // end of the spare room (which cost a second `recv` about once in twenty exchanges).
        // While earlier pieces are still held (a body streamed in small chunks to a slower
        // peer), read on at the tail and allocate only when it is nearly full, so each chunk
        // in flight does not keep a buffer of its own alive.
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if spare < READ_SPACE && !self.rbuf.try_reclaim(READ_SPACE) && spare < MIN_READ_SPACE {
            self.rbuf.reserve(READ_SPACE);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

fn write_length(w: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    // Writing into a Vec cannot fail; no String per request.
    let _ = write!(w, "content-length: {n}\r\n");
}

/// A `content-length` value: ASCII digits only (RFC 9110 §8.6; no sign, unlike `str::parse`),
/// surrounding whitespace aside.
fn parse_length(v: &[u8]) -> Option<u64> {
    crate::http::parse_decimal(v.trim_ascii())
}

fn encode_frame(
    w: &mut Vec<u8>,
    enc: &mut Encoder,
    frame: Frame<Bytes>,
) -> Result<(), UpstreamError> {
    match frame.into_data() {
        Ok(data) => {
            if data.is_empty() {
                return Ok(());
            }
            match enc {
                Encoder::Length(left) => {
                    let n = data.len() as u64;
                    if n > *left {
                        return Err(UpstreamError::DownstreamBody(
                            "request body longer than its content-length".into(),
                        ));
                    }
                    *left -= n;
                    w.extend_from_slice(&data);
                }
                Encoder::Chunked => {
                    let _ = std::io::Write::write_fmt(w, format_args!("{:x}\r\n", data.len()));
                    w.extend_from_slice(&data);
                    w.extend_from_slice(b"\r\n");
                }
                Encoder::Empty => {
                    return Err(UpstreamError::DownstreamBody(
                        "request body longer than its content-length".into(),
                    ));
                }
            }
        }
        Err(frame) => {
            // Trailers travel only in chunked coding; with a length they have no place.
            if let (Encoder::Chunked, Ok(trailers)) = (&*enc, frame.into_trailers()) {
                w.extend_from_slice(b"0\r\n");
                for (name, value) in &trailers {
                    w.extend_from_slice(name.as_str().as_bytes());
                    w.extend_from_slice(b": ");
                    w.extend_from_slice(value.as_bytes());
                    w.extend_from_slice(b"\r\n");
                }
                w.extend_from_slice(b"\r\n");
                *enc = Encoder::Empty;
            }
        }
    }
    Ok(())
}

fn finish_body(w: &mut Vec<u8>, enc: &mut Encoder) -> Result<(), UpstreamError> {
    match *enc {
        Encoder::Length(0) | Encoder::Empty => {}
        Encoder::Length(_) => {
            return Err(UpstreamError::DownstreamBody(
                "request body shorter than its content-length".into(),
            ));
        }
        Encoder::Chunked => w.extend_from_slice(b"0\r\n\r\n"),
    }
    *enc = Encoder::Empty;
    Ok(())
}

/// Parses a response head off the front of `buf`; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut, head_req: bool) -> Result<Option<Head>, UpstreamError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return Err(protocol("response headers too large")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(protocol("too many response headers"));
        }
        Err(e) => return Err(protocol(format_args!("malformed response head: {e}"))),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| protocol("invalid status code"))?;
    let http10 = res.version == Some(0);
    // Where each header sits in the head, so values can share its storage once it is cut off.
    let base = buf.as_ptr() as usize;
    // Name and value offsets: [name start, name end, value start, value end]. On the stack for
    // the usual few headers (zeroing room for all MAX_HEADERS cost 1.6 KiB of stores per
    // response), on the heap past that.
    let count = res.headers.len();
    let mut few = [[0u32; 4]; FEW_HEADERS];
    let mut many = Vec::new();
    let spans: &mut [[u32; 4]] = if count <= FEW_HEADERS {
        &mut few[..count]
    } else {
        many.resize(count, [0; 4]);
        &mut many
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = false;
    let mut keep_alive = false;
    // A Connection naming other headers stays, for the proxy to remove what it names.
    let mut names_others = false;
    for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
        let (name, value) = (h.name.as_bytes(), h.value);
        let n0 = name.as_ptr() as usize - base;
        let v0 = value.as_ptr() as usize - base;
        *span = [
            n0 as u32,
            (n0 + name.len()) as u32,
            v0 as u32,
            (v0 + value.len()) as u32,
        ];
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or_else(|| protocol("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(protocol("conflicting content-length values"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            // Only the last coding says whether the message is chunked.
            chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                let (c, k) = (
                    t.eq_ignore_ascii_case(b"close"),
                    t.eq_ignore_ascii_case(b"keep-alive"),
                );
                close |= c;
                keep_alive |= k;
                names_others |= !c && !k && !t.is_empty();
            }
        }
    }
    // The connection's own headers (the proxy's one list of them) end here rather than
    // become entries the proxy strips next — except on a 101, whose Upgrade/Connection the
    // client needs.
    let consume = |n: &HeaderName| {
        status != StatusCode::SWITCHING_PROTOCOLS
            && is_response_hop_by_hop(n)
            && !(names_others && n == CONNECTION)
    };
    // Values share the head's storage once it is cut off the buffer (a reference count each).
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &[n0, n1, v0, v1] in spans.iter() {
        let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
            .map_err(|_| protocol("invalid response header name"))?;
        if consume(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
            .map_err(|_| protocol("invalid response header value"))?;
        headers.append(name, value);
    }
    // RFC 9112 §6.3, in order.
    let no_body = head_req
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut reusable_framing = true;
    let decoder = if no_body {
        Decoder::Done
    } else if te {
        // With both, transfer-encoding wins and the connection must not be reused.
        reusable_framing = length.is_none();
        if chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            reusable_framing = false;
            Decoder::Eof
        }
    } else if let Some(n) = length {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    } else {
        reusable_framing = false;
        Decoder::Eof
    };
    let persistent = if http10 { keep_alive && !close } else { !close };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *response.headers_mut() = headers;
    Ok(Some(Head {
        response,
        decoder,
        keep_alive: persistent && reusable_framing,
    }))
}

/// A response body read straight off its connection. Once read to its end, the connection is
/// ready to go back to the pool (`take_reusable`); dropped early, it is closed.
pub struct H1Body {
    conn: Option<H1Conn>,
    decoder: Decoder,
    reusable: bool,
    upgraded: bool,
    /// The rest of a request the server answered before receiving all of it.
    sending: Option<Box<Sending>>,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("decoder", &self.decoder)
            .finish()
    }
}

/// The raw connection after a `101 Switching Protocols`, bytes already read replayed first.
pub struct Upgraded {
    pub io: Rewind<Upstream>,
    pub guard: ConnGuard,
}

impl H1Body {
    /// After the body's end: the connection, if it can carry another request.
    pub fn take_reusable(&mut self) -> Option<H1Conn> {
        if self.decoder != Decoder::Done || !self.reusable || self.sending.is_some() {
            return None;
        }
        self.conn.take()
    }

    /// The connection of a `101` response, for the caller to splice.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        if !self.upgraded {
            return None;
        }
        let conn = self.conn.take()?;
        Some(Upgraded {
            io: Rewind::new(conn.rbuf.freeze(), conn.io),
            guard: conn.guard,
        })
    }

    /// At the end, a connection that cannot be reused is closed at once rather than when the
    /// body is dropped: so is one whose request was not fully sent (what is left of the
    /// request body is dropped, as Envoy resets the upstream request), or that holds bytes
    /// after the response.
    fn settle(&mut self) {
        if self.decoder == Decoder::Done
            && !self.upgraded
            && (!self.reusable
                || self.sending.is_some()
                || self.conn.as_ref().is_some_and(|c| !c.rbuf.is_empty()))
        {
            self.reusable = false;
            self.sending = None;
            self.conn = None;
        }
    }

    /// Sends more of a request the server answered early. A client-side body error ends the
    /// response too; a failed write only stops the sending.
    fn poll_send_rest(&mut self, cx: &mut Context<'_>) -> Result<(), UpstreamError> {
        let (Some(conn), Some(s)) = (self.conn.as_mut(), self.sending.as_mut()) else {
            return Ok(());
        };
        match conn.poll_send(cx, s) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => self.sending = None,
            Poll::Ready(Err(e @ UpstreamError::DownstreamBody(_))) => {
                self.conn = None;
                self.sending = None;
                return Err(e);
            }
            Poll::Ready(Err(_)) => {
                self.sending = None;
                self.reusable = false;
            }
        }
        Ok(())
    }

    /// The next frame from what is buffered: `Ok(None)` when more bytes are needed.
    fn decode(&mut self) -> Result<Option<Option<Frame<Bytes>>>, UpstreamError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Some(None));
        };
        let buf = &mut conn.rbuf;
        loop {
            match &mut self.decoder {
                Decoder::Done => return Ok(Some(None)),
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.decoder = Decoder::Done;
                    }
                    return Ok(Some(Some(Frame::data(buf.split_to(n as usize).freeze()))));
                }
                Decoder::Eof => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Some(Frame::data(buf.split().freeze()))));
                }
                Decoder::Chunked(state) => match *state {
                    Chunk::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *state = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_META => {
                            return Ok(None);
                        }
                        _ => return Err(invalid("invalid chunk size")),
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        let n = left.min(buf.len() as u64);
                        *state = if n == left {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - n)
                        };
                        return Ok(Some(Some(Frame::data(buf.split_to(n as usize).freeze()))));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(None);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(invalid("chunk data not followed by CRLF"));
                        }
                        buf.advance(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        match httparse::parse_headers(buf, &mut slots) {
                            Ok(httparse::Status::Complete((used, fields))) => {
                                let mut trailers = HeaderMap::new();
                                for f in fields {
                                    let name = HeaderName::from_bytes(f.name.as_bytes())
                                        .map_err(|_| invalid("invalid trailer name"))?;
                                    let value = HeaderValue::from_bytes(f.value)
                                        .map_err(|_| invalid("invalid trailer value"))?;
                                    trailers.append(name, value);
                                }
                                buf.advance(used);
                                self.decoder = Decoder::Done;
                                if trailers.is_empty() {
                                    return Ok(Some(None));
                                }
                                return Ok(Some(Some(Frame::trailers(trailers))));
                            }
                            Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_META => {
                                return Ok(None);
                            }
                            _ => return Err(invalid("invalid chunked trailer section")),
                        }
                    }
                },
            }
        }
    }
}

impl HttpBody for H1Body {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        if this.sending.is_some()
            && let Err(e) = this.poll_send_rest(cx)
        {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match this.decode() {
                Ok(Some(frame)) => {
                    this.settle();
                    return Poll::Ready(frame.map(Ok));
                }
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(Ok(_)) if this.decoder == Decoder::Eof => {
                    this.decoder = Decoder::Done;
                    this.reusable = false;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                // Closed (or failed) before the body's end.
                Poll::Ready(Ok(_) | Err(_)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(UpstreamError::ConnectionTermination)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The codec against scripted upstreams on loopback: what goes on the wire, how responses
    //! are delimited, and when a connection is reused, kept or closed.
    use super::*;
    use crate::upstream::circuit::CircuitBreakers;
    use crate::upstream::pool::{HostPool, PoolSettings, UpstreamBody};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// An upstream that answers each request on a connection with the next canned response
    /// and reports every request's raw bytes; it closes the connection at once after an answer
    /// followed by `None` (or by nothing).
    struct Script {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        requests: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    async fn script(answers: Vec<Option<&'static [u8]>>) -> Script {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, requests) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter().peekable();
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                while let Some(req) = read_request(&mut s).await {
                    let _ = tx.send(req);
                    let Some(Some(a)) = answers.next() else {
                        break;
                    };
                    if s.write_all(a).await.is_err() || answers.peek().is_none_or(Option::is_none) {
                        answers.next();
                        break;
                    }
                }
            }
        });
        Script {
            addr,
            accepted,
            requests,
        }
    }

    /// An upstream for one connection: reads one request, writes `answer`, then hands the socket
    /// to `then` (which decides what the peer does next: echo, hold it open, close on a signal).
    async fn answer_once<F, Fut>(answer: &'static [u8], then: F) -> std::net::SocketAddr
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            read_request(&mut c).await.unwrap();
            c.write_all(answer).await.unwrap();
            then(c).await;
        });
        addr
    }

    /// Reads one request: the head, then a body by content-length or up to the chunked end.
    async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                let done = if head.contains("transfer-encoding: chunked") {
                    buf.ends_with(b"\r\n\r\n") && buf[end + 4..].windows(3).any(|w| w == b"0\r\n")
                } else {
                    buf.len() >= end + 4 + len
                };
                if done {
                    return Some(buf);
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&b[..n]);
        }
    }

    fn pool(addr: std::net::SocketAddr) -> Arc<HostPool> {
        let stats = crate::stats::Stats::new().cluster("test");
        HostPool::new(
            addr,
            Arc::new(PoolSettings {
                cluster: Arc::from("test"),
                connect_timeout: Duration::from_secs(1),
                tls: None,
                idle_timeout: None,
                max_connection_duration: None,
                max_concurrent_streams: crate::upstream::pool::DEFAULT_MAX_CONCURRENT_STREAMS,
                max_requests_per_connection: 0,
                circuit: Arc::new(CircuitBreakers::default()),
                stats,
                freed: tokio::sync::Notify::new(),
                waiters: AtomicUsize::new(0),
            }),
        )
    }

    fn get(method: Method, body: Body) -> Request<Body> {
        let mut r = Request::new(body);
        *r.method_mut() = method;
        *r.uri_mut() = "/p?q=1".parse().unwrap();
        r.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("svc"));
        r
    }

    fn empty() -> Body {
        full(Bytes::new())
    }

    fn full(b: impl Into<Bytes>) -> Body {
        http_body_util::Full::new(b.into())
            .map_err(|e| match e {})
            .boxed_unsync()
    }

    /// A body of unknown length: frames from a channel, then optional trailers.
    fn streamed(chunks: &[&'static str], trailers: Option<HeaderMap>) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, crate::upstream::pool::BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    /// One request through the pool; the response head must arrive.
    async fn ask(p: &Arc<HostPool>, method: Method, body: Body) -> Response<UpstreamBody> {
        p.send(get(method, body), false, false).await.unwrap()
    }

    async fn collect(b: UpstreamBody) -> Result<(Bytes, Option<HeaderMap>), String> {
        let c = b.collect().await.map_err(|e| e.to_string())?;
        let t = c.trailers().cloned();
        Ok((c.to_bytes(), t))
    }

    #[tokio::test]
    async fn chunked_response_with_trailers_and_connection_reuse() {
        let mut s = script(vec![
            Some(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: done\r\n\r\n"),
            Some(b"HTTP/1.1 204 No Content\r\n\r\n"),
        ])
        .await;
        let p = pool(s.addr);
        let r = ask(&p, Method::GET, empty()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-a"], "1");
        let (body, trailers) = collect(r.into_body()).await.unwrap();
        assert_eq!(body, "hello world");
        assert_eq!(trailers.unwrap()["x-t"], "done");
        let raw = s.requests.recv().await.unwrap();
        assert_eq!(raw, b"GET /p?q=1 HTTP/1.1\r\nhost: svc\r\n\r\n");
        let r = ask(&p, Method::GET, empty()).await;
        assert_eq!(r.status(), 204);
        assert_eq!(
            s.accepted.load(Ordering::SeqCst),
            1,
            "the connection was reused"
        );
    }

    #[tokio::test]
    async fn each_response_on_a_kept_connection_is_read_into_the_same_memory() {
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let s = script(vec![Some(ANSWER), Some(ANSWER), Some(ANSWER)]).await;
        let p = pool(s.addr);
        let mut at = Vec::new();
        for _ in 0..3 {
            let mut body = ask(&p, Method::GET, empty()).await.into_body();
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(data, "hello");
            at.push(data.as_ptr() as usize);
            drop(data);
            // the end of the body gives the connection back to the pool
            assert!(body.frame().await.is_none());
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
        // once the previous response is dropped the read buffer starts over at its beginning
        // (cache-warm memory), rather than moving on through its spare room
        assert_eq!(at[0], at[1]);
        assert_eq!(at[1], at[2]);
    }

    #[tokio::test]
    async fn a_body_piece_still_held_does_not_cost_a_new_buffer_per_read() {
        // the second half is sent only once the first has been received: two reads, always
        let (got_hello, wait_hello) = tokio::sync::oneshot::channel::<()>();
        let addr = answer_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
            |mut c| async move {
                if wait_hello.await.is_ok() {
                    c.write_all(b"world").await.unwrap();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            },
        )
        .await;
        let p = pool(addr);
        let mut body = ask(&p, Method::GET, empty()).await.into_body();
        let hello = body.frame().await.unwrap().unwrap().into_data().unwrap();
        got_hello.send(()).unwrap();
        let world = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!((&hello[..], &world[..]), (&b"hello"[..], &b"world"[..]));
        // `hello` was still held when `world` was read: it was read on at the tail of the
        // same buffer, not into a new one
        assert_eq!(world.as_ptr() as usize, hello.as_ptr() as usize + 5);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_head_responses_have_no_body() {
        let s = script(vec![
            Some(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Some(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes"),
        ])
        .await;
        let p = pool(s.addr);
        let r = ask(&p, Method::GET, empty()).await;
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("link"));
        assert_eq!(collect(r.into_body()).await.unwrap().0, "ok");
        let r = ask(&p, Method::HEAD, empty()).await;
        assert_eq!(r.headers()["content-length"], "5");
        assert!(r.body().is_end_stream());
        assert_eq!(collect(r.into_body()).await.unwrap().0, "");
        // The HEAD answer carried no body: the next response is read from its first byte.
        let r = ask(&p, Method::GET, empty()).await;
        assert_eq!(collect(r.into_body()).await.unwrap().0, "yes");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close_responses_are_not_reused() {
        let s = script(vec![
            Some(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"),
            None,
        ])
        .await;
        let p = pool(s.addr);
        let r = ask(&p, Method::GET, empty()).await;
        assert_eq!(collect(r.into_body()).await.unwrap().0, "a");
        // No length at all: the body runs to the close.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut c, _) = l.accept().await.unwrap();
                read_request(&mut c).await.unwrap();
                c.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil").await.unwrap();
                c.write_all(b" the end").await.unwrap();
            }
        });
        let p2 = pool(addr);
        for _ in 0..2 {
            let r = ask(&p2, Method::GET, empty()).await;
            assert_eq!(collect(r.into_body()).await.unwrap().0, "until the end");
        }
        assert_eq!(p2.idle_count(), 0);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(p.idle_count(), 0, "connection: close is honoured");
    }

    #[tokio::test]
    async fn request_framing_length_chunked_and_trailers() {
        let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let mut s = script(vec![Some(ok), Some(ok), Some(ok), Some(ok)]).await;
        let p = pool(s.addr);
        ask(&p, Method::POST, full("abc")).await;
        let raw = s.requests.recv().await.unwrap();
        assert!(raw.ends_with(b"content-length: 3\r\n\r\nabc"), "{raw:?}");
        // The client's own transfer-encoding is never copied; the framing is chosen here.
        let mut req = get(Method::POST, streamed(&["ab", "cde"], None));
        req.headers_mut()
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        p.send(req, false, false).await.unwrap();
        let raw = String::from_utf8(s.requests.recv().await.unwrap()).unwrap();
        assert!(
            raw.ends_with("transfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{raw}"
        );
        assert!(!raw.contains("gzip"), "{raw}");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        ask(&p, Method::PUT, streamed(&["x"], Some(t))).await;
        let raw = String::from_utf8(s.requests.recv().await.unwrap()).unwrap();
        assert!(
            raw.ends_with("1\r\nx\r\n0\r\ngrpc-status: 0\r\n\r\n"),
            "{raw}"
        );
        // An empty POST still says its length.
        ask(&p, Method::POST, empty()).await;
        let raw = String::from_utf8(s.requests.recv().await.unwrap()).unwrap();
        assert!(raw.ends_with("content-length: 0\r\n\r\n"), "{raw}");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn connection_headers_are_consumed_unless_needed() {
        let parse = |raw: &str| {
            let mut b = BytesMut::from(raw);
            let h = parse_head(&mut b, false).unwrap().unwrap();
            (h.response.headers().clone(), h.keep_alive, h.decoder)
        };
        let (h, keep, dec) = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: x\r\nX-End: 1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-end") && h.contains_key("content-length"));
        assert!(keep);
        assert_eq!(dec, Decoder::Done);
        // A Connection naming another header stays, for the proxy to remove what it names.
        let (h, keep, _) = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(h["connection"], "close, X-Hop");
        assert!(h.contains_key("x-hop") && !h.contains_key("transfer-encoding"));
        assert!(!keep);
        // A 101 keeps what the client needs to complete the upgrade.
        let (h, _, _) = parse(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        // HTTP/1.0 persists only when asked to.
        let (_, keep, dec) = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!keep);
        assert_eq!(dec, Decoder::Length(1));
        let (_, keep, _) =
            parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n");
        assert!(keep);
    }

    #[test]
    fn content_length_is_digits_only() {
        for (v, n) in [
            (&b"0"[..], Some(0)),
            (b"1024", Some(1024)),
            (b" 7 ", Some(7)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"+5", None),
            (b"-1", None),
            (b"1 2", None),
            (b"0x10", None),
            (b"", None),
            (b"  ", None),
        ] {
            assert_eq!(parse_length(v), n, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn heads_with_few_and_many_headers_keep_every_name_and_value() {
        for n in [0, FEW_HEADERS, FEW_HEADERS + 1, MAX_HEADERS - 1] {
            let mut raw = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
            for i in 0..n {
                raw.push_str(&format!("X-H{i}: value-{i}\r\n"));
            }
            raw.push_str("\r\nok");
            let mut b = BytesMut::from(raw.as_str());
            let h = parse_head(&mut b, false).unwrap().unwrap();
            let headers = h.response.headers();
            assert_eq!(headers.len(), n + 1, "{n} headers");
            for i in 0..n {
                assert_eq!(headers[format!("x-h{i}").as_str()], format!("value-{i}"));
            }
            assert_eq!(h.decoder, Decoder::Length(2));
            assert_eq!(&b[..], b"ok", "the head is cut off, the body stays");
        }
    }

    #[tokio::test]
    async fn malformed_responses_are_protocol_errors() {
        let big: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
                "a".repeat(MAX_HEAD + 10)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        for (answer, want) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"[..],
                "conflicting content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                "invalid content-length",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed response head"),
            (b"NOT HTTP\r\n\r\n", "malformed response head"),
            (big, "too large"),
        ] {
            let s = script(vec![Some(answer)]).await;
            let Err(e) = pool(s.addr)
                .send(get(Method::GET, empty()), false, false)
                .await
            else {
                panic!("{want}: the response was accepted");
            };
            assert!(
                matches!(&e, UpstreamError::Protocol(m) if m.contains(want)),
                "{want}: {e:?}"
            );
            assert_eq!(e.flag(), crate::flags::ResponseFlags::UPE);
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_the_connection_is_dropped() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let s = script(vec![Some(answer), None]).await;
            let p = pool(s.addr);
            let r = ask(&p, Method::GET, empty()).await;
            assert!(collect(r.into_body()).await.is_err());
            assert_eq!(p.idle_count(), 0);
        }
    }

    #[tokio::test]
    async fn early_answer_while_the_body_is_still_streaming() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b).await;
            c.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            // Keep reading so the proxy's writes do not fail first.
            while c.read(&mut b).await.is_ok_and(|n| n > 0) {}
        });
        // A body that never ends.
        let (_keep, rx) = mpsc::channel::<Result<Frame<Bytes>, crate::upstream::pool::BoxError>>(1);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
        let p = pool(addr);
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            p.send(get(Method::POST, body), false, false),
        )
        .await
        .expect("the early answer is seen while the body is pending")
        .unwrap();
        assert_eq!(r.status(), 413);
        collect(r.into_body()).await.unwrap();
        assert_eq!(p.idle_count(), 0, "a connection mid-request is not reused");
    }

    #[tokio::test]
    async fn request_body_keeps_streaming_after_the_response_head() {
        // An echo upstream: answers at once, then returns each request chunk as it arrives.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut b = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut b).await.unwrap();
                buf.extend_from_slice(&b[..n]);
            }
            c.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            // Chunked request body in, chunked response body out, chunk for chunk.
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut pending = buf.split_off(end);
            loop {
                if pending.ends_with(b"0\r\n\r\n") && pending.len() == 5 {
                    c.write_all(b"0\r\n\r\n").await.unwrap();
                    // Stay open: the connection should go back to the pool.
                    let _ = c.read(&mut b).await;
                    break;
                }
                if let Some(p) = pending.windows(2).position(|w| w == b"\r\n") {
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&pending[..p]).unwrap(), 16)
                            .unwrap();
                    if size > 0 && pending.len() >= p + 2 + size + 2 {
                        let chunk: Vec<u8> = pending.drain(..p + 2 + size + 2).collect();
                        c.write_all(&chunk).await.unwrap();
                        continue;
                    }
                }
                let n = c.read(&mut b).await.unwrap();
                assert!(n > 0, "the request body ended early");
                pending.extend_from_slice(&b[..n]);
            }
        });
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, crate::upstream::pool::BoxError>>(1);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
        let p = pool(addr);
        let step = Duration::from_secs(5);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        let r = tokio::time::timeout(step, p.send(get(Method::POST, body), false, false))
            .await
            .unwrap()
            .unwrap();
        let mut body = r.into_body();
        for word in ["one", "two", "three"] {
            if word != "one" {
                tx.send(Ok(Frame::data(Bytes::from(word)))).await.unwrap();
            }
            let f = tokio::time::timeout(step, body.frame())
                .await
                .expect("the echo of the last chunk")
                .unwrap()
                .unwrap();
            assert_eq!(f.into_data().unwrap(), word);
        }
        drop(tx);
        let rest = tokio::time::timeout(step, body.collect())
            .await
            .unwrap()
            .unwrap();
        assert!(rest.to_bytes().is_empty());
        assert_eq!(
            p.idle_count(),
            1,
            "request and response both complete: reusable"
        );
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn upgrade_hands_over_the_connection_with_buffered_bytes() {
        let addr = answer_once(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nfirst",
            |mut c| async move {
                let mut b = [0u8; 4];
                c.read_exact(&mut b).await.unwrap();
                c.write_all(&b).await.unwrap();
            },
        )
        .await;
        let p = pool(addr);
        let r = p
            .send(get(Method::GET, empty()), false, true)
            .await
            .unwrap();
        assert_eq!(r.status(), 101);
        let mut up = r.into_body().into_upgraded().expect("an upgraded stream");
        let mut b = [0u8; 5];
        up.io.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"first");
        up.io.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        up.io.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
    }

    #[tokio::test]
    async fn the_reaper_ends_with_its_endpoint() {
        // Keeps the socket (and its task) whatever the proxy side does.
        let addr = answer_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            |c| async move {
                std::future::pending::<()>().await;
                drop(c);
            },
        )
        .await;
        let p = pool(addr);
        collect(ask(&p, Method::GET, empty()).await.into_body())
            .await
            .unwrap();
        assert_eq!(p.idle_count(), 1, "the connection is idle: its reaper runs");
        let metrics = tokio::runtime::Handle::current().metrics();
        tokio::task::yield_now().await;
        let before = metrics.num_alive_tasks();
        // An endpoint removed by an EDS update drops its pool: no task may stay behind.
        drop(p);
        let t0 = std::time::Instant::now();
        while metrics.num_alive_tasks() >= before && t0.elapsed() < Duration::from_secs(5) {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before - 1);
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_peer_frees_its_slot() {
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = answer_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            |c| async move {
                let _ = close_rx.await;
                drop(c);
            },
        )
        .await;
        let p = pool(addr);
        let r = ask(&p, Method::GET, empty()).await;
        collect(r.into_body()).await.unwrap();
        assert_eq!(p.idle_count(), 1);
        let gauge = || p.settings().stats.upstream_cx_active.get();
        assert_eq!(gauge(), 1);
        // The upstream closes its end; no request follows: the reaper alone must notice.
        drop(close_tx);
        let t0 = std::time::Instant::now();
        while p.idle_count() > 0 && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            p.idle_count(),
            0,
            "the reaper dropped the closed connection"
        );
        assert_eq!(gauge(), 0);
        assert_eq!(p.settings().circuit.connections(), 0);
    }
}
