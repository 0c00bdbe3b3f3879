//! Text → validated resources: multi-document YAML (`---`), a single JSON object, or a
//! Kubernetes `List` with `items`; every error located at `file:line:column` with the resource
//! and field path.
//!
//! Why: this is the gate in front of the control plane — bad config is refused here, with a
//! message that says exactly where and why, instead of being NACKed by a proxy later. It must
//! not do I/O (the caller reads the file) and must not stop at the first bad document.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use crate::de::{DeError, Path, did_you_mean, from_node, push_key};
use crate::error::ApiError;
use crate::types::{Kind, Object, ObjectMeta, Resource};
use crate::validate::validate;
use crate::yaml::{self, Node, NodeKind};

/// A parsed, validated resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub resource: Resource,
    /// The source name given to the parser.
    pub source: String,
    /// 1-based line where the resource starts (0 when unknown, e.g. JSON fallback).
    pub line: usize,
    /// Positions of the resource's fields, for reporting findings at the right line.
    pub spans: Spans,
}

impl Parsed {
    /// A resource that did not come from text (no positions).
    pub fn new(resource: Resource, source: impl Into<String>) -> Self {
        Parsed {
            resource,
            source: source.into(),
            line: 0,
            spans: Spans::default(),
        }
    }

    /// `(line, column)` of a field path, or of its nearest present ancestor.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        self.spans.locate(path).unwrap_or((self.line, 0))
    }
}

/// Field path → 1-based `(line, column)` of each key and list item of a resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    /// Sorted by path.
    entries: Vec<(String, u32, u32)>,
}

impl Spans {
    fn from_node(root: &Node) -> Spans {
        let mut entries = Vec::new();
        entries.push((String::new(), root.line, root.col));
        let mut path = String::new();
        collect(root, &mut path, &mut entries);
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        Spans { entries }
    }

    /// The position of `path`, or of its nearest ancestor that exists in the source.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Ok(i) = self.entries.binary_search_by(|e| e.0.as_str().cmp(p)) {
                let (_, line, col) = &self.entries[i];
                if *line == 0 {
                    return None;
                }
                return Some((*line as usize, *col as usize));
            }
            p = parent_path(p)?;
        }
    }
}

fn collect(node: &Node, path: &mut String, out: &mut Vec<(String, u32, u32)>) {
    match &node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push((path.clone(), item.line, item.col));
                collect(item, path, out);
                path.truncate(len);
            }
        }
        NodeKind::Map(entries) => {
            for e in entries {
                let len = path.len();
                push_key(path, &e.key);
                out.push((path.clone(), e.key_line, e.key_col));
                collect(&e.value, path, out);
                path.truncate(len);
            }
        }
    }
}

/// `a.b[2]` → `a.b` → `a` → `` → None.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = if path.ends_with("\"]") {
        path.rfind("[\"")
    } else if path.ends_with(']') {
        path.rfind('[')
    } else {
        path.rfind('.')
    };
    Some(cut.map_or("", |i| &path[..i]))
}

/// Parse every resource in `text`; all-or-nothing: any error fails the whole text.
///
/// `source` names the text in messages (usually its file name). Empty documents are skipped.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Parsed>, Vec<ApiError>> {
    let (parsed, errors) = parse_documents_partial(source, text);
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// Like [`parse_documents`], but returns the good resources alongside the errors, for callers
/// that apply what they can (a watched directory keeps its last good state per resource).
pub fn parse_documents_partial(source: &str, text: &str) -> (Vec<Parsed>, Vec<ApiError>) {
    let loaded = yaml::load(text);
    let mut parsed = Vec::new();
    let mut errors: Vec<ApiError> = loaded
        .errors
        .iter()
        .map(|e| ApiError {
            file: source.to_owned(),
            line: e.line as usize,
            column: e.col as usize,
            resource: None,
            path: String::new(),
            message: e.message.clone(),
        })
        .collect();
    for node in loaded.documents.iter().flatten() {
        if node.is_null() {
            continue;
        }
        object(source, node, 0, &mut parsed, &mut errors);
    }
    // The same resource twice in one text is almost always a copy-paste mistake.
    let mut seen: HashMap<(Kind, String, String), usize> = HashMap::new();
    let mut unique = Vec::with_capacity(parsed.len());
    for p in parsed {
        let (kind, ns, name) = p.resource.key();
        let key = (kind, ns.to_owned(), name.to_owned());
        if let Some(first) = seen.get(&key) {
            errors.push(ApiError {
                file: source.to_owned(),
                line: p.line,
                column: 0,
                resource: Some(p.resource.label()),
                path: String::new(),
                message: format!("duplicate resource (first defined on line {first})"),
            });
        } else {
            seen.insert(key, p.line);
            unique.push(p);
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    (unique, errors)
}

const ENVELOPE_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

struct Ctx<'a> {
    source: &'a str,
    label: String,
}

impl Ctx<'_> {
    fn error(&self, line: u32, col: u32, path: &str, message: String) -> ApiError {
        ApiError {
            file: self.source.to_owned(),
            line: line as usize,
            column: col as usize,
            resource: Some(self.label.clone()),
            path: path.to_owned(),
            message,
        }
    }

    fn de_error(&self, e: DeError) -> ApiError {
        self.error(e.line, e.col, &e.path, e.message)
    }
}

