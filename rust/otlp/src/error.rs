//! The one error type: what is wrong, and where in the message it is.

use std::fmt;

/// One step of the path to the offending field, innermost last once displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Field(&'static str),
    Index(&'static str, usize),
    Key(String),
}

/// Malformed, truncated or invalid input. `Display` names the field path and
/// the problem, e.g. `resource_spans[0].scope_spans[0].spans[3].span_id:
/// expected 8 bytes, got 3`.
///
/// The path is built while the error travels outwards (`within`, `at`), so the
/// success path pays nothing for it.
///
/// Boxed, so that the `Result`s of the hot parsing functions stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(Box<Inner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    msg: String,
    /// The request is well-formed but would convert to more than the policy allows.
    too_large: bool,
    /// Innermost segment first (pushed while unwinding).
    path: Vec<Seg>,
}

impl DecodeError {
    #[cold]
    pub fn new(msg: impl Into<String>) -> Self {
        DecodeError(Box::new(Inner { msg: msg.into(), too_large: false, path: Vec::new() }))
    }

    /// A well-formed request over a size limit (`admit::Policy`).
    #[cold]
    pub fn too_large(msg: impl Into<String>) -> Self {
        DecodeError(Box::new(Inner { msg: msg.into(), too_large: true, path: Vec::new() }))
    }

    pub fn is_too_large(&self) -> bool {
        self.0.too_large
    }

    /// The problem alone, without the path.
    pub fn message(&self) -> &str {
        &self.0.msg
    }

    /// The dotted path of the offending field (`""` for the whole message).
    pub fn path(&self) -> String {
        let mut out = String::new();
        for seg in self.0.path.iter().rev() {
            match seg {
                Seg::Field(f) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(f);
                }
                Seg::Index(f, i) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(f);
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
            }
        }
        out
    }

    /// Prefixes the path with a singular field.
    #[cold]
    pub(crate) fn within(mut self, field: &'static str) -> Self {
        self.0.path.push(Seg::Field(field));
        self
    }

    /// Prefixes the path with element `i` of a repeated field.
    #[cold]
    pub(crate) fn at(mut self, field: &'static str, i: usize) -> Self {
        self.0.path.push(Seg::Index(field, i));
        self
    }

    /// Prefixes the path with a JSON key as written by the client.
    #[cold]
    pub(crate) fn key(mut self, key: &str) -> Self {
        self.0.path.push(Seg::Key(key.to_owned()));
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.path.is_empty() {
            f.write_str(&self.0.msg)
        } else {
            write!(f, "{}: {}", self.path(), self.0.msg)
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<arrow_schema::ArrowError> for DecodeError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        DecodeError::new(format!("internal error building Arrow arrays: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, DecodeError>;

/// `.within(..)` / `.at(..)` on results.
pub(crate) trait Context<T> {
    fn within(self, field: &'static str) -> Result<T>;
    fn at(self, field: &'static str, i: usize) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    #[inline]
    fn within(self, field: &'static str) -> Result<T> {
        self.map_err(|e| e.within(field))
    }
    #[inline]
    fn at(self, field: &'static str, i: usize) -> Result<T> {
        self.map_err(|e| e.at(field, i))
    }
}
