//! Local reply mapping: the connection manager's `local_reply_config`. Replies the proxy makes
//! itself (no route, no cluster, upstream failures, fault aborts, direct responses) can get a
//! different status code and body, chosen by the first mapper whose filter matches
//! (`status_code_filter` or `response_flag_filter`), and a body format (`text_format` with
//! `%LOCAL_REPLY_BODY%`, `%RESPONSE_CODE%`, `%RESPONSE_FLAGS%`, `%RESPONSE_CODE_DETAILS%`).
//! Istio's REGISTRY_ONLY mode uses it to turn "no route" into 502 with a clear body.
//!
//! Compiled once per connection manager; a request without local reply config pays nothing.
//! Upstream responses are never rewritten here.

use crate::config::{ConfigError, Ctx};
use crate::flags::ResponseFlags;
use envoy_types::pb::envoy::config::accesslog::v3 as alpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hpb;
use http::{HeaderValue, StatusCode};

/// A compiled `LocalReplyConfig`.
#[derive(Debug)]
pub struct LocalReply {
    mappers: Vec<Mapper>,
    body_format: Option<BodyFormat>,
}

#[derive(Debug)]
struct Mapper {
    filter: Filter,
    status: Option<StatusCode>,
    body: Option<String>,
    body_format: Option<BodyFormat>,
}

#[derive(Debug)]
enum Filter {
    Status(alpb::comparison_filter::Op, u32),
    /// Empty: any flag.
    Flags(ResponseFlags),
}

#[derive(Debug)]
struct BodyFormat {
    pieces: Vec<Piece>,
    content_type: HeaderValue,
    /// `omit_empty_values`: an operator without a value renders as nothing instead of `-`.
    omit_empty: bool,
}

#[derive(Debug, PartialEq)]
enum Piece {
    Lit(String),
    Body,
    Code,
    Flags,
    Details,
}

/// A local reply as first produced, and what the mapping made of it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    /// Set when a body format applied.
    pub content_type: Option<HeaderValue>,
}

impl Filter {
    fn matches(&self, status: StatusCode, flags: ResponseFlags) -> bool {
        use alpb::comparison_filter::Op;
        match self {
            Filter::Status(op, v) => {
                let s = u32::from(status.as_u16());
                match op {
                    Op::Eq => s == *v,
                    Op::Ge => s >= *v,
                    Op::Le => s <= *v,
                    Op::Ne => s != *v,
                }
            }
            Filter::Flags(want) if want.is_empty() => !flags.is_empty(),
            Filter::Flags(want) => flags.bits() & want.bits() != 0,
        }
    }
}

impl BodyFormat {
    fn render(&self, r: &Reply, flags: ResponseFlags, details: &str) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Body => out.push_str(&r.body),
                Piece::Code => out.push_str(r.status.as_str()),
                Piece::Flags => {
                    let mut b = Vec::new();
                    flags.write_short(&mut b);
                    out.push_str(&String::from_utf8_lossy(&b));
                }
                // The only operator that can lack a value (the body may be empty, which is a
                // value; no flags render as `-` either way, as in Envoy).
                Piece::Details if details.is_empty() => {
                    if !self.omit_empty {
                        out.push('-');
                    }
                }
                Piece::Details => out.push_str(details),
            }
        }
        out
    }
}

impl LocalReply {
    /// Rewrites one local reply: the first matching mapper's status and body, then the body
    /// format (the mapper's override, else the config's). Filters see the original status.
    pub fn rewrite(&self, r: &mut Reply, flags: ResponseFlags, details: &str) {
        let mut format = self.body_format.as_ref();
        if let Some(m) = self
            .mappers
            .iter()
            .find(|m| m.filter.matches(r.status, flags))
        {
            if let Some(b) = &m.body {
                r.body.clone_from(b);
            }
            if let Some(s) = m.status {
                r.status = s;
            }
            if let Some(f) = &m.body_format {
                format = Some(f);
            }
        }
        if let Some(f) = format {
            r.body = f.render(r, flags, details);
            r.content_type = Some(f.content_type.clone());
        }
    }
}

