//! A serde `Deserializer` over the located node tree of `yaml.rs`.
//!
//! Why: every schema error (wrong type, unknown field, bad enum value, bad duration) must come
//! out with the field path (`spec.http[1].route[0].weight`) and the exact line and column of
//! the offending key or value, and every unknown field of a document must be reported, not
//! just the first. Scalars are typed by the receiving field, as in protobuf's JSON mapping:
//! a plain `80` may fill a string, a quoted `"80"` may fill an integer.
//!
//! What it must not do: know anything about Istio; allocate paths except when reporting an
//! error (paths are a linked list on the stack).

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, EnumAccess, Expected, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

use crate::yaml::{Entry, Node, NodeKind, is_null_text};

/// A path from the document root, kept on the stack while deserializing.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(parent, key) => {
                let mut s = parent.to_string();
                push_key(&mut s, key);
                f.write_str(&s)
            }
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Append `key` to a field path: `a.b`, or `a["app.kubernetes.io/name"]` for keys that contain
/// path punctuation.
pub(crate) fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty() && !key.contains(['.', '[', ']', '"', ' ']);
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str("[\"");
        path.push_str(key);
        path.push_str("\"]");
    }
}

/// A deserialization error; `located` once a path and position have been attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeError {
    pub(crate) message: String,
    pub(crate) path: String,
    pub(crate) line: u32,
    pub(crate) col: u32,
    located: bool,
}

impl DeError {
    fn new(message: String) -> Self {
        DeError {
            message,
            path: String::new(),
            line: 0,
            col: 0,
            located: false,
        }
    }

    pub(crate) fn located(message: String, path: String, line: u32, col: u32) -> Self {
        DeError {
            message,
            path,
            line,
            col,
            located: true,
        }
    }

