//! YAML (and JSON, YAML's flow subset) text → a node tree that remembers the line and column
//! of every node and mapping key.
//!
//! Why: error messages must point at `file:line:column` and name a field path, both for
//! schema errors found while deserializing and for semantic errors found later by validation.
//! serde-saphyr's typed deserializer does not expose a path → location map, so we read the
//! event stream of its parser (`granit_parser`) ourselves and keep the tree.
//!
//! What it must not do: interpret Istio semantics, or resolve scalar types eagerly (a plain
//! `80` is a string or a number depending on the field that receives it; see `de.rs`).
//! Anchors and aliases are expanded with a node budget so that an alias bomb cannot exhaust
//! memory.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, Span};

/// Upper bound on nodes created per document, counting alias expansion.
const NODE_BUDGET: usize = 2_000_000;

/// One YAML node with its 1-based position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) line: u32,
    pub(crate) col: u32,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    /// `plain` is false for quoted/block scalars and for `!!str`-tagged ones: those are
    /// always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A mapping entry; keys are always scalars.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_line: u32,
    pub(crate) key_col: u32,
    pub(crate) value: Node,
}

/// A syntax error with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: u32,
    pub(crate) col: u32,
    pub(crate) message: String,
}

impl Node {
    /// Plain `null`, `~` and the empty plain scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true } if is_null_text(text))
    }

    /// The value of `key` when `self` is a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    pub(crate) fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The text of a scalar node (any style).
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A short description for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { text, plain } => {
                if *plain && is_null_text(text) {
                    "null".to_owned()
                } else {
                    format!("`{}`", truncate(text, 40))
                }
            }
            NodeKind::Seq(_) => "a list".to_owned(),
            NodeKind::Map(_) => "a mapping".to_owned(),
        }
    }
}

pub(crate) fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// The documents of a stream: `None` for an empty document (only comments, or nothing).
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) documents: Vec<Option<Node>>,
    pub(crate) errors: Vec<SyntaxError>,
}

/// Parse every document of `text`. A syntax error abandons its document only: parsing resumes
/// at the next `---`.
pub(crate) fn load(text: &str) -> Loaded {
    let trimmed = text.trim_start_matches('\u{feff}');
    let looks_json = matches!(trimmed.trim_start().as_bytes().first(), Some(b'{' | b'['));
    let loaded = load_yaml(trimmed);
    if looks_json && !loaded.errors.is_empty() {
        // JSON that YAML rejects (e.g. tab indentation): fall back to serde_json, which
        // gives no node positions but a precise syntax error.
        return match serde_json::from_str::<serde_json::Value>(trimmed) {
            Ok(value) => Loaded {
                documents: vec![Some(from_json(&value))],
                errors: Vec::new(),
            },
            Err(e) => Loaded {
                documents: Vec::new(),
                errors: vec![SyntaxError {
                    line: u32::try_from(e.line()).unwrap_or(u32::MAX),
                    col: u32::try_from(e.column()).unwrap_or(u32::MAX),
                    message: format!("JSON syntax error: {e}"),
                }],
            },
        };
    }
    loaded
}

fn from_json(value: &serde_json::Value) -> Node {
    use serde_json::Value;
    let kind = match value {
        Value::Null => NodeKind::Scalar {
            text: "null".to_owned(),
            plain: true,
        },
        Value::Bool(b) => NodeKind::Scalar {
            text: b.to_string(),
            plain: true,
        },
        Value::Number(n) => NodeKind::Scalar {
            text: n.to_string(),
            plain: true,
        },
        Value::String(s) => NodeKind::Scalar {
            text: s.clone(),
            plain: false,
        },
        Value::Array(items) => NodeKind::Seq(items.iter().map(from_json).collect()),
        Value::Object(map) => NodeKind::Map(
            map.iter()
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    key_line: 0,
                    key_col: 0,
                    value: from_json(v),
                })
                .collect(),
        ),
    };
    Node {
        kind,
        line: 0,
        col: 0,
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        line: u32,
        col: u32,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        pending_key: Option<(String, u32, u32)>,
        line: u32,
        col: u32,
        anchor: usize,
    },
}