#[allow(deprecated)]
fn body_format(
    ctx: &Ctx,
    f: &str,
    sfs: &core::SubstitutionFormatString,
) -> Result<BodyFormat, ConfigError> {
    use core::substitution_format_string::Format as F;
    if !sfs.formatters.is_empty() {
        return Err(ctx.err(format!("{f}.formatters"), "not supported"));
    }
    let text = match &sfs.format {
        Some(F::TextFormat(s)) => s.clone(),
        Some(F::TextFormatSource(ds)) => match &ds.specifier {
            Some(core::data_source::Specifier::InlineString(s)) => s.clone(),
            Some(core::data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
                .map_err(|_| ctx.err(format!("{f}.text_format_source"), "not UTF-8"))?,
            _ => {
                return Err(ctx.err(
                    format!("{f}.text_format_source"),
                    "only inline_string and inline_bytes are supported",
                ));
            }
        },
        Some(F::JsonFormat(_)) => {
            return Err(ctx.err(
                format!("{f}.json_format"),
                "JSON local reply bodies are not supported; use text_format",
            ));
        }
        None => return Err(ctx.err(f, "text_format is required")),
    };
    let content_type = if sfs.content_type.is_empty() {
        HeaderValue::from_static("text/plain")
    } else {
        HeaderValue::from_str(&sfs.content_type)
            .map_err(|_| ctx.err(format!("{f}.content_type"), "not a valid header value"))?
    };
    Ok(BodyFormat {
        pieces: parse_pieces(&text).map_err(|op| {
            ctx.err(
                format!("{f}.text_format"),
                format!(
                    "`{op}` is not supported in local reply bodies (LOCAL_REPLY_BODY, RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS are)"
                ),
            )
        })?,
        content_type,
        omit_empty: sfs.omit_empty_values,
    })
}

/// Splits `text %OP% text`; an unknown operator is returned as the error.
fn parse_pieces(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('%') else { break };
        let op = &after[..end];
        let piece = match op {
            "LOCAL_REPLY_BODY" => Piece::Body,
            "RESPONSE_CODE" => Piece::Code,
            "RESPONSE_FLAGS" => Piece::Flags,
            "RESPONSE_CODE_DETAILS" => Piece::Details,
            "" => {
                // `%%` is a literal percent sign.
                out.push(Piece::Lit(format!("{}%", &rest[..start])));
                rest = &after[1..];
                continue;
            }
            other => return Err(format!("%{other}%")),
        };
        if start > 0 {
            out.push(Piece::Lit(rest[..start].to_string()));
        }
        out.push(piece);
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Lit(rest.to_string()));
    }
    Ok(out)
}

fn filter(ctx: &Ctx, f: &str, m: Option<&alpb::AccessLogFilter>) -> Result<Filter, ConfigError> {
    use alpb::access_log_filter::FilterSpecifier as S;
    match m.and_then(|m| m.filter_specifier.as_ref()) {
        Some(S::StatusCodeFilter(s)) => {
            let cf = format!("{f}.status_code_filter.comparison");
            let Some(c) = &s.comparison else {
                return Err(ctx.err(cf, "is required"));
            };
            let op = alpb::comparison_filter::Op::try_from(c.op)
                .map_err(|_| ctx.err(format!("{cf}.op"), format!("unknown op {}", c.op)))?;
            Ok(Filter::Status(
                op,
                c.value.as_ref().map_or(0, |v| v.default_value),
            ))
        }
        Some(S::ResponseFlagFilter(r)) => {
            let mut flags = ResponseFlags::NONE;
            for (i, code) in r.flags.iter().enumerate() {
                flags.insert(ResponseFlags::from_short(code).ok_or_else(|| {
                    ctx.err(
                        format!("{f}.response_flag_filter.flags[{i}]"),
                        format!("`{code}` is not a response flag"),
                    )
                })?);
            }
            Ok(Filter::Flags(flags))
        }
        Some(_) => Err(ctx.err(
            f,
            "only status_code_filter and response_flag_filter are supported",
        )),
        None => Err(ctx.err(f, "a filter is required")),
    }
}

