//! Envoy-compatible access logging: the substitution format language (`%REQ(:METHOD)%`,
//! `%RESPONSE_FLAGS%`, JSON dictionaries, ...), Envoy's default format, and the file / stdout /
//! stderr loggers configured through `envoy.config.accesslog.v3.AccessLog`.
//!
//! Formats are parsed once at config time into a flat list of literal bytes and command
//! operators; writing a line only reads the borrowed [`LogRecord`] and appends bytes. Lines go to
//! a dedicated writer thread per sink through a bounded channel, so the request path never waits
//! on disk: when the queue is full the line is dropped and counted rather than blocking. Line
//! buffers are recycled through the sink, so steady-state logging does not allocate.
//!
//! This module must not do I/O on the request path, and must not know about routing, clusters or
//! protobuf beyond translating the access log config once.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as SfsFormat;
use envoy_types::pb::envoy::config::core::v3::{DataSource, SubstitutionFormatString};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat as FileFormat;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{
    Struct as PbStruct, Value as PbValue, value::Kind as PbKind,
};
use http::header::HOST;
use http::{HeaderMap, HeaderName};
use prost::Message as _;
use serde_json::{Map as JsonMap, Value as JsonValue};

use crate::flags::ResponseFlags;

/// Envoy's default access log format.
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

const FILE_ACCESS_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_ACCESS_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_ACCESS_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// Lines queued per sink before new lines are dropped (and counted).
const QUEUE_LINES: usize = 16 * 1024;
/// Recycled line buffers kept per sink.
const POOL_MAX: usize = 1024;
/// Line buffers larger than this are not recycled.
const POOL_BUF_MAX: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// The record
// ---------------------------------------------------------------------------------------------

/// One finished request (HTTP) or connection (TCP), borrowed from the proxy.
#[derive(Clone, Debug)]
pub struct LogRecord<'a> {
    /// When the request / connection started.
    pub start_time: SystemTime,
    /// Total duration.
    pub duration: Duration,
    /// Request head; `None` for TCP.
    pub request: Option<&'a http::request::Parts>,
    /// Response status; 0 for TCP or when no response was sent.
    pub response_code: u16,
    /// Response headers as sent downstream.
    pub response_headers: Option<&'a HeaderMap>,
    /// Response trailers.
    pub response_trailers: Option<&'a HeaderMap>,
    /// `"HTTP/1.1"`, `"HTTP/2"`, `"HTTP/1.0"`, or `"-"` / `""` for TCP.
    pub protocol: &'a str,
    /// Why the request ended the way it did.
    pub flags: ResponseFlags,
    /// Envoy's response code details (`via_upstream`, `route_not_found`, ...); `""` if none.
    pub response_code_details: &'a str,
    /// Why the connection was terminated, if the proxy terminated it.
    pub connection_termination_details: Option<&'a str>,
    /// Why the upstream transport (TLS) failed.
    pub upstream_transport_failure_reason: Option<&'a str>,
    /// Body bytes received from downstream.
    pub bytes_received: u64,
    /// Body bytes sent downstream.
    pub bytes_sent: u64,
    /// Time from upstream request start to upstream response headers.
    pub upstream_service_time: Option<Duration>,
    /// The upstream host that served the request.
    pub upstream_host: Option<SocketAddr>,
    /// Upstream cluster name; `""` if none.
    pub upstream_cluster: &'a str,
    /// Local address of the upstream connection.
    pub upstream_local_address: Option<SocketAddr>,
    /// Local address of the downstream connection.
    pub downstream_local_address: SocketAddr,
    /// Peer address of the downstream connection.
    pub downstream_remote_address: SocketAddr,
    /// SNI of the downstream TLS connection.
    pub requested_server_name: Option<&'a str>,
    /// Name of the matched route; `""` if none.
    pub route_name: &'a str,
    /// Request authority (from the URI or the Host header); `""` if none.
    pub authority: &'a str,
}