fn unsupported_hint(kind: &str) -> Option<&'static str> {
    match kind {
        "EnvoyFilter" => Some(
            "not supported: weft does not run Envoy filters / Wasm; express the behaviour with \
             VirtualService (routing, retries, timeouts, fault injection, header edits, mirroring), \
             DestinationRule (load balancing, connection pools, outlier detection, TLS), \
             AuthorizationPolicy / RequestAuthentication (access control, JWT) or Telemetry \
             (metrics, tracing, access logs)",
        ),
        "WasmPlugin" => Some(
            "not supported: weft does not run Envoy filters / Wasm; express the behaviour with \
             AuthorizationPolicy (CUSTOM action for an external authorizer), RequestAuthentication \
             (JWT), VirtualService header edits, or Telemetry (metrics, tracing, access logs)",
        ),
        _ => None,
    }
}

fn object(
    source: &str,
    node: &Node,
    depth: usize,
    parsed: &mut Vec<Parsed>,
    errors: &mut Vec<ApiError>,
) {
    let kind_text = node.get("kind").and_then(Node::as_str).unwrap_or("");
    let api_version = node.get("apiVersion").and_then(Node::as_str).unwrap_or("");
    let meta = node.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Node::as_str)
        .unwrap_or("");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let ctx = Ctx {
        source,
        label: format!(
            "{} {namespace}/{}",
            if kind_text.is_empty() {
                "resource"
            } else {
                kind_text
            },
            if name.is_empty() { "<unnamed>" } else { name }
        ),
    };
    if !matches!(node.kind, NodeKind::Map(_)) {
        errors.push(ApiError {
            file: source.to_owned(),
            line: node.line as usize,
            column: node.col as usize,
            resource: None,
            path: String::new(),
            message: format!(
                "expected a resource (a mapping with apiVersion, kind, metadata and spec), found {}",
                node.describe()
            ),
        });
        return;
    }

    // Kubernetes lists (`kubectl get -o yaml` output).
    if kind_text == "List" || (kind_text.ends_with("List") && node.get("items").is_some()) {
        match node.get("items").map(|n| &n.kind) {
            Some(NodeKind::Seq(items)) if depth == 0 => {
                for item in items {
                    object(source, item, depth + 1, parsed, errors);
                }
            }
            Some(_) if depth > 0 => {
                errors.push(ctx.error(
                    node.line,
                    node.col,
                    "",
                    "nested lists are not supported".to_owned(),
                ));
            }
            _ if node.get("items").is_some_and(Node::is_null) => {}
            _ => {
                let (l, c) = node
                    .entry("items")
                    .map_or((node.line, node.col), |e| (e.key_line, e.key_col));
                errors.push(ctx.error(l, c, "items", "expected a list of resources".to_owned()));
            }
        }
        return;
    }

    let at = |key: &str| {
        node.entry(key)
            .map_or((node.line, node.col), |e| (e.value.line, e.value.col))
    };
    if kind_text.is_empty() {
        let (l, c) = at("kind");
        errors.push(ctx.error(l, c, "kind", "missing `kind`".to_owned()));
        return;
    }
    if let Some(hint) = unsupported_hint(kind_text) {
        let (l, c) = at("kind");
        errors.push(ctx.error(l, c, "kind", hint.to_owned()));
        return;
    }
    if api_version.is_empty() {
        let (l, c) = at("apiVersion");
        errors.push(ctx.error(l, c, "apiVersion", "missing `apiVersion`".to_owned()));
        return;
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let Some(kind) = Kind::from_group_kind(group, kind_text) else {
        let (l, c) = at("kind");
        let same_name: Vec<String> = Kind::ALL
            .iter()
            .filter(|k| k.name() == kind_text)
            .map(|k| format!("{}/{}", k.group(), k.versions()[0]))
            .collect();
        let message = if !same_name.is_empty() {
            format!(
                "`{kind_text}` is not served by `{api_version}`; use apiVersion {}",
                same_name.join(" or ")
            )
        } else {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            match did_you_mean(kind_text, &names) {
                Some(s) => format!("unsupported kind `{kind_text}` (did you mean `{s}`?)"),
                None => format!(
                    "unsupported kind `{kind_text}`; weft understands {}",
                    names.join(", ")
                ),
            }
        };
        errors.push(ctx.error(l, c, "kind", message));
        return;
    };
    if !kind.versions().contains(&version) {
        let (l, c) = at("apiVersion");
        let alts: Vec<String> = kind
            .versions()
            .iter()
            .map(|v| format!("{}/{v}", kind.group()))
            .collect();
        errors.push(ctx.error(
            l,
            c,
            "apiVersion",
            format!(
                "unsupported version `{api_version}` for {kind}; use {}",
                alts.join(", ")
            ),
        ));
        return;
    }

    let mut errs = Vec::new();
    if let NodeKind::Map(entries) = &node.kind {
        for e in entries {
            if !ENVELOPE_FIELDS.contains(&e.key.as_str()) {
                let message = match did_you_mean(&e.key, ENVELOPE_FIELDS) {
                    Some(s) => format!("unknown field (did you mean `{s}`?)"),
                    None => "unknown field; a resource has apiVersion, kind, metadata and spec"
                        .to_owned(),
                };
                errs.push(ctx.error(e.key_line, e.key_col, &e.key, message));
            }
        }
    }

    let root = Path::Root;
    let mut metadata = match meta {
        None => {
            errs.push(ctx.error(
                node.line,
                node.col,
                "metadata",
                "missing `metadata` (metadata.name is required)".to_owned(),
            ));
            None
        }
        Some(m) => match from_node::<ObjectMeta>(m, &Path::Key(&root, "metadata")) {
            Ok(m) => Some(m),
            Err(es) => {
                errs.extend(es.into_iter().map(|e| ctx.de_error(e)));
                None
            }
        },
    };
    if let Some(m) = &mut metadata
        && m.namespace.is_empty()
    {
        m.namespace = "default".to_owned();
    }
    let spec = node.get("spec");
    let resource = metadata.and_then(|metadata| {
        let r = build(kind, api_version, kind_text, metadata, spec);
        match r {
            Ok(r) => Some(r),
            Err(es) => {
                errs.extend(es.into_iter().map(|e| ctx.de_error(e)));
                None
            }
        }
    });
    let spans = Spans::from_node(node);
    // Validation only runs on schema-clean resources: its findings would mostly repeat
    // the schema errors (a misspelled field is also a missing one).
    if let Some(resource) = resource.as_ref().filter(|_| errs.is_empty()) {
        for mut e in validate(resource) {
            let (line, col) = spans
                .locate(&e.path)
                .unwrap_or((node.line as usize, node.col as usize));
            e.file = source.to_owned();
            e.line = line;
            e.column = col;
            e.resource = Some(ctx.label.clone());
            errs.push(e);
        }
    }
    match resource {
        Some(resource) if errs.is_empty() => parsed.push(Parsed {
            resource,
            source: source.to_owned(),
            line: node.line as usize,
            spans,
        }),
        _ => errors.extend(errs),
    }
}