/// Compiles `local_reply_config` (`f` is its field path).
pub fn compile(ctx: &Ctx, f: &str, c: &hpb::LocalReplyConfig) -> Result<LocalReply, ConfigError> {
    let mut mappers = Vec::with_capacity(c.mappers.len());
    for (i, m) in c.mappers.iter().enumerate() {
        let mf = format!("{f}.mappers[{i}]");
        if !m.headers_to_add.is_empty() {
            return Err(ctx.err(format!("{mf}.headers_to_add"), "not supported"));
        }
        let status = m
            .status_code
            .as_ref()
            .map(|s| {
                u16::try_from(s.value)
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| {
                        ctx.err(
                            format!("{mf}.status_code"),
                            format!("{} is not an HTTP status between 200 and 599", s.value),
                        )
                    })
            })
            .transpose()?;
        let body = match m.body.as_ref().and_then(|b| b.specifier.as_ref()) {
            None => None,
            Some(core::data_source::Specifier::InlineString(s)) => Some(s.clone()),
            Some(core::data_source::Specifier::InlineBytes(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            Some(core::data_source::Specifier::Filename(p)) => {
                Some(std::fs::read_to_string(p).map_err(|e| {
                    ctx.err(
                        format!("{mf}.body.filename"),
                        format!("cannot read {p}: {e}"),
                    )
                })?)
            }
            Some(core::data_source::Specifier::EnvironmentVariable(v)) => {
                Some(std::env::var(v).map_err(|_| {
                    ctx.err(
                        format!("{mf}.body.environment_variable"),
                        format!("${v} is not set"),
                    )
                })?)
            }
        };
        mappers.push(Mapper {
            filter: filter(ctx, &format!("{mf}.filter"), m.filter.as_ref())?,
            status,
            body,
            body_format: m
                .body_format_override
                .as_ref()
                .map(|b| body_format(ctx, &format!("{mf}.body_format_override"), b))
                .transpose()?,
        });
    }
    Ok(LocalReply {
        mappers,
        body_format: c
            .body_format
            .as_ref()
            .map(|b| body_format(ctx, &format!("{f}.body_format"), b))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(yaml: &str) -> Result<LocalReply, ConfigError> {
        let c: hpb::LocalReplyConfig = weft_xds::from_yaml(yaml, "test").unwrap();
        compile(&Ctx::new("listener", "l"), "local_reply_config", &c)
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            body: body.into(),
            content_type: None,
        }
    }

    const NR_502: &str = r#"
mappers:
- filter: {response_flag_filter: {flags: ["NR"]}}
  status_code: 502
  body: {inline_string: "no route: host not in the registry"}
- filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 500, runtime_key: k}}}}
  body_format_override: {text_format: "%RESPONSE_CODE% %RESPONSE_FLAGS%: %LOCAL_REPLY_BODY%\n"}
"#;

    #[test]
    fn first_matching_mapper_wins() {
        let l = lr(NR_502).unwrap();
        let mut r = reply(404, "no virtual host");
        l.rewrite(&mut r, ResponseFlags::NR, "route_not_found");
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.body, "no route: host not in the registry");
        assert!(r.content_type.is_none());

        let mut r = reply(503, "upstream connect error");
        l.rewrite(&mut r, ResponseFlags::UF, "x");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.body, "503 UF: upstream connect error\n");
        assert_eq!(r.content_type.unwrap(), "text/plain");

        let mut r = reply(404, "not found");
        l.rewrite(&mut r, ResponseFlags::NONE, "x");
        assert_eq!((r.status.as_u16(), r.body.as_str()), (404, "not found"));
    }

    #[test]
    fn empty_flag_filter_matches_any_flag_and_global_format() {
        let l = lr(
            r#"
mappers: [{filter: {response_flag_filter: {}}, status_code: 500}]
body_format: {text_format: "[%RESPONSE_CODE_DETAILS%] %LOCAL_REPLY_BODY% 100%%", content_type: "text/x-weft"}
"#,
        )
        .unwrap();
        let mut r = reply(503, "b");
        l.rewrite(&mut r, ResponseFlags::UH, "no_healthy_upstream");
        assert_eq!(r.status.as_u16(), 500);
        assert_eq!(r.body, "[no_healthy_upstream] b 100%");
        assert_eq!(r.content_type.unwrap(), "text/x-weft");
        let mut r = reply(200, "direct");
        l.rewrite(&mut r, ResponseFlags::NONE, "direct_response");
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "[direct_response] direct 100%")
        );
    }

    #[test]
    fn omit_empty_values_drops_the_dash() {
        let fmt = |omit: bool| {
            lr(&format!(
                "body_format: {{text_format: '[%RESPONSE_CODE_DETAILS%] %RESPONSE_FLAGS% %LOCAL_REPLY_BODY%', omit_empty_values: {omit}}}"
            ))
            .unwrap()
        };
        let mut r = reply(404, "");
        fmt(false).rewrite(&mut r, ResponseFlags::NONE, "");
        assert_eq!(r.body, "[-] - ");
        let mut r = reply(404, "");
        fmt(true).rewrite(&mut r, ResponseFlags::NONE, "");
        assert_eq!(r.body, "[] - ");
        let mut r = reply(503, "b");
        fmt(true).rewrite(&mut r, ResponseFlags::UH, "no_healthy_upstream");
        assert_eq!(r.body, "[no_healthy_upstream] UH b");
    }

    #[test]
    fn errors_name_the_field() {
        let e = lr("mappers: [{filter: {response_flag_filter: {flags: [XX]}}}]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mappers[0].filter.response_flag_filter.flags[0]"),
            "{e}"
        );
        let e = lr("mappers: [{filter: {duration_filter: {}}}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mappers[0].filter"), "{e}");
        let e = lr("body_format: {text_format: '%START_TIME%'}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("body_format.text_format") && e.contains("START_TIME"),
            "{e}"
        );
        let e = lr("mappers: [{filter: {response_flag_filter: {}}, status_code: 42}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mappers[0].status_code"), "{e}");
    }
}