impl<'a> LogRecord<'a> {
    /// A record with only the addresses and start time set; everything else empty.
    pub fn new(start_time: SystemTime, local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            start_time,
            duration: Duration::ZERO,
            request: None,
            response_code: 0,
            response_headers: None,
            response_trailers: None,
            protocol: "",
            flags: ResponseFlags::empty(),
            response_code_details: "",
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            upstream_service_time: None,
            upstream_host: None,
            upstream_cluster: "",
            upstream_local_address: None,
            downstream_local_address: local,
            downstream_remote_address: remote,
            requested_server_name: None,
            route_name: "",
            authority: "",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A bad access log format or access log config.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A `%NAME%` this proxy does not implement.
    #[error(
        "unknown access log command operator %{operator}% in format {format:?} (supported: {SUPPORTED_OPERATORS})"
    )]
    UnknownOperator {
        /// The operator name.
        operator: String,
        /// The whole format string.
        format: String,
    },
    /// The format string does not parse.
    #[error("invalid access log format {format:?} at byte {pos}: {reason}")]
    Syntax {
        /// The whole format string.
        format: String,
        /// Byte offset of the problem.
        pos: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An operator's argument is wrong.
    #[error("access log operator %{operator}%: {reason}")]
    InvalidArgument {
        /// The operator name.
        operator: String,
        /// What is wrong.
        reason: String,
    },
    /// A config field this proxy does not support.
    #[error("{field}: {reason}")]
    Unsupported {
        /// Path of the field in the config.
        field: String,
        /// What is unsupported and what to do instead.
        reason: String,
    },
    /// A config field has an invalid value.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field in the config.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The typed config did not decode.
    #[error("{field}: cannot decode {type_name}: {source}")]
    Decode {
        /// Path of the field in the config.
        field: String,
        /// The protobuf type.
        type_name: &'static str,
        /// The decoder's error.
        source: prost::DecodeError,
    },
    /// The sink (or a format file) could not be opened.
    #[error("{field}: cannot open {path:?}: {source}")]
    Io {
        /// Path of the field in the config.
        field: String,
        /// The file system path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

const SUPPORTED_OPERATORS: &str = "START_TIME, REQ, RESP, TRAILER, PROTOCOL, RESPONSE_CODE, \
RESPONSE_FLAGS, RESPONSE_FLAGS_LONG, RESPONSE_CODE_DETAILS, CONNECTION_TERMINATION_DETAILS, \
UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, BYTES_SENT, DURATION, UPSTREAM_HOST, \
UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, UPSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS, \
DOWNSTREAM_REMOTE_ADDRESS, *_WITHOUT_PORT, *_PORT, REQUESTED_SERVER_NAME, ROUTE_NAME, HOSTNAME";

// ---------------------------------------------------------------------------------------------
// Parsed format
// ---------------------------------------------------------------------------------------------

/// A parsed Envoy substitution format (text or JSON).
#[derive(Clone, Debug)]
pub struct Format {
    kind: Kind,
    omit_empty: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    Text(Vec<Piece>),
    Json {
        fields: Vec<JsonField>,
        /// Numbers as JSON numbers (`json_format`); the deprecated untyped form renders
        /// everything as strings.
        typed: bool,
    },
}

#[derive(Clone, Debug)]
enum Piece {
    Lit(Box<[u8]>),
    Cmd(Cmd),
}

#[derive(Clone, Debug)]
struct Cmd {
    op: Op,
    max_len: Option<usize>,
}

#[derive(Clone, Debug)]
struct JsonField {
    /// `"key":`, already escaped.
    key: Box<[u8]>,
    value: JsonNode,
}

#[derive(Clone, Debug)]
enum JsonNode {
    /// A pre-serialized JSON constant.
    Const(Box<[u8]>),
    /// A value that is exactly one operator: typed (number / null).
    Single(Cmd),
    /// A string template mixing literals and operators.
    Template(Vec<Piece>),
    Object(Vec<JsonField>),
}

#[derive(Clone, Debug)]
enum Op {
    StartTime(Box<[TimePiece]>),
    Req(HeaderSel),
    Resp(HeaderSel),
    Trailer(HeaderSel),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseFlagsLong,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamHostWithoutPort,
    UpstreamPort,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamLocalAddressWithoutPort,
    UpstreamLocalPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    RequestedServerName,
    RouteName,
    Hostname(Box<str>),
}

impl Op {
    /// Rendered as a JSON number in typed JSON.
    fn is_numeric(&self) -> bool {
        matches!(
            self,
            Op::ResponseCode
                | Op::BytesReceived
                | Op::BytesSent
                | Op::Duration
                | Op::UpstreamPort
                | Op::UpstreamLocalPort
                | Op::DownstreamLocalPort
                | Op::DownstreamRemotePort
        )
    }
}

#[derive(Clone, Debug)]
struct HeaderSel {
    main: HeaderKey,
    alt: Option<HeaderKey>,
}

#[derive(Clone, Debug)]
enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Status,
    /// `x-envoy-upstream-service-time`: falls back to the record's upstream service time when
    /// the proxy did not add the header.
    ServiceTime(HeaderName),
    Name(HeaderName),
}

#[derive(Clone, Debug)]
enum TimePiece {
    Lit(Box<[u8]>),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    Hour,
    Hour12,
    AmPm,
    Minute,
    Second,
    /// `%E<n>S`: seconds with n fractional digits.
    SecondFrac(u8),
    /// `%E*S`: seconds with full precision, trailing zeros dropped.
    SecondFracAll,
    /// `%<n>f` / `%f`: n fractional digits, no dot.
    Frac(u8),
    Epoch,
    DayOfYear,
    WeekdayAbbr,
    WeekdayFull,
    MonthAbbr,
    MonthFull,
    /// `+0000`
    Offset,
    /// `+00:00`
    OffsetColon,
    ZoneName,
}

impl Format {
    /// Parse an Envoy text format string (`text_format`, `format`).
    pub fn text(format: &str) -> Result<Format, FormatError> {
        Ok(Format {
            kind: Kind::Text(parse_pieces(format)?),
            omit_empty: false,
        })
    }

    /// Parse an Envoy JSON format dictionary (`json_format`). Values are format strings, nested
    /// objects, or constants (numbers, booleans, null).
    pub fn json(map: &JsonMap<String, JsonValue>) -> Result<Format, FormatError> {
        Ok(Format {
            kind: Kind::Json {
                fields: parse_json_object(map, "json_format")?,
                typed: true,
            },
            omit_empty: false,
        })
    }

    /// Envoy's default format ([`ENVOY_DEFAULT_FORMAT`]).
    pub fn envoy_default() -> Format {
        match Format::text(ENVOY_DEFAULT_FORMAT) {
            Ok(f) => f,
            // The constant parses (tested); keep a harmless fallback instead of a panic.
            Err(_) => Format {
                kind: Kind::Text(Vec::new()),
                omit_empty: false,
            },
        }
    }

    /// Envoy's `omit_empty_values`: missing values print nothing (text) or drop the key (JSON).
    pub fn with_omit_empty_values(mut self, omit: bool) -> Format {
        self.omit_empty = omit;
        self
    }

    /// Whether this is a JSON format.
    pub fn is_json(&self) -> bool {
        matches!(self.kind, Kind::Json { .. })
    }

    fn untyped(mut self) -> Format {
        if let Kind::Json { typed, .. } = &mut self.kind {
            *typed = false;
        }
        self
    }

    /// Append the formatted record to `out` (JSON formats add a trailing newline).
    pub fn write(&self, rec: &LogRecord, out: &mut Vec<u8>) {
        let ctx = Ctx::new(rec, self.omit_empty);
        match &self.kind {
            Kind::Text(pieces) => write_text(pieces, &ctx, out),
            Kind::Json { fields, typed } => {
                write_json_object(fields, &ctx, *typed, out);
                out.push(b'\n');
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

fn syntax(format: &str, pos: usize, reason: &'static str) -> FormatError {
    FormatError::Syntax {
        format: format.to_owned(),
        pos,
        reason,
    }
}

fn parse_pieces(format: &str) -> Result<Vec<Piece>, FormatError> {
    let bytes = format.as_bytes();
    let mut pieces = Vec::new();
    let mut lit: Vec<u8> = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            lit.push(b);
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'%') {
            lit.push(b'%');
            i += 2;
            continue;
        }
        let name_start = i + 1;
        let mut j = name_start;
        while bytes
            .get(j)
            .is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        {
            j += 1;
        }
        if j == name_start {
            return Err(syntax(
                format,
                i,
                "'%' does not start a command operator (write %% for a literal percent sign)",
            ));
        }
        let name = format.get(name_start..j).unwrap_or_default();
        let mut arg = None;
        if bytes.get(j) == Some(&b'(') {
            let close = bytes
                .get(j + 1..)
                .and_then(|rest| rest.iter().position(|c| *c == b')'))
                .ok_or_else(|| syntax(format, j, "'(' without a closing ')'"))?;
            arg = Some(format.get(j + 1..j + 1 + close).unwrap_or_default());
            j = j + 1 + close + 1;
        }
        let mut max_len = None;
        if bytes.get(j) == Some(&b':') {
            let digits_start = j + 1;
            let mut k = digits_start;
            while bytes.get(k).is_some_and(u8::is_ascii_digit) {
                k += 1;
            }
            let digits = format.get(digits_start..k).unwrap_or_default();
            let n: usize = digits
                .parse()
                .map_err(|_| syntax(format, j, "':' must be followed by a maximum length"))?;
            max_len = Some(n);
            j = k;
        }
        if bytes.get(j) != Some(&b'%') {
            return Err(syntax(
                format,
                j,
                "command operator is not terminated by '%'",
            ));
        }
        i = j + 1;
        if !lit.is_empty() {
            pieces.push(Piece::Lit(std::mem::take(&mut lit).into_boxed_slice()));
        }
        let op = parse_op(name, arg, format)?;
        pieces.push(Piece::Cmd(Cmd { op, max_len }));
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit.into_boxed_slice()));
    }
    Ok(pieces)
}

fn parse_op(name: &str, arg: Option<&str>, format: &str) -> Result<Op, FormatError> {
    let header_arg = arg
        .filter(|a| !a.is_empty())
        .ok_or_else(|| FormatError::InvalidArgument {
            operator: name.to_owned(),
            reason: "needs a header name, e.g. %REQ(USER-AGENT)%".to_owned(),
        });
    let op = match name {
        "START_TIME" => Op::StartTime(parse_time_format(arg.unwrap_or(""), name)?),
        "REQ" => Op::Req(parse_header_sel(header_arg?, name, HeaderSide::Request)?),
        "RESP" => Op::Resp(parse_header_sel(header_arg?, name, HeaderSide::Response)?),
        "TRAILER" => Op::Trailer(parse_header_sel(header_arg?, name, HeaderSide::Trailer)?),
        _ => {
            if arg.is_some() {
                return Err(FormatError::InvalidArgument {
                    operator: name.to_owned(),
                    reason: "takes no argument".to_owned(),
                });
            }
            match name {
                "PROTOCOL" => Op::Protocol,
                "RESPONSE_CODE" => Op::ResponseCode,
                "RESPONSE_FLAGS" => Op::ResponseFlags,
                "RESPONSE_FLAGS_LONG" => Op::ResponseFlagsLong,
                "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
                "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
                "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
                "BYTES_RECEIVED" => Op::BytesReceived,
                "BYTES_SENT" => Op::BytesSent,
                "DURATION" => Op::Duration,
                "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamHost,
                "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamHostWithoutPort,
                "UPSTREAM_REMOTE_PORT" => Op::UpstreamPort,
                "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Op::UpstreamCluster,
                "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
                "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::UpstreamLocalAddressWithoutPort,
                "UPSTREAM_LOCAL_PORT" => Op::UpstreamLocalPort,
                "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
                "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
                "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
                "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
                    Op::DownstreamRemoteAddress
                }
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
                | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                    Op::DownstreamRemoteAddressWithoutPort
                }
                "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => {
                    Op::DownstreamRemotePort
                }
                "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
                "ROUTE_NAME" => Op::RouteName,
                "HOSTNAME" => Op::Hostname(hostname().into_boxed_str()),
                _ => {
                    return Err(FormatError::UnknownOperator {
                        operator: name.to_owned(),
                        format: format.to_owned(),
                    });
                }
            }
        }
    };
    Ok(op)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "-".to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderSide {
    Request,
    Response,
    Trailer,
}

fn parse_header_sel(arg: &str, op: &str, side: HeaderSide) -> Result<HeaderSel, FormatError> {
    let (main, alt) = match arg.split_once('?') {
        Some((m, a)) => (m, Some(a)),
        None => (arg, None),
    };
    Ok(HeaderSel {
        main: parse_header_key(main, op, side)?,
        alt: alt.map(|a| parse_header_key(a, op, side)).transpose()?,
    })
}