fn spec_of<S: DeserializeOwned + Default>(spec: Option<&Node>) -> Result<S, Vec<DeError>> {
    let root = Path::Root;
    match spec {
        None => Ok(S::default()),
        Some(n) => from_node(n, &Path::Key(&root, "spec")),
    }
}

fn build(
    kind: Kind,
    api_version: &str,
    kind_text: &str,
    metadata: ObjectMeta,
    spec: Option<&Node>,
) -> Result<Resource, Vec<DeError>> {
    macro_rules! obj {
        ($variant:ident) => {
            Resource::$variant(Object {
                api_version: api_version.to_owned(),
                kind: kind_text.to_owned(),
                metadata,
                spec: spec_of(spec)?,
            })
        };
    }
    Ok(match kind {
        Kind::VirtualService => obj!(VirtualService),
        Kind::DestinationRule => obj!(DestinationRule),
        Kind::Gateway => obj!(Gateway),
        Kind::ServiceEntry => obj!(ServiceEntry),
        Kind::WorkloadEntry => obj!(WorkloadEntry),
        Kind::Sidecar => obj!(Sidecar),
        Kind::PeerAuthentication => obj!(PeerAuthentication),
        Kind::AuthorizationPolicy => obj!(AuthorizationPolicy),
        Kind::RequestAuthentication => obj!(RequestAuthentication),
        Kind::Telemetry => obj!(Telemetry),
        Kind::KubernetesGateway => obj!(KubernetesGateway),
        Kind::HttpRoute => obj!(HttpRoute),
        Kind::GrpcRoute => obj!(GrpcRoute),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
";

    #[test]
    fn parses_a_virtual_service() {
        let parsed = parse_documents("vs.yaml", VS).expect("valid");
        assert_eq!(parsed.len(), 1);
        let p = &parsed[0];
        assert_eq!(
            p.resource.key(),
            (Kind::VirtualService, "default", "reviews")
        );
        assert_eq!(p.line, 1);
        assert_eq!(
            p.locate("spec.http[0].route[0].destination.subset"),
            (12, 9)
        );
        assert_eq!(p.locate("spec.http[0].timeout"), (9, 5));
        let Resource::VirtualService(vs) = &p.resource else {
            panic!("kind")
        };
        assert_eq!(vs.spec.http[0].route[0].destination.subset, "v1");
    }

    #[test]
    fn lists_and_json_are_accepted() {
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
             "metadata": {"name": "r", "namespace": "prod"}, "spec": {"host": "r"}}]}"#;
        let parsed = parse_documents("list.json", json).expect("valid");
        assert_eq!(
            parsed[0].resource.key(),
            (Kind::DestinationRule, "prod", "r")
        );
        assert_eq!(parsed[0].line, 2);
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: Gateway\n  metadata: {name: g}\n  spec:\n    servers:\n    - port: {number: 80, name: http, protocol: HTTP}\n      hosts: ['*']\n";
        assert_eq!(parse_documents("l.yaml", yaml).expect("valid").len(), 1);
    }

    #[test]
    fn kubectl_output_metadata_and_status_are_accepted() {
        let text = VS.replace(
            "  name: reviews\n",
            "  name: reviews\n  uid: 1234\n  resourceVersion: \"5\"\n  generation: 2\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  managedFields: [{manager: kubectl}]\n",
        ) + "status: {}\n";
        parse_documents("vs.yaml", &text).expect("valid");
    }

    #[test]
    fn envelope_errors() {
        let errs = parse_documents("x.yaml", &VS.replace("spec:", "sepc:")).expect_err("typo");
        assert!(
            errs.iter()
                .any(|e| e.path == "sepc" && e.message.contains("did you mean `spec`")),
            "{errs:?}"
        );
        let errs = parse_documents(
            "x.yaml",
            &VS.replace("networking.istio.io/v1", "networking.istio.io/v2"),
        )
        .expect_err("version");
        assert!(
            errs[0].message.contains("use networking.istio.io/v1"),
            "{errs:?}"
        );
        let errs = parse_documents("x.yaml", &VS.replace("VirtualService", "VirtualServce"))
            .expect_err("kind");
        assert!(
            errs[0].message.contains("did you mean `VirtualService`"),
            "{errs:?}"
        );
        let errs = parse_documents(
            "x.yaml",
            &VS.replace("networking.istio.io/v1", "security.istio.io/v1"),
        )
        .expect_err("group");
        assert!(
            errs[0]
                .message
                .contains("use apiVersion networking.istio.io/v1"),
            "{errs:?}"
        );
        let errs = parse_documents(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        )
        .expect_err("svc");
        assert!(
            errs[0].message.starts_with("unsupported kind `Service`"),
            "{errs:?}"
        );
        let errs = parse_documents("x.yaml", "- a\n- b\n").expect_err("not a map");
        assert!(errs[0].message.starts_with("expected a resource"));
    }

    #[test]
    fn one_bad_document_does_not_hide_the_others() {
        let text = format!(
            "{VS}---\n{}---\n{}",
            VS.replace("reviews\n  http", "reviews\n  htp"),
            VS.replace("name: reviews", "name: other")
        );
        let (parsed, errors) = parse_documents_partial("x.yaml", &text);
        assert_eq!(parsed.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 21);
        assert_eq!(errors[0].path, "spec.htp");
    }

    #[test]
    fn duplicate_resources_are_reported() {
        let text = format!("{VS}---\n{VS}");
        let errs = parse_documents("x.yaml", &text).expect_err("dup");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .message
                .contains("duplicate resource (first defined on line 1)")
        );
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), Some("a.b"));
        assert_eq!(parent_path("a.b"), Some("a"));
        assert_eq!(parent_path("a"), Some(""));
        assert_eq!(parent_path(""), None);
        assert_eq!(parent_path("m.labels[\"a.b/c\"]"), Some("m.labels"));
        assert_eq!(parent_path("m[\"a.b\"].c"), Some("m[\"a.b\"]"));
    }
}