/// Builds one document at a time from parser events.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    nodes: usize,
}

fn pos(span: &Span) -> (u32, u32) {
    let line = u32::try_from(span.start.line()).unwrap_or(u32::MAX);
    let col = u32::try_from(span.start.col().saturating_add(1)).unwrap_or(u32::MAX);
    (line, col)
}

fn count_nodes(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|e| 1 + count_nodes(&e.value))
                .sum::<usize>()
        }
    }
}

impl Builder {
    fn reset(&mut self) {
        self.stack.clear();
        self.anchors.clear();
        self.root = None;
        self.nodes = 0;
    }

    fn budget(&mut self, n: usize, line: u32, col: u32) -> Result<(), SyntaxError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > NODE_BUDGET {
            return Err(SyntaxError {
                line,
                col,
                message: format!(
                    "document too large: more than {NODE_BUDGET} nodes (after alias expansion)"
                ),
            });
        }
        Ok(())
    }

    /// Attach a finished node to its parent (or make it the document root).
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => match node.kind {
                    NodeKind::Scalar { text, .. } => {
                        *pending_key = Some((text, node.line, node.col));
                        Ok(())
                    }
                    _ => Err(SyntaxError {
                        line: node.line,
                        col: node.col,
                        message: "mapping keys must be plain strings, not lists or mappings"
                            .to_owned(),
                    }),
                },
                Some((key, key_line, key_col)) => {
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        return Err(SyntaxError {
                            line: key_line,
                            col: key_col,
                            message: format!(
                                "duplicate key `{key}` (first defined on line {})",
                                first.key_line
                            ),
                        });
                    }
                    entries.push(Entry {
                        key,
                        key_line,
                        key_col,
                        value: node,
                    });
                    Ok(())
                }
            },
        }
    }

    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), SyntaxError> {
        let (line, col) = pos(span);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.budget(1, line, col)?;
                let forced_str = tag.as_ref().is_some_and(|t| t.core_suffix() == Some("str"));
                let plain = style == ScalarStyle::Plain && !forced_str;
                self.finish(
                    Node {
                        kind: NodeKind::Scalar {
                            text: text.into_owned(),
                            plain,
                        },
                        line,
                        col,
                    },
                    anchor,
                )
            }
            Event::SequenceStart(_, anchor, _) => {
                self.budget(1, line, col)?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    line,
                    col,
                    anchor,
                });
                Ok(())
            }
            Event::MappingStart(_, anchor, _) => {
                self.budget(1, line, col)?;
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    pending_key: None,
                    line,
                    col,
                    anchor,
                });
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    line,
                    col,
                    anchor,
                }) => self.finish(
                    Node {
                        kind: NodeKind::Seq(items),
                        line,
                        col,
                    },
                    anchor,
                ),
                _ => Err(SyntaxError {
                    line,
                    col,
                    message: "unbalanced sequence end".to_owned(),
                }),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    entries,
                    line,
                    col,
                    anchor,
                    ..
                }) => self.finish(
                    Node {
                        kind: NodeKind::Map(entries),
                        line,
                        col,
                    },
                    anchor,
                ),
                _ => Err(SyntaxError {
                    line,
                    col,
                    message: "unbalanced mapping end".to_owned(),
                }),
            },
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return Err(SyntaxError {
                        line,
                        col,
                        message: "alias refers to an unknown anchor".to_owned(),
                    });
                };
                let n = count_nodes(target);
                let mut node = target.clone();
                self.budget(n, line, col)?;
                node.line = line;
                node.col = col;
                self.finish(node, 0)
            }
            // Stream/document boundaries are handled by the caller; comments and anchor
            // metadata carry no data.
            _ => Ok(()),
        }
    }
}