    fn at(mut self, path: &Path<'_>, line: u32, col: u32) -> Self {
        if !self.located {
            self.path = path.to_string();
            self.line = line;
            self.col = col;
            self.located = true;
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for DeError {}

fn one_of(expected: &[&str]) -> String {
    match expected {
        [] => "nothing".to_owned(),
        [one] => format!("`{one}`"),
        _ => {
            let quoted: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions (`sepc`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = best;
        }
    }
    d[a.len() * w + b.len()]
}

/// The closest candidate to a misspelled name, if any is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let wanted = normalize(name);
    let mut best: Option<(usize, &'c str)> = None;
    for &c in candidates {
        let d = edit_distance(&wanted, &normalize(c));
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (wanted.chars().count() / 3).max(1);
    (d <= limit).then_some(c)
}

fn unknown_message(what: &str, name: &str, expected: &[&str]) -> String {
    match did_you_mean(name, expected) {
        Some(s) => format!("unknown {what} (did you mean `{s}`?)"),
        None => format!("unknown {what}; expected {}", one_of(expected)),
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        DeError::new(format!("expected {exp}, found {unexp}"))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        DeError::new(format!("invalid value {unexp}: expected {exp}"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let msg = unknown_message("value", variant, expected);
        DeError::new(format!("`{variant}`: {msg}"))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(unknown_message(
            &format!("field `{field}`"),
            field,
            expected,
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(format!("missing required field `{field}`"))
    }
}

/// Unknown fields are collected here (deserialization continues past them).
pub(crate) type Sink = RefCell<Vec<DeError>>;

/// Deserialize `T` from `node`, whose path is `path`. Returns every unknown-field error, or
/// the first fatal error.
pub(crate) fn from_node<T: de::DeserializeOwned>(
    node: &Node,
    path: &Path<'_>,
) -> Result<T, Vec<DeError>> {
    let sink = Sink::default();
    let result = T::deserialize(De {
        node,
        path: *path,
        sink: &sink,
    });
    let mut errors = sink.into_inner();
    match result {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(e.at(path, node.line, node.col));
            errors.sort_by_key(|e| (e.line, e.col));
            Err(errors)
        }
    }
}

enum Plain<'t> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'t str),
}

fn parse_int(text: &str) -> Option<Plain<'_>> {
    let (neg, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if neg {
        let v = i64::try_from(magnitude).ok()?;
        Some(Plain::Int(-v))
    } else if let Ok(v) = i64::try_from(magnitude) {
        Some(Plain::Int(v))
    } else {
        Some(Plain::UInt(magnitude))
    }
}

fn parse_float(text: &str) -> Option<f64> {
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && text.chars().any(|c| c.is_ascii_digit());
    if !looks_numeric {
        return None;
    }
    text.parse::<f64>().ok().filter(|f| f.is_finite())
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve(text: &str) -> Plain<'_> {
    if is_null_text(text) {
        return Plain::Null;
    }
    if let Some(b) = parse_bool(text) {
        return Plain::Bool(b);
    }
    if let Some(i) = parse_int(text) {
        return i;
    }
    if let Some(f) = parse_float(text) {
        return Plain::Float(f);
    }
    Plain::Str(text)
}

struct De<'a> {
    node: &'a Node,
    path: Path<'a>,
    sink: &'a Sink,
}

impl<'a> De<'a> {
    fn locate(&self, e: DeError) -> DeError {
        e.at(&self.path, self.node.line, self.node.col)
    }

    fn mismatch(&self, expected: &str) -> DeError {
        self.locate(DeError::new(format!(
            "expected {expected}, found {}",
            self.node.describe()
        )))
    }

    fn scalar(&self) -> Option<(&'a str, bool)> {
        match &self.node.kind {
            NodeKind::Scalar { text, plain } => Some((text.as_str(), *plain)),
            _ => None,
        }
    }

    fn number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let parsed = self.scalar().and_then(|(t, _)| parse_int(t));
        let r = match parsed {
            Some(Plain::Int(i)) => visitor.visit_i64(i),
            Some(Plain::UInt(u)) => visitor.visit_u64(u),
            _ => return Err(self.mismatch("an integer")),
        };
        r.map_err(|e| self.locate(e))
    }

    fn map<'de, V: Visitor<'de>>(
        self,
        visitor: V,
        fields: Option<&'static [&'static str]>,
        expected: &str,
    ) -> Result<V::Value, DeError> {
        let entries: &'a [Entry] = match &self.node.kind {
            NodeKind::Map(entries) => entries,
            _ if self.node.is_null() => &[],
            _ => return Err(self.mismatch(expected)),
        };
        if let Some(fields) = fields {
            for e in entries {
                if !fields.contains(&e.key.as_str()) {
                    let path = Path::Key(&self.path, &e.key);
                    self.sink.borrow_mut().push(DeError::located(
                        unknown_message("field", &e.key, fields),
                        path.to_string(),
                        e.key_line,
                        e.key_col,
                    ));
                }
            }
        }
        let access = MapAcc {
            entries,
            idx: 0,
            current: None,
            path: self.path,
            sink: self.sink,
            fields,
        };
        visitor.visit_map(access).map_err(|e| self.locate(e))
    }
}

impl<'de, 'a> de::Deserializer<'de> for De<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            NodeKind::Scalar { text, plain: false } => visitor.visit_str(text),
            NodeKind::Scalar { text, plain: true } => match resolve(text) {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Int(i) => visitor.visit_i64(i),
                Plain::UInt(u) => visitor.visit_u64(u),
                Plain::Float(f) => visitor.visit_f64(f),
                Plain::Str(s) => visitor.visit_str(s),
            },
            NodeKind::Seq(_) => return self.deserialize_seq(visitor),
            NodeKind::Map(_) => return self.map(visitor, None, "a mapping"),
        };
        r.map_err(|e| self.locate(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar() {
            Some((t, true)) => match parse_bool(t) {
                Some(b) => visitor.visit_bool(b).map_err(|e| self.locate(e)),
                None => Err(self.mismatch("a boolean (true or false)")),
            },
            _ => Err(self.mismatch("a boolean (true or false)")),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.number(v)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar().and_then(|(t, _)| parse_float(t)) {
            Some(f) => visitor.visit_f64(f).map_err(|e| self.locate(e)),
            None => Err(self.mismatch("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar() {
            // null for a string field means "unset", like Kubernetes.
            Some((t, true)) if is_null_text(t) => visitor.visit_str(""),
            Some((t, _)) => visitor.visit_str(t),
            None => return Err(self.mismatch("a string")),
        }
        .map_err(|e| self.locate(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none().map_err(|e| self.locate(e))
        } else {
            let (line, col, path) = (self.node.line, self.node.col, self.path);
            visitor.visit_some(self).map_err(|e| e.at(&path, line, col))
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_unit().map_err(|e| self.locate(e))
        } else {
            Err(self.mismatch("null"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (line, col, path) = (self.node.line, self.node.col, self.path);
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.at(&path, line, col))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let items: &'a [Node] = match &self.node.kind {
            NodeKind::Seq(items) => items,
            _ if self.node.is_null() => &[],
            _ => return Err(self.mismatch("a list")),
        };
        let access = SeqAcc {
            items,
            idx: 0,
            path: self.path,
            sink: self.sink,
        };
        visitor.visit_seq(access).map_err(|e| self.locate(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.map(visitor, None, "a mapping")
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.map(visitor, Some(fields), "a mapping (object)")
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Scalar { text, .. } => visitor
                .visit_enum(UnitVariant { name: text })
                .map_err(|e| self.locate(e)),
            NodeKind::Map(entries) if entries.len() == 1 => {
                let entry = &entries[0];
                let r = visitor.visit_enum(MapVariant {
                    entry,
                    path: self.path,
                    sink: self.sink,
                });
                r.map_err(|e| self.locate(e))
            }
            _ => Err(self.mismatch("a single value")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

/// Deserializer for a mapping key (always a string; numbers are parsed for integer-keyed
/// maps such as `portLevelMtls`).
struct KeyDe<'a> {
    key: &'a str,
}

impl<'de> de::Deserializer<'de> for KeyDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.key)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_u64(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_u64(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_u64(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_u64(v)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match parse_int(self.key) {
            Some(Plain::Int(i)) => visitor.visit_i64(i),
            Some(Plain::UInt(u)) => visitor.visit_u64(u),
            _ => Err(DeError::new(format!(
                "expected an integer key, found `{}`",
                self.key
            ))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 u8 f32 f64 char str string bytes byte_buf option unit unit_struct
        newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct MapAcc<'a> {
    entries: &'a [Entry],
    idx: usize,
    current: Option<&'a Entry>,
    path: Path<'a>,
    sink: &'a Sink,
    fields: Option<&'static [&'static str]>,
}

impl<'de> MapAccess<'de> for MapAcc<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        while let Some(entry) = self.entries.get(self.idx) {
            self.idx += 1;
            if self
                .fields
                .is_some_and(|fields| !fields.contains(&entry.key.as_str()))
            {
                continue; // reported already
            }
            self.current = Some(entry);
            let path = Path::Key(&self.path, &entry.key);
            return seed
                .deserialize(KeyDe { key: &entry.key })
                .map(Some)
                .map_err(|e| e.at(&path, entry.key_line, entry.key_col));
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let Some(entry) = self.current.take() else {
            return Err(DeError::new("value requested before key".to_owned()));
        };
        seed.deserialize(De {
            node: &entry.value,
            path: Path::Key(&self.path, &entry.key),
            sink: self.sink,
        })
    }
}

struct SeqAcc<'a> {
    items: &'a [Node],
    idx: usize,
    path: Path<'a>,
    sink: &'a Sink,
}

impl<'de> SeqAccess<'de> for SeqAcc<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.get(self.idx) else {
            return Ok(None);
        };
        let i = self.idx;
        self.idx += 1;
        seed.deserialize(De {
            node,
            path: Path::Index(&self.path, i),
            sink: self.sink,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len().saturating_sub(self.idx))
    }
}

struct UnitVariant<'a> {
    name: &'a str,
}

impl<'de, 'a> EnumAccess<'de> for UnitVariant<'a> {
    type Error = DeError;
    type Variant = UnitOnly;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, UnitOnly), DeError> {
        let de: de::value::StrDeserializer<'a, DeError> = self.name.into_deserializer();
        Ok((seed.deserialize(de)?, UnitOnly))
    }
}

struct UnitOnly;

impl<'de> VariantAccess<'de> for UnitOnly {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, DeError> {
        Err(DeError::new("expected a mapping with one key".to_owned()))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, DeError> {
        Err(DeError::new("expected a mapping with one key".to_owned()))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, DeError> {
        Err(DeError::new("expected a mapping with one key".to_owned()))
    }
}

struct MapVariant<'a> {
    entry: &'a Entry,
    path: Path<'a>,
    sink: &'a Sink,
}

impl<'de, 'a> EnumAccess<'de> for MapVariant<'a> {
    type Error = DeError;
    type Variant = MapVariant<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let path = Path::Key(&self.path, &self.entry.key);
        let v = seed
            .deserialize(KeyDe {
                key: &self.entry.key,
            })
            .map_err(|e| e.at(&path, self.entry.key_line, self.entry.key_col))?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for MapVariant<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        if self.entry.value.is_null() {
            Ok(())
        } else {
            let path = Path::Key(&self.path, &self.entry.key);
            Err(DeError::new("expected no value".to_owned()).at(
                &path,
                self.entry.value.line,
                self.entry.value.col,
            ))
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(De {
            node: &self.entry.value,
            path: Path::Key(&self.path, &self.entry.key),
            sink: self.sink,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(
            De {
                node: &self.entry.value,
                path: Path::Key(&self.path, &self.entry.key),
                sink: self.sink,
            },
            visitor,
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_struct(
            De {
                node: &self.entry.value,
                path: Path::Key(&self.path, &self.entry.key),
                sink: self.sink,
            },
            "",
            fields,
            visitor,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::yaml::load;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(rename_all = "camelCase", default, deny_unknown_fields)]
    struct Route {
        weight: i32,
        name: String,
        ports: BTreeMap<u32, String>,
        mode: Option<Mode>,
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        host: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    enum Mode {
        Strict,
        Permissive,
    }

    fn de<T: de::DeserializeOwned>(text: &str) -> Result<T, Vec<DeError>> {
        let loaded = load(text);
        let node = loaded.documents.into_iter().flatten().next().expect("doc");
        from_node(&node, &Path::Root)
    }

    #[test]
    fn scalars_take_the_type_of_their_field() {
        let r: Route =
            de("weight: \"50\"\nname: 80\nports: {8080: a}\nmode: STRICT\n").expect("ok");
        assert_eq!(r.weight, 50);
        assert_eq!(r.name, "80");
        assert_eq!(r.ports.get(&8080).map(String::as_str), Some("a"));
        assert_eq!(r.mode, Some(Mode::Strict));
    }

    #[test]
    fn all_unknown_fields_are_reported_with_positions() {
        let errs = de::<Route>("wieght: 1\nitems:\n- host: a\n  hots: b\n").expect_err("unknown");
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].path, "wieght");
        assert_eq!(errs[0].message, "unknown field (did you mean `weight`?)");
        assert_eq!((errs[0].line, errs[0].col), (1, 1));
        assert_eq!(errs[1].path, "items[0].hots");
        assert_eq!((errs[1].line, errs[1].col), (4, 3));
    }

    #[test]
    fn type_errors_name_the_path_and_value() {
        let errs = de::<Route>("items:\n- host: a\n- host: [x]\n").expect_err("type");
        assert_eq!(errs[0].path, "items[1].host");
        assert_eq!(errs[0].message, "expected a string, found a list");
        assert_eq!(errs[0].line, 3);
        let errs = de::<Route>("weight: lots\n").expect_err("int");
        assert_eq!(errs[0].message, "expected an integer, found `lots`");
        let errs = de::<Route>("weight: 3000000000\n").expect_err("range");
        assert!(errs[0].message.contains("i32"), "{}", errs[0].message);
    }

    #[test]
    fn bad_enum_values_suggest_the_closest() {
        let errs = de::<Route>("mode: STRCT\n").expect_err("enum");
        assert_eq!(errs[0].path, "mode");
        assert_eq!(
            errs[0].message,
            "`STRCT`: unknown value (did you mean `STRICT`?)"
        );
        let errs = de::<Route>("mode: whatever\n").expect_err("enum");
        assert!(errs[0].message.contains("one of `STRICT`, `PERMISSIVE`"));
    }

    #[test]
    fn paths_quote_keys_with_punctuation() {
        let mut s = String::from("metadata.labels");
        push_key(&mut s, "app.kubernetes.io/name");
        assert_eq!(s, "metadata.labels[\"app.kubernetes.io/name\"]");
        assert_eq!(
            did_you_mean("per_try_timeout", &["perTryTimeout", "attempts"]),
            Some("perTryTimeout")
        );
        assert_eq!(did_you_mean("zzz", &["perTryTimeout"]), None);
        assert_eq!(did_you_mean("sepc", &["spec", "status"]), Some("spec"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