fn parse_header_key(name: &str, op: &str, side: HeaderSide) -> Result<HeaderKey, FormatError> {
    let lower = name.trim().to_ascii_lowercase();
    let bad = |reason: String| FormatError::InvalidArgument {
        operator: format!("{op}({name})"),
        reason,
    };
    if let Some(pseudo) = lower.strip_prefix(':') {
        return match (side, pseudo) {
            (HeaderSide::Request, "method") => Ok(HeaderKey::Method),
            (HeaderSide::Request, "path") => Ok(HeaderKey::Path),
            (HeaderSide::Request, "authority") => Ok(HeaderKey::Authority),
            (HeaderSide::Request, "scheme") => Ok(HeaderKey::Scheme),
            (HeaderSide::Response, "status") => Ok(HeaderKey::Status),
            _ => Err(bad(
                "unsupported pseudo-header; use :method, :path, :authority or :scheme with REQ \
                 and :status with RESP"
                    .to_owned(),
            )),
        };
    }
    let header = HeaderName::from_bytes(lower.as_bytes())
        .map_err(|e| bad(format!("bad header name: {e}")))?;
    if side == HeaderSide::Response && header.as_str() == "x-envoy-upstream-service-time" {
        return Ok(HeaderKey::ServiceTime(header));
    }
    Ok(HeaderKey::Name(header))
}

fn default_time() -> Box<[TimePiece]> {
    vec![
        TimePiece::Year,
        TimePiece::Lit(Box::new(*b"-")),
        TimePiece::Month,
        TimePiece::Lit(Box::new(*b"-")),
        TimePiece::Day,
        TimePiece::Lit(Box::new(*b"T")),
        TimePiece::Hour,
        TimePiece::Lit(Box::new(*b":")),
        TimePiece::Minute,
        TimePiece::Lit(Box::new(*b":")),
        TimePiece::SecondFrac(3),
        TimePiece::Lit(Box::new(*b"Z")),
    ]
    .into_boxed_slice()
}

fn parse_time_format(fmt: &str, op: &str) -> Result<Box<[TimePiece]>, FormatError> {
    if fmt.is_empty() {
        return Ok(default_time());
    }
    let bad = |reason: String| FormatError::InvalidArgument {
        operator: format!("{op}({fmt})"),
        reason,
    };
    let mut out = Vec::new();
    let mut lit = Vec::new();
    let mut chars = fmt.char_indices().peekable();
    let push_lit = |out: &mut Vec<TimePiece>, lit: &mut Vec<u8>| {
        if !lit.is_empty() {
            out.push(TimePiece::Lit(std::mem::take(lit).into_boxed_slice()));
        }
    };
    while let Some((_, c)) = chars.next() {
        if c != '%' {
            let mut buf = [0u8; 4];
            lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let Some((_, spec)) = chars.next() else {
            return Err(bad("trailing '%'".to_owned()));
        };
        let piece = match spec {
            '%' => {
                lit.push(b'%');
                continue;
            }
            'n' => {
                lit.push(b'\n');
                continue;
            }
            't' => {
                lit.push(b'\t');
                continue;
            }
            'Y' => TimePiece::Year,
            'y' => TimePiece::Year2,
            'm' => TimePiece::Month,
            'd' => TimePiece::Day,
            'e' => TimePiece::DaySpace,
            'H' => TimePiece::Hour,
            'I' => TimePiece::Hour12,
            'p' => TimePiece::AmPm,
            'M' => TimePiece::Minute,
            'S' => TimePiece::Second,
            's' => TimePiece::Epoch,
            'j' => TimePiece::DayOfYear,
            'a' => TimePiece::WeekdayAbbr,
            'A' => TimePiece::WeekdayFull,
            'b' | 'h' => TimePiece::MonthAbbr,
            'B' => TimePiece::MonthFull,
            'z' => TimePiece::Offset,
            'Z' => TimePiece::ZoneName,
            'f' => TimePiece::Frac(9),
            'T' | 'F' | 'D' | 'R' => {
                push_lit(&mut out, &mut lit);
                let (a, sep, b, c) = match spec {
                    'T' => (
                        TimePiece::Hour,
                        b':',
                        TimePiece::Minute,
                        Some(TimePiece::Second),
                    ),
                    'F' => (
                        TimePiece::Year,
                        b'-',
                        TimePiece::Month,
                        Some(TimePiece::Day),
                    ),
                    'D' => (
                        TimePiece::Month,
                        b'/',
                        TimePiece::Day,
                        Some(TimePiece::Year2),
                    ),
                    _ => (TimePiece::Hour, b':', TimePiece::Minute, None),
                };
                out.push(a);
                out.push(TimePiece::Lit(Box::new([sep])));
                out.push(b);
                if let Some(c) = c {
                    out.push(TimePiece::Lit(Box::new([sep])));
                    out.push(c);
                }
                continue;
            }
            d @ '1'..='9' => {
                if chars.next().map(|(_, c)| c) != Some('f') {
                    return Err(bad(format!("%{d} must be followed by 'f' (e.g. %3f)")));
                }
                TimePiece::Frac(d as u8 - b'0')
            }
            'E' => match chars.next().map(|(_, c)| c) {
                Some('z') => TimePiece::OffsetColon,
                Some('*') if chars.next().map(|(_, c)| c) == Some('S') => TimePiece::SecondFracAll,
                Some(d @ '0'..='9') if chars.next().map(|(_, c)| c) == Some('S') => {
                    TimePiece::SecondFrac(d as u8 - b'0')
                }
                _ => {
                    return Err(bad(
                        "unsupported %E specifier (use %E3S, %E*S or %Ez)".to_owned()
                    ));
                }
            },
            other => return Err(bad(format!("unsupported time specifier %{other}"))),
        };
        push_lit(&mut out, &mut lit);
        out.push(piece);
    }
    push_lit(&mut out, &mut lit);
    Ok(out.into_boxed_slice())
}

fn parse_json_object(
    map: &JsonMap<String, JsonValue>,
    path: &str,
) -> Result<Vec<JsonField>, FormatError> {
    let mut fields = Vec::with_capacity(map.len());
    for (k, v) in map {
        let mut key = JsonValue::String(k.clone()).to_string().into_bytes();
        key.push(b':');
        let here = format!("{path}.{k}");
        let value = match v {
            JsonValue::String(s) => {
                let pieces = parse_pieces(s)?;
                match pieces.as_slice() {
                    [Piece::Cmd(cmd)] => JsonNode::Single(cmd.clone()),
                    _ if pieces.iter().all(|p| matches!(p, Piece::Lit(_))) => {
                        JsonNode::Const(v.to_string().into_bytes().into_boxed_slice())
                    }
                    _ => JsonNode::Template(pieces),
                }
            }
            JsonValue::Object(inner) => JsonNode::Object(parse_json_object(inner, &here)?),
            JsonValue::Number(_) | JsonValue::Bool(_) | JsonValue::Null => {
                JsonNode::Const(v.to_string().into_bytes().into_boxed_slice())
            }
            JsonValue::Array(_) => {
                return Err(FormatError::Unsupported {
                    field: here,
                    reason: "lists are not supported in JSON access log formats".to_owned(),
                });
            }
        };
        fields.push(JsonField {
            key: key.into_boxed_slice(),
            value,
        });
    }
    Ok(fields)
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

struct Ctx<'r, 'a> {
    rec: &'r LogRecord<'a>,
    omit_empty: bool,
    /// Broken-down start time, computed on first use.
    time: std::cell::OnceCell<Civil>,
}

impl<'r, 'a> Ctx<'r, 'a> {
    fn new(rec: &'r LogRecord<'a>, omit_empty: bool) -> Self {
        Self {
            rec,
            omit_empty,
            time: std::cell::OnceCell::new(),
        }
    }

    fn civil(&self) -> &Civil {
        self.time.get_or_init(|| Civil::from(self.rec.start_time))
    }
}

fn write_text(pieces: &[Piece], ctx: &Ctx, out: &mut Vec<u8>) {
    for p in pieces {
        match p {
            Piece::Lit(b) => out.extend_from_slice(b),
            Piece::Cmd(cmd) => {
                if !render_cmd(cmd, ctx, out) && !ctx.omit_empty {
                    out.push(b'-');
                }
            }
        }
    }
}

/// Render one command with its max length; false (and nothing written) when it has no value.
fn render_cmd(cmd: &Cmd, ctx: &Ctx, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    if !render(&cmd.op, ctx, out) {
        return false;
    }
    if let Some(max) = cmd.max_len {
        out.truncate(start.saturating_add(max));
    }
    true
}

fn write_json_object(fields: &[JsonField], ctx: &Ctx, typed: bool, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for f in fields {
        let mark = out.len();
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(&f.key);
        if !write_json_value(&f.value, ctx, typed, out) && ctx.omit_empty {
            out.truncate(mark);
            continue;
        }
        first = false;
    }
    out.push(b'}');
}

/// Write one JSON value; false when it was a missing operator (written as `null`).
fn write_json_value(node: &JsonNode, ctx: &Ctx, typed: bool, out: &mut Vec<u8>) -> bool {
    match node {
        JsonNode::Const(b) => out.extend_from_slice(b),
        JsonNode::Object(fields) => write_json_object(fields, ctx, typed, out),
        JsonNode::Template(pieces) => {
            out.push(b'"');
            let start = out.len();
            write_text(pieces, ctx, out);
            escape_tail(out, start);
            out.push(b'"');
        }
        JsonNode::Single(cmd) => {
            if typed && cmd.op.is_numeric() {
                if !render(&cmd.op, ctx, out) {
                    out.extend_from_slice(b"null");
                    return false;
                }
            } else {
                out.push(b'"');
                let start = out.len();
                if !render_cmd(cmd, ctx, out) {
                    out.truncate(start - 1);
                    out.extend_from_slice(b"null");
                    return false;
                }
                escape_tail(out, start);
                out.push(b'"');
            }
        }
    }
    true
}

/// JSON-escape `out[start..]` in place. The common case (plain ASCII) only scans.
fn escape_tail(out: &mut Vec<u8>, start: usize) {
    let needs = out.get(start..).is_some_and(|t| {
        t.iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80)
    });
    if !needs {
        return;
    }
    let tail = out.split_off(start.min(out.len()));
    let text = String::from_utf8_lossy(&tail);
    for ch in text.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) -> bool {
    out.extend_from_slice(s.as_bytes());
    true
}

fn push_nonempty(out: &mut Vec<u8>, s: &str) -> bool {
    !s.is_empty() && push_str(out, s)
}

fn push_opt(out: &mut Vec<u8>, s: Option<&str>) -> bool {
    s.is_some_and(|s| push_nonempty(out, s))
}

/// Append the decimal digits of `n`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Append `n` zero-padded to `width` digits.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    push_u64(out, n);
    let len = out.len() - start;
    if len < width {
        let pad = width - len;
        out.splice(start..start, std::iter::repeat_n(b'0', pad));
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(_) => push_ip(out, addr.ip()),
        SocketAddr::V6(_) => {
            out.push(b'[');
            push_ip(out, addr.ip());
            out.push(b']');
        }
    }
    out.push(b':');
    push_u64(out, u64::from(addr.port()));
}