fn load_yaml(text: &str) -> Loaded {
    let mut options = Options::default();
    options.set_emit_comments(false);
    let mut parser = Parser::new_from_str_with_options(text, options);
    let mut out = Loaded::default();
    let mut builder = Builder::default();
    let mut in_document = false;
    while let Some(next) = parser.next_event() {
        let step = match next {
            Err(e) => Err(SyntaxError {
                line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                col: u32::try_from(e.marker().col().saturating_add(1)).unwrap_or(u32::MAX),
                message: format!("YAML syntax error: {}", e.info()),
            }),
            Ok((Event::StreamEnd, _)) => break,
            Ok((Event::DocumentStart(..), _)) => {
                builder.reset();
                in_document = true;
                Ok(())
            }
            Ok((Event::DocumentEnd, _)) => {
                if in_document {
                    out.documents
                        .push(builder.root.take().filter(|n| !n.is_null()));
                }
                in_document = false;
                builder.reset();
                Ok(())
            }
            Ok((event, span)) => builder.event(event, &span),
        };
        if let Err(e) = step {
            out.errors.push(e);
            builder.reset();
            in_document = false;
            match parser.proceed_next_document() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    out.errors.push(SyntaxError {
                        line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                        col: u32::try_from(e.marker().col().saturating_add(1)).unwrap_or(u32::MAX),
                        message: format!("YAML syntax error: {}", e.info()),
                    });
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let loaded = load(text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded
            .documents
            .into_iter()
            .flatten()
            .next()
            .expect("a document")
    }

    #[test]
    fn positions_are_one_based() {
        let n = one("a: 1\nb:\n  - x\n  - y\n");
        let b = n.entry("b").expect("b");
        assert_eq!((b.key_line, b.key_col), (2, 1));
        let NodeKind::Seq(items) = &b.value.kind else {
            panic!("seq")
        };
        assert_eq!((items[1].line, items[1].col), (4, 5));
    }

    #[test]
    fn multi_document_and_empty_documents() {
        let loaded = load("---\n# only a comment\n---\na: 1\n---\n---\nb: 2\n");
        assert!(loaded.errors.is_empty());
        let non_empty: Vec<_> = loaded.documents.iter().flatten().collect();
        assert_eq!(non_empty.len(), 2);
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let loaded = load("a: 1\na: 2\n");
        assert_eq!(loaded.errors.len(), 1);
        assert!(loaded.errors[0].message.contains("duplicate key `a`"));
        assert_eq!(loaded.errors[0].line, 2);
    }

    #[test]
    fn syntax_error_skips_only_its_document() {
        let loaded = load("a: [1, 2\n---\nb: 3\n");
        assert_eq!(loaded.errors.len(), 1);
        let docs: Vec<_> = loaded.documents.iter().flatten().collect();
        assert_eq!(docs.len(), 1);
        assert!(docs[0].get("b").is_some());
    }

    #[test]
    fn quoted_scalars_are_not_plain() {
        let n = one("a: \"80\"\nb: 80\nc: !!str 81\n");
        assert!(matches!(
            n.get("a").map(|n| &n.kind),
            Some(NodeKind::Scalar { plain: false, .. })
        ));
        assert!(matches!(
            n.get("b").map(|n| &n.kind),
            Some(NodeKind::Scalar { plain: true, .. })
        ));
        assert!(matches!(
            n.get("c").map(|n| &n.kind),
            Some(NodeKind::Scalar { plain: false, .. })
        ));
    }

    #[test]
    fn aliases_expand_and_bombs_are_stopped() {
        let n = one("a: &x {k: v}\nb: *x\n");
        assert_eq!(
            n.get("b").and_then(|b| b.get("k")).and_then(Node::as_str),
            Some("v")
        );
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let loaded = load(&bomb);
        assert!(
            loaded
                .errors
                .iter()
                .any(|e| e.message.contains("too large"))
        );
    }

    #[test]
    fn json_is_accepted_with_positions_and_tabs_fall_back() {
        let n = one("{\n  \"kind\": \"List\",\n  \"items\": []\n}\n");
        assert_eq!(n.entry("items").map(|e| e.key_line), Some(3));
        let loaded = load("{\n\t\"kind\":\t\"List\"\n}");
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.documents.len(), 1);
        let bad = load("{\"kind\": \"List\"");
        assert_eq!(bad.errors.len(), 1);
    }
}
