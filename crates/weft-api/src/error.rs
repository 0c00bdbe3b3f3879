//! The one error type users see from parsing and validation.
//!
//! Every error says where (`file:line:column`), what (`VirtualService default/reviews`),
//! which field (`spec.http[1].route[0].weight`) and why. Must not carry a hint of internal
//! types (serde, YAML events) in its text.

use std::fmt;

/// A parse or validation error: file, position, resource, field path and message.
///
/// Displays as
/// `reviews.yaml:14:9: VirtualService default/reviews: spec.http[1].route[0].weight: must be between 0 and 100`;
/// unknown parts (line 0, no resource, empty path) are left out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[error("{}", Shown(self))]
pub struct ApiError {
    /// The source name given to the parser (usually a file name).
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// `Kind namespace/name` when the error belongs to a resource.
    pub resource: Option<String>,
    /// Field path from the resource root, e.g. `spec.http[1].route[0].weight`.
    pub path: String,
    /// What is wrong, with a hint where one helps.
    pub message: String,
}

impl ApiError {
    /// An error without a position (validation fills positions in later).
    pub fn new(
        resource: Option<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            file: String::new(),
            line: 0,
            column: 0,
            resource,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Renders an [`ApiError`], leaving out the parts that are unknown.
struct Shown<'a>(&'a ApiError);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        if !e.file.is_empty() {
            f.write_str(&e.file)?;
            if e.line > 0 {
                write!(f, ":{}", e.line)?;
                if e.column > 0 {
                    write!(f, ":{}", e.column)?;
                }
            }
            f.write_str(": ")?;
        } else if e.line > 0 {
            write!(f, "line {}: ", e.line)?;
        }
        if let Some(r) = &e.resource {
            write!(f, "{r}: ")?;
        }
        if !e.path.is_empty() {
            write!(f, "{}: ", e.path)?;
        }
        f.write_str(&e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_every_known_part() {
        let mut e = ApiError::new(
            Some("VirtualService default/reviews".into()),
            "spec.http[1].route[0].weight",
            "must be between 0 and 100",
        );
        e.file = "reviews.yaml".into();
        e.line = 14;
        e.column = 9;
        assert_eq!(
            e.to_string(),
            "reviews.yaml:14:9: VirtualService default/reviews: spec.http[1].route[0].weight: must be between 0 and 100"
        );
        e.line = 0;
        e.resource = None;
        e.path.clear();
        assert_eq!(e.to_string(), "reviews.yaml: must be between 0 and 100");
    }
}