/// Write the value of `op` as text; false (nothing written) when it has no value.
fn render(op: &Op, ctx: &Ctx, out: &mut Vec<u8>) -> bool {
    let rec = ctx.rec;
    match op {
        Op::StartTime(pieces) => {
            write_time(pieces, ctx.civil(), out);
            true
        }
        Op::Req(sel) => render_sel(sel, out, |key, out| render_req(key, rec, out)),
        Op::Resp(sel) => render_sel(sel, out, |key, out| match key {
            HeaderKey::Status => {
                rec.response_code != 0 && {
                    push_u64(out, u64::from(rec.response_code));
                    true
                }
            }
            HeaderKey::ServiceTime(name) => {
                if let Some(v) = rec.response_headers.and_then(|h| h.get(name)) {
                    out.extend_from_slice(v.as_bytes());
                    true
                } else if let Some(t) = rec.upstream_service_time {
                    push_u64(out, u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
                    true
                } else {
                    false
                }
            }
            HeaderKey::Name(name) => render_header(rec.response_headers, name, out),
            _ => false,
        }),
        Op::Trailer(sel) => render_sel(sel, out, |key, out| match key {
            HeaderKey::Name(name) | HeaderKey::ServiceTime(name) => {
                render_header(rec.response_trailers, name, out)
            }
            _ => false,
        }),
        Op::Protocol => rec.protocol != "-" && push_nonempty(out, rec.protocol),
        Op::ResponseCode => {
            push_u64(out, u64::from(rec.response_code));
            true
        }
        Op::ResponseFlags => {
            rec.flags.write_short(out);
            true
        }
        Op::ResponseFlagsLong => {
            rec.flags.write_long(out);
            true
        }
        Op::ResponseCodeDetails => push_nonempty(out, rec.response_code_details),
        Op::ConnectionTerminationDetails => push_opt(out, rec.connection_termination_details),
        Op::UpstreamTransportFailureReason => push_opt(out, rec.upstream_transport_failure_reason),
        Op::BytesReceived => {
            push_u64(out, rec.bytes_received);
            true
        }
        Op::BytesSent => {
            push_u64(out, rec.bytes_sent);
            true
        }
        Op::Duration => {
            push_u64(
                out,
                u64::try_from(rec.duration.as_millis()).unwrap_or(u64::MAX),
            );
            true
        }
        Op::UpstreamHost => rec.upstream_host.is_some_and(|a| {
            push_addr(out, a);
            true
        }),
        Op::UpstreamHostWithoutPort => rec.upstream_host.is_some_and(|a| {
            push_ip(out, a.ip());
            true
        }),
        Op::UpstreamPort => rec.upstream_host.is_some_and(|a| {
            push_u64(out, u64::from(a.port()));
            true
        }),
        Op::UpstreamCluster => push_nonempty(out, rec.upstream_cluster),
        Op::UpstreamLocalAddress => rec.upstream_local_address.is_some_and(|a| {
            push_addr(out, a);
            true
        }),
        Op::UpstreamLocalAddressWithoutPort => rec.upstream_local_address.is_some_and(|a| {
            push_ip(out, a.ip());
            true
        }),
        Op::UpstreamLocalPort => rec.upstream_local_address.is_some_and(|a| {
            push_u64(out, u64::from(a.port()));
            true
        }),
        Op::DownstreamLocalAddress => {
            push_addr(out, rec.downstream_local_address);
            true
        }
        Op::DownstreamLocalAddressWithoutPort => {
            push_ip(out, rec.downstream_local_address.ip());
            true
        }
        Op::DownstreamLocalPort => {
            push_u64(out, u64::from(rec.downstream_local_address.port()));
            true
        }
        Op::DownstreamRemoteAddress => {
            push_addr(out, rec.downstream_remote_address);
            true
        }
        Op::DownstreamRemoteAddressWithoutPort => {
            push_ip(out, rec.downstream_remote_address.ip());
            true
        }
        Op::DownstreamRemotePort => {
            push_u64(out, u64::from(rec.downstream_remote_address.port()));
            true
        }
        Op::RequestedServerName => push_opt(out, rec.requested_server_name),
        Op::RouteName => push_nonempty(out, rec.route_name),
        Op::Hostname(h) => push_str(out, h),
    }
}

fn render_sel(
    sel: &HeaderSel,
    out: &mut Vec<u8>,
    one: impl Fn(&HeaderKey, &mut Vec<u8>) -> bool,
) -> bool {
    one(&sel.main, out) || sel.alt.as_ref().is_some_and(|alt| one(alt, out))
}

fn render_header(map: Option<&HeaderMap>, name: &HeaderName, out: &mut Vec<u8>) -> bool {
    match map.and_then(|h| h.get(name)) {
        Some(v) => {
            out.extend_from_slice(v.as_bytes());
            true
        }
        None => false,
    }
}

fn render_req(key: &HeaderKey, rec: &LogRecord, out: &mut Vec<u8>) -> bool {
    let Some(parts) = rec.request else {
        return false;
    };
    match key {
        HeaderKey::Method => push_str(out, parts.method.as_str()),
        HeaderKey::Path => push_opt(out, parts.uri.path_and_query().map(|pq| pq.as_str())),
        HeaderKey::Scheme => push_opt(out, parts.uri.scheme_str()),
        HeaderKey::Authority => {
            if !rec.authority.is_empty() {
                push_str(out, rec.authority)
            } else if let Some(a) = parts.uri.authority() {
                push_str(out, a.as_str())
            } else {
                render_header(Some(&parts.headers), &HOST, out)
            }
        }
        HeaderKey::Name(name) | HeaderKey::ServiceTime(name) => {
            render_header(Some(&parts.headers), name, out)
        }
        HeaderKey::Status => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// A UTC instant broken down into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    epoch_secs: u64,
    nanos: u32,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 1-based.
    yday: u32,
}

impl From<SystemTime> for Civil {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        let yday = days - days_from_civil(year, 1, 1) + 1;
        Civil {
            epoch_secs: secs,
            nanos: d.subsec_nanos(),
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            weekday: (days + 4).rem_euclid(7) as u32,
            yday: u32::try_from(yday).unwrap_or(1),
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn push_frac(out: &mut Vec<u8>, nanos: u32, digits: u8) {
    let digits = u32::from(digits.min(9));
    if digits == 0 {
        return;
    }
    let v = nanos / 10u32.pow(9 - digits);
    push_padded(out, u64::from(v), digits as usize);
}

fn write_time(pieces: &[TimePiece], t: &Civil, out: &mut Vec<u8>) {
    let month_name = MONTHS
        .get((t.month as usize).wrapping_sub(1))
        .copied()
        .unwrap_or("");
    let weekday_name = WEEKDAYS.get(t.weekday as usize).copied().unwrap_or("");
    for p in pieces {
        match p {
            TimePiece::Lit(b) => out.extend_from_slice(b),
            TimePiece::Year => {
                if t.year < 0 {
                    out.push(b'-');
                }
                push_padded(out, t.year.unsigned_abs(), 4);
            }
            TimePiece::Year2 => push_padded(out, t.year.rem_euclid(100) as u64, 2),
            TimePiece::Month => push_padded(out, u64::from(t.month), 2),
            TimePiece::Day => push_padded(out, u64::from(t.day), 2),
            TimePiece::DaySpace => {
                if t.day < 10 {
                    out.push(b' ');
                }
                push_u64(out, u64::from(t.day));
            }
            TimePiece::Hour => push_padded(out, u64::from(t.hour), 2),
            TimePiece::Hour12 => {
                let h = match t.hour % 12 {
                    0 => 12,
                    h => h,
                };
                push_padded(out, u64::from(h), 2);
            }
            TimePiece::AmPm => out.extend_from_slice(if t.hour < 12 { b"AM" } else { b"PM" }),
            TimePiece::Minute => push_padded(out, u64::from(t.minute), 2),
            TimePiece::Second => push_padded(out, u64::from(t.second), 2),
            TimePiece::SecondFrac(n) => {
                push_padded(out, u64::from(t.second), 2);
                if *n > 0 {
                    out.push(b'.');
                    push_frac(out, t.nanos, *n);
                }
            }
            TimePiece::SecondFracAll => {
                push_padded(out, u64::from(t.second), 2);
                if t.nanos > 0 {
                    out.push(b'.');
                    let start = out.len();
                    push_frac(out, t.nanos, 9);
                    while out.len() > start && out.last() == Some(&b'0') {
                        out.pop();
                    }
                }
            }
            TimePiece::Frac(n) => push_frac(out, t.nanos, *n),
            TimePiece::Epoch => push_u64(out, t.epoch_secs),
            TimePiece::DayOfYear => push_padded(out, u64::from(t.yday), 3),
            TimePiece::WeekdayAbbr => {
                out.extend_from_slice(weekday_name.get(..3).unwrap_or("").as_bytes())
            }
            TimePiece::WeekdayFull => out.extend_from_slice(weekday_name.as_bytes()),
            TimePiece::MonthAbbr => {
                out.extend_from_slice(month_name.get(..3).unwrap_or("").as_bytes())
            }
            TimePiece::MonthFull => out.extend_from_slice(month_name.as_bytes()),
            TimePiece::Offset => out.extend_from_slice(b"+0000"),
            TimePiece::OffsetColon => out.extend_from_slice(b"+00:00"),
            TimePiece::ZoneName => out.extend_from_slice(b"UTC"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sinks
// ---------------------------------------------------------------------------------------------

/// Where an access log goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SinkTarget {
    /// A file, opened for append and created if missing.
    File(PathBuf),
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
}

impl SinkTarget {
    /// `/dev/stdout` and `/dev/stderr` map to the shared stream sinks.
    pub fn from_path(path: impl AsRef<Path>) -> SinkTarget {
        let path = path.as_ref();
        if path == Path::new("/dev/stdout") {
            SinkTarget::Stdout
        } else if path == Path::new("/dev/stderr") {
            SinkTarget::Stderr
        } else {
            SinkTarget::File(path.to_path_buf())
        }
    }
}

enum Msg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

struct SinkShared {
    target: SinkTarget,
    tx: SyncSender<Msg>,
    pool: Pool,
    dropped: AtomicU64,
}

/// A shared, non-blocking line writer. Sinks for the same target share one writer thread.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<SinkShared>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

static SINKS: LazyLock<Mutex<HashMap<SinkTarget, Weak<SinkShared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl Sink {
    /// Open (or join) the writer for `target`.
    pub fn open(target: SinkTarget) -> io::Result<Sink> {
        let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = sinks.get(&target).and_then(Weak::upgrade) {
            return Ok(Sink { shared });
        }
        let writer: Box<dyn io::Write + Send> = match &target {
            SinkTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            SinkTarget::Stdout => Box::new(io::stdout()),
            SinkTarget::Stderr => Box::new(io::stderr()),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let pool: Pool = Arc::new(Mutex::new(Vec::new()));
        let label = match &target {
            SinkTarget::File(p) => p.display().to_string(),
            SinkTarget::Stdout => "stdout".to_owned(),
            SinkTarget::Stderr => "stderr".to_owned(),
        };
        let thread_pool = pool.clone();
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer_loop(rx, writer, thread_pool, label))?;
        let shared = Arc::new(SinkShared {
            target: target.clone(),
            tx,
            pool,
            dropped: AtomicU64::new(0),
        });
        sinks.retain(|_, w| w.strong_count() > 0);
        sinks.insert(target, Arc::downgrade(&shared));
        Ok(Sink { shared })
    }

    /// A file sink (`/dev/stdout` and `/dev/stderr` map to the stream sinks).
    pub fn file(path: impl AsRef<Path>) -> io::Result<Sink> {
        Sink::open(SinkTarget::from_path(path))
    }

    /// The standard output sink.
    pub fn stdout() -> io::Result<Sink> {
        Sink::open(SinkTarget::Stdout)
    }

    /// The standard error sink.
    pub fn stderr() -> io::Result<Sink> {
        Sink::open(SinkTarget::Stderr)
    }

    /// Where this sink writes.
    pub fn target(&self) -> &SinkTarget {
        &self.shared.target
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Whether two sinks share the same writer.
    pub fn same_writer(&self, other: &Sink) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    fn take_buf(&self) -> Vec<u8> {
        self.shared
            .pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(512))
    }

    /// Queue one formatted line; never blocks (drops and counts when the queue is full).
    pub fn send(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.shared.tx.try_send(Msg::Line(line))
        {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Block until every line queued before this call is written and flushed, or `timeout`
    /// passes. Returns whether the flush completed. Not for the request path.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.shared.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        ack_rx.recv_timeout(left).is_ok()
    }
}

/// Blocks until every line queued to any open sink is written and flushed, or `timeout` passes
/// for a sink: called before the process exits, whose writer threads would otherwise die with
/// lines still queued.
pub fn flush_all(timeout: Duration) {
    let open: Vec<Arc<SinkShared>> = SINKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    for shared in open {
        if !(Sink { shared }.flush(timeout)) {
            tracing::warn!("access log: lines still queued at exit were not all written");
        }
    }
}

fn writer_loop(rx: Receiver<Msg>, writer: Box<dyn io::Write + Send>, pool: Pool, label: String) {
    let mut w = io::BufWriter::with_capacity(64 * 1024, writer);
    let mut spent: Vec<Vec<u8>> = Vec::with_capacity(256);
    let mut acks = Vec::new();
    let mut failing = false;
    let report = |r: io::Result<()>, failing: &mut bool| match r {
        Ok(()) => *failing = false,
        Err(e) => {
            if !*failing {
                tracing::warn!(sink = %label, error = %e, "access log write failed; lines are being lost");
            }
            *failing = true;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(buf) => {
                    let r = w.write_all(&buf);
                    report(r, &mut failing);
                    spent.push(buf);
                    if spent.len() >= 256 {
                        recycle(&pool, &mut spent);
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        // Queue drained: flush so readers see lines promptly.
        let r = w.flush();
        report(r, &mut failing);
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        recycle(&pool, &mut spent);
    }
    let _ = w.flush();
}

fn recycle(pool: &Pool, spent: &mut Vec<Vec<u8>>) {
    let Ok(mut p) = pool.lock() else {
        spent.clear();
        return;
    };
    for mut buf in spent.drain(..) {
        if p.len() < POOL_MAX && buf.capacity() <= POOL_BUF_MAX {
            buf.clear();
            p.push(buf);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Logger
// ---------------------------------------------------------------------------------------------

/// One configured access logger: a format and a sink.
#[derive(Clone, Debug)]
pub struct AccessLogger {
    format: Format,
    sink: Sink,
}

impl AccessLogger {
    /// A logger writing `format` to `sink`.
    pub fn new(format: Format, sink: Sink) -> Self {
        Self { format, sink }
    }

    /// The format.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// The sink.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Format `rec` and queue it for the writer thread. Never blocks on I/O.
    pub fn log(&self, rec: &LogRecord) {
        let mut buf = self.sink.take_buf();
        self.format.write(rec, &mut buf);
        self.sink.send(buf);
    }
}

// ---------------------------------------------------------------------------------------------
// Translation from Envoy config
// ---------------------------------------------------------------------------------------------

/// Build a logger from an Envoy `AccessLog` (file, stdout or stderr logger).
pub fn from_proto(al: &AccessLog) -> Result<AccessLogger, FormatError> {
    if al.filter.is_some() {
        return Err(FormatError::Unsupported {
            field: "access_log.filter".to_owned(),
            reason: "access log filters are not supported; remove the filter (every request \
                     is logged)"
                .to_owned(),
        });
    }
    let Some(ConfigType::TypedConfig(any)) = &al.config_type else {
        return Err(FormatError::Invalid {
            field: "access_log.typed_config".to_owned(),
            reason: format!(
                "missing; set a {FILE_ACCESS_LOG}, {STDOUT_ACCESS_LOG} or {STDERR_ACCESS_LOG}"
            ),
        });
    };
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let field = "access_log.typed_config";
    let decode_err = |type_name: &'static str| {
        move |source| FormatError::Decode {
            field: field.to_owned(),
            type_name,
            source,
        }
    };
    match type_name {
        FILE_ACCESS_LOG => {
            let cfg =
                FileAccessLog::decode(any.value.as_slice()).map_err(decode_err(FILE_ACCESS_LOG))?;
            if cfg.path.is_empty() {
                return Err(FormatError::Invalid {
                    field: format!("{field}.path"),
                    reason: "a file access log needs a path".to_owned(),
                });
            }
            let format = file_format(cfg.access_log_format.as_ref(), field)?;
            let sink = Sink::file(&cfg.path).map_err(|source| FormatError::Io {
                field: format!("{field}.path"),
                path: cfg.path.clone(),
                source,
            })?;
            Ok(AccessLogger::new(format, sink))
        }
        STDOUT_ACCESS_LOG => {
            let cfg = StdoutAccessLog::decode(any.value.as_slice())
                .map_err(decode_err(STDOUT_ACCESS_LOG))?;
            let format = match &cfg.access_log_format {
                Some(stdout_access_log::AccessLogFormat::LogFormat(sfs)) => {
                    substitution_format(sfs, &format!("{field}.log_format"))?
                }
                None => Format::envoy_default(),
            };
            stream_logger(format, SinkTarget::Stdout, field)
        }
        STDERR_ACCESS_LOG => {
            let cfg = StderrAccessLog::decode(any.value.as_slice())
                .map_err(decode_err(STDERR_ACCESS_LOG))?;
            let format = match &cfg.access_log_format {
                Some(stderr_access_log::AccessLogFormat::LogFormat(sfs)) => {
                    substitution_format(sfs, &format!("{field}.log_format"))?
                }
                None => Format::envoy_default(),
            };
            stream_logger(format, SinkTarget::Stderr, field)
        }
        other => Err(FormatError::Unsupported {
            field: format!("{field}.type_url"),
            reason: format!(
                "access logger type {other:?} is not supported; use {FILE_ACCESS_LOG}, \
                 {STDOUT_ACCESS_LOG} or {STDERR_ACCESS_LOG}"
            ),
        }),
    }
}

fn stream_logger(
    format: Format,
    target: SinkTarget,
    field: &str,
) -> Result<AccessLogger, FormatError> {
    let name = if target == SinkTarget::Stdout {
        "stdout"
    } else {
        "stderr"
    };
    let sink = Sink::open(target).map_err(|source| FormatError::Io {
        field: field.to_owned(),
        path: name.to_owned(),
        source,
    })?;
    Ok(AccessLogger::new(format, sink))
}

#[allow(deprecated)]
fn file_format(f: Option<&FileFormat>, field: &str) -> Result<Format, FormatError> {
    match f {
        None => Ok(Format::envoy_default()),
        Some(FileFormat::Format(s)) if s.is_empty() => Ok(Format::envoy_default()),
        Some(FileFormat::Format(s)) => Format::text(s),
        Some(FileFormat::JsonFormat(st)) => {
            Ok(Format::json(&struct_to_json(st, &format!("{field}.json_format"))?)?.untyped())
        }
        Some(FileFormat::TypedJsonFormat(st)) => {
            Format::json(&struct_to_json(st, &format!("{field}.typed_json_format"))?)
        }
        Some(FileFormat::LogFormat(sfs)) => {
            substitution_format(sfs, &format!("{field}.log_format"))
        }
    }
}

/// Translate an Envoy `SubstitutionFormatString` (`field` names it in errors).
#[allow(deprecated)]
pub fn substitution_format(
    sfs: &SubstitutionFormatString,
    field: &str,
) -> Result<Format, FormatError> {
    if !sfs.formatters.is_empty() {
        return Err(FormatError::Unsupported {
            field: format!("{field}.formatters"),
            reason: "formatter extensions are not supported".to_owned(),
        });
    }
    let format = match &sfs.format {
        None => Format::envoy_default(),
        Some(SfsFormat::TextFormat(s)) => Format::text(s)?,
        Some(SfsFormat::TextFormatSource(ds)) => {
            Format::text(&data_source(ds, &format!("{field}.text_format_source"))?)?
        }
        Some(SfsFormat::JsonFormat(st)) => {
            Format::json(&struct_to_json(st, &format!("{field}.json_format"))?)?
        }
    };
    Ok(format.with_omit_empty_values(sfs.omit_empty_values))
}

fn data_source(ds: &DataSource, field: &str) -> Result<String, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        field: field.to_owned(),
        reason,
    };
    match &ds.specifier {
        Some(Specifier::InlineString(s)) => Ok(s.clone()),
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| invalid("inline_bytes is not UTF-8".to_owned())),
        Some(Specifier::Filename(path)) => {
            std::fs::read_to_string(path).map_err(|source| FormatError::Io {
                field: format!("{field}.filename"),
                path: path.clone(),
                source,
            })
        }
        Some(Specifier::EnvironmentVariable(var)) => {
            std::env::var(var).map_err(|e| invalid(format!("environment_variable {var}: {e}")))
        }
        None => Err(invalid("empty data source".to_owned())),
    }
}

fn struct_to_json(st: &PbStruct, field: &str) -> Result<JsonMap<String, JsonValue>, FormatError> {
    let mut keys: Vec<&String> = st.fields.keys().collect();
    keys.sort();
    let mut map = JsonMap::new();
    for k in keys {
        if let Some(v) = st.fields.get(k) {
            map.insert(k.clone(), pb_value_to_json(v, &format!("{field}.{k}"))?);
        }
    }
    Ok(map)
}

fn pb_value_to_json(v: &PbValue, field: &str) -> Result<JsonValue, FormatError> {
    Ok(match &v.kind {
        None | Some(PbKind::NullValue(_)) => JsonValue::Null,
        Some(PbKind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(JsonValue::Number)
            .ok_or_else(|| FormatError::Invalid {
                field: field.to_owned(),
                reason: "number is not finite".to_owned(),
            })?,
        Some(PbKind::StringValue(s)) => JsonValue::String(s.clone()),
        Some(PbKind::BoolValue(b)) => JsonValue::Bool(*b),
        Some(PbKind::StructValue(s)) => JsonValue::Object(struct_to_json(s, field)?),
        Some(PbKind::ListValue(l)) => JsonValue::Array(
            l.values
                .iter()
                .map(|v| pb_value_to_json(v, field))
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use http::{HeaderValue, Request};

    const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

    /// 2024-01-01T00:00:00.123Z
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_704_067_200_123)
    }

    fn parts() -> http::request::Parts {
        let (parts, ()) = Request::builder()
            .method("GET")
            .uri("/api/v1?x=1")
            .header("user-agent", "curl/8.0")
            .header("x-request-id", "abc-123")
            .header("host", "example.com")
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    fn record<'a>(parts: &'a http::request::Parts, resp: &'a HeaderMap) -> LogRecord<'a> {
        LogRecord {
            duration: Duration::from_micros(5_900),
            request: Some(parts),
            response_code: 200,
            response_headers: Some(resp),
            protocol: "HTTP/1.1",
            response_code_details: "via_upstream",
            bytes_received: 0,
            bytes_sent: 12,
            upstream_host: Some("10.0.0.2:8080".parse().unwrap()),
            upstream_cluster: "outbound|80||web.default.svc.cluster.local",
            upstream_local_address: Some("10.0.0.1:40000".parse().unwrap()),
            route_name: "default",
            authority: "example.com",
            ..LogRecord::new(
                t0(),
                "10.0.0.1:15001".parse().unwrap(),
                "10.0.0.9:51234".parse().unwrap(),
            )
        }
    }

    fn resp_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-envoy-upstream-service-time",
            HeaderValue::from_static("3"),
        );
        h
    }

    fn render_str(f: &Format, rec: &LogRecord) -> String {
        let mut out = Vec::new();
        f.write(rec, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn envoy_default_format_byte_for_byte() {
        let p = parts();
        let h = resp_headers();
        let rec = record(&p, &h);
        assert_eq!(
            render_str(&Format::envoy_default(), &rec),
            "[2024-01-01T00:00:00.123Z] \"GET /api/v1?x=1 HTTP/1.1\" 200 - 0 12 5 3 \"-\" \
             \"curl/8.0\" \"abc-123\" \"example.com\" \"10.0.0.2:8080\"\n"
        );
    }

    #[test]
    fn original_path_wins_and_flags_render() {
        let mut p = parts();
        p.headers
            .insert("x-envoy-original-path", HeaderValue::from_static("/orig"));
        let h = HeaderMap::new();
        let mut rec = record(&p, &h);
        rec.flags = ResponseFlags::UF | ResponseFlags::URX;
        rec.response_code = 503;
        rec.upstream_service_time = Some(Duration::from_millis(42));
        let f = Format::text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESP(:STATUS)%").unwrap();
        assert_eq!(
            render_str(&f, &rec),
            "/orig 503 UF,URX UpstreamConnectionFailure,UpstreamRetryLimitExceeded 42 503"
        );
    }

    #[test]
    fn istio_default_text_format() {
        let p = parts();
        let h = resp_headers();
        let mut rec = record(&p, &h);
        rec.requested_server_name = Some("outbound_.80_._.web.default.svc.cluster.local");
        let f = Format::text(ISTIO_TEXT).unwrap();
        assert_eq!(
            render_str(&f, &rec),
            "[2024-01-01T00:00:00.123Z] \"GET /api/v1?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" \
             0 12 5 3 \"-\" \"curl/8.0\" \"abc-123\" \"example.com\" \"10.0.0.2:8080\" \
             outbound|80||web.default.svc.cluster.local 10.0.0.1:40000 10.0.0.1:15001 \
             10.0.0.9:51234 outbound_.80_._.web.default.svc.cluster.local default\n"
        );
    }

    #[test]
    fn tcp_record_prints_dashes() {
        let mut rec = LogRecord::new(
            t0(),
            "127.0.0.1:9000".parse().unwrap(),
            "[::1]:5555".parse().unwrap(),
        );
        rec.protocol = "-";
        rec.bytes_received = 10;
        rec.flags = ResponseFlags::UF;
        let f = Format::text(ISTIO_TEXT).unwrap();
        assert_eq!(
            render_str(&f, &rec),
            "[2024-01-01T00:00:00.123Z] \"- - -\" 0 UF - - \"-\" 10 0 0 - \"-\" \"-\" \"-\" \
             \"-\" \"-\" - - 127.0.0.1:9000 [::1]:5555 - -\n"
        );
        let f = Format::text(
            "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT%",
        )
        .unwrap();
        assert_eq!(render_str(&f, &rec), "::1 127.0.0.1 5555");
    }

    #[test]
    fn json_format_typed_and_nulls() {
        let p = parts();
        let h = resp_headers();
        let mut rec = record(&p, &h);
        rec.connection_termination_details = Some("quote\" and \\ and\nnewline");
        let map: JsonMap<String, JsonValue> = serde_json::from_str(
            r#"{
                "start_time": "%START_TIME%",
                "method": "%REQ(:METHOD)%",
                "response_code": "%RESPONSE_CODE%",
                "duration": "%DURATION%",
                "bytes_sent": "%BYTES_SENT%",
                "xff": "%REQ(X-FORWARDED-FOR)%",
                "flags": "%RESPONSE_FLAGS%",
                "details": "%CONNECTION_TERMINATION_DETAILS%",
                "mixed": "%REQ(:METHOD)% %REQ(X-FORWARDED-FOR)%!",
                "const": "hello",
                "n": 7,
                "nested": {"host": "%UPSTREAM_HOST%", "sni": "%REQUESTED_SERVER_NAME%"},
                "ua": "%REQ(USER-AGENT):4%"
            }"#,
        )
        .unwrap();
        let f = Format::json(&map).unwrap();
        assert!(f.is_json());
        let line = render_str(&f, &rec);
        assert!(line.ends_with("}\n"));
        assert_eq!(line.matches('\n').count(), 1);
        let v: JsonValue = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start_time"], "2024-01-01T00:00:00.123Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["duration"], 5);
        assert_eq!(v["bytes_sent"], 12);
        assert_eq!(v["xff"], JsonValue::Null);
        assert_eq!(v["flags"], "-");
        assert_eq!(v["details"], "quote\" and \\ and\nnewline");
        assert_eq!(v["mixed"], "GET -!");
        assert_eq!(v["const"], "hello");
        assert_eq!(v["n"], 7);
        assert_eq!(v["nested"]["host"], "10.0.0.2:8080");
        assert_eq!(v["nested"]["sni"], JsonValue::Null);
        assert_eq!(v["ua"], "curl");

        // omit_empty_values drops missing keys, and the result stays valid JSON.
        let f = f.with_omit_empty_values(true);
        let v: JsonValue = serde_json::from_str(&render_str(&f, &rec)).unwrap();
        assert!(v.get("xff").is_none());
        assert!(v["nested"].get("sni").is_none());
        assert_eq!(v["method"], "GET");

        // The deprecated untyped form renders numbers as strings.
        let f = Format::json(&map).unwrap().untyped();
        let v: JsonValue = serde_json::from_str(&render_str(&f, &rec)).unwrap();
        assert_eq!(v["response_code"], "200");
    }

    #[test]
    fn json_escapes_non_utf8_header_bytes() {
        let mut p = parts();
        p.headers.insert(
            "user-agent",
            HeaderValue::from_bytes(b"bad\xffbyte\t").unwrap(),
        );
        let h = HeaderMap::new();
        let rec = record(&p, &h);
        let map: JsonMap<String, JsonValue> =
            serde_json::from_str(r#"{"ua": "%REQ(USER-AGENT)%"}"#).unwrap();
        let line = render_str(&Format::json(&map).unwrap(), &rec);
        let v: JsonValue = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ua"], "bad\u{fffd}byte\t");
    }

    #[test]
    fn start_time_custom_formats() {
        let p = parts();
        let h = HeaderMap::new();
        let rec = record(&p, &h);
        let cases = [
            (
                "%START_TIME(%Y-%m-%dT%H:%M:%S%z)%",
                "2024-01-01T00:00:00+0000",
            ),
            ("%START_TIME(%s)%", "1704067200"),
            (
                "%START_TIME(%E3S|%3f|%f|%E*S)%",
                "00.123|123|123000000|00.123",
            ),
            (
                "%START_TIME(%a %b %e %T %Y %j %Z %%)%",
                "Mon Jan  1 00:00:00 2024 001 UTC %",
            ),
            ("%START_TIME(%F %D %I%p)%", "2024-01-01 01/01/24 12AM"),
        ];
        for (fmt, want) in cases {
            assert_eq!(render_str(&Format::text(fmt).unwrap(), &rec), want, "{fmt}");
        }
        // A leap day late in the year, and a time of day.
        let t = Civil::from(UNIX_EPOCH + Duration::from_secs(1_709_251_199)); // 2024-02-29T23:59:59Z
        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
        assert_eq!((t.hour, t.minute, t.second), (23, 59, 59));
        assert_eq!(t.yday, 60);
        assert_eq!(t.weekday, 4); // Thursday
        assert_eq!(Civil::from(UNIX_EPOCH).weekday, 4);
        assert_eq!(
            civil_from_days(days_from_civil(1999, 12, 31)),
            (1999, 12, 31)
        );
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let e = Format::text("%NOPE%").unwrap_err();
        assert!(matches!(&e, FormatError::UnknownOperator { operator, .. } if operator == "NOPE"));
        assert!(e.to_string().contains("%NOPE%"));
        assert!(matches!(
            Format::text("100% done"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            Format::text("%REQ(:METHOD"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            Format::text("%REQ%"),
            Err(FormatError::InvalidArgument { .. })
        ));
        assert!(matches!(
            Format::text("%REQ(:FOO)%"),
            Err(FormatError::InvalidArgument { .. })
        ));
        assert!(matches!(
            Format::text("%START_TIME(%Q)%"),
            Err(FormatError::InvalidArgument { .. })
        ));
        assert!(matches!(
            Format::text("%DURATION(x)%"),
            Err(FormatError::InvalidArgument { .. })
        ));
        let map: JsonMap<String, JsonValue> = serde_json::from_str(r#"{"a": ["x"]}"#).unwrap();
        assert!(matches!(
            Format::json(&map),
            Err(FormatError::Unsupported { field, .. }) if field == "json_format.a"
        ));
        assert_eq!(
            render_str(
                &Format::text("100%% %DURATION:1%").unwrap(),
                &record(&parts(), &HeaderMap::new())
            ),
            "100% 5"
        );
    }

    fn tmp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-access-log-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir.join("access.log")
    }

    fn wait_for_lines(path: &Path, n: usize) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= n || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn file_sink_receives_lines_and_is_shared() {
        let path = tmp_path("file");
        let _ = std::fs::remove_file(&path);
        let p = parts();
        let h = resp_headers();
        let rec = record(&p, &h);
        let a = AccessLogger::new(Format::envoy_default(), Sink::file(&path).unwrap());
        let b = AccessLogger::new(
            Format::text("%RESPONSE_CODE% %ROUTE_NAME%\n").unwrap(),
            Sink::file(&path).unwrap(),
        );
        assert!(a.sink().same_writer(b.sink()));
        a.log(&rec);
        b.log(&rec);
        // Lines show up without an explicit flush (the writer flushes when drained).
        let text = wait_for_lines(&path, 2);
        assert!(text.contains("\"GET /api/v1?x=1 HTTP/1.1\" 200"), "{text}");
        assert!(text.contains("200 default\n"), "{text}");
        for _ in 0..100 {
            a.log(&rec);
        }
        assert!(a.sink().flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 102);
        assert_eq!(a.sink().dropped(), 0);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    fn any_of<M: prost::Message + prost::Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    #[allow(deprecated)]
    fn from_proto_file_logger_with_formats() {
        let path = tmp_path("proto");
        let _ = std::fs::remove_file(&path);
        let p = parts();
        let h = resp_headers();
        let rec = record(&p, &h);

        // log_format.text_format_source.inline_string
        let cfg = FileAccessLog {
            path: path.display().to_string(),
            access_log_format: Some(FileFormat::LogFormat(SubstitutionFormatString {
                format: Some(SfsFormat::TextFormatSource(DataSource {
                    specifier: Some(Specifier::InlineString(
                        "%RESPONSE_CODE% %REQ(:METHOD)%\n".into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        };
        let al = AccessLog {
            name: "envoy.access_loggers.file".into(),
            filter: None,
            config_type: Some(ConfigType::TypedConfig(any_of(&cfg))),
        };
        let logger = from_proto(&al).unwrap();
        logger.log(&rec);
        assert!(logger.sink().flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "200 GET\n");

        // json_format (typed)
        let mut st = PbStruct::default();
        st.fields.insert(
            "code".into(),
            PbValue {
                kind: Some(PbKind::StringValue("%RESPONSE_CODE%".into())),
            },
        );
        let cfg = FileAccessLog {
            path: path.display().to_string(),
            access_log_format: Some(FileFormat::LogFormat(SubstitutionFormatString {
                format: Some(SfsFormat::JsonFormat(st.clone())),
                ..Default::default()
            })),
        };
        let logger = from_proto(&AccessLog {
            config_type: Some(ConfigType::TypedConfig(any_of(&cfg))),
            ..Default::default()
        })
        .unwrap();
        let mut out = Vec::new();
        logger.format().write(&rec, &mut out);
        assert_eq!(out, b"{\"code\":200}\n");

        // Deprecated fields: `format` (empty → default) and untyped `json_format`.
        for (f, want) in [
            (
                FileFormat::Format(String::new()),
                "[2024-01-01T00:00:00.123Z]",
            ),
            (FileFormat::Format("%ROUTE_NAME%".into()), "default"),
            (FileFormat::JsonFormat(st), "{\"code\":\"200\"}\n"),
        ] {
            let cfg = FileAccessLog {
                path: path.display().to_string(),
                access_log_format: Some(f),
            };
            let logger = from_proto(&AccessLog {
                config_type: Some(ConfigType::TypedConfig(any_of(&cfg))),
                ..Default::default()
            })
            .unwrap();
            let mut out = Vec::new();
            logger.format().write(&rec, &mut out);
            assert!(String::from_utf8(out).unwrap().starts_with(want), "{want}");
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn from_proto_stream_loggers_and_errors() {
        let stdout = from_proto(&AccessLog {
            config_type: Some(ConfigType::TypedConfig(any_of(&StdoutAccessLog::default()))),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(stdout.sink().target(), &SinkTarget::Stdout);
        assert!(!stdout.format().is_json());
        let stderr = from_proto(&AccessLog {
            config_type: Some(ConfigType::TypedConfig(any_of(&StderrAccessLog {
                access_log_format: Some(stderr_access_log::AccessLogFormat::LogFormat(
                    SubstitutionFormatString {
                        format: Some(SfsFormat::JsonFormat(PbStruct::default())),
                        ..Default::default()
                    },
                )),
            }))),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(stderr.sink().target(), &SinkTarget::Stderr);
        assert!(stderr.format().is_json());
        assert!(
            Sink::file("/dev/stdout")
                .unwrap()
                .same_writer(stdout.sink())
        );

        // A filter is refused, naming the field.
        let e = from_proto(&AccessLog {
            filter: Some(Default::default()),
            config_type: Some(ConfigType::TypedConfig(any_of(&StdoutAccessLog::default()))),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("access_log.filter:"), "{e}");
        // Unknown logger type.
        let e = from_proto(&AccessLog {
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig".into(),
                value: vec![],
            })),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, FormatError::Unsupported { .. }), "{e}");
        // Garbage bytes.
        let e = from_proto(&AccessLog {
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: format!("type.googleapis.com/{FILE_ACCESS_LOG}"),
                value: vec![0xff, 0xff, 0xff],
            })),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, FormatError::Decode { .. }), "{e}");
        // Missing path; missing typed_config; bad operator in config.
        let e = from_proto(&AccessLog {
            config_type: Some(ConfigType::TypedConfig(any_of(&FileAccessLog::default()))),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("typed_config.path"), "{e}");
        assert!(from_proto(&AccessLog::default()).is_err());
        #[allow(deprecated)]
        let e = from_proto(&AccessLog {
            config_type: Some(ConfigType::TypedConfig(any_of(&FileAccessLog {
                path: "/dev/stdout".into(),
                access_log_format: Some(FileFormat::Format("%BOGUS%".into())),
            }))),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, FormatError::UnknownOperator { .. }), "{e}");
    }
}
