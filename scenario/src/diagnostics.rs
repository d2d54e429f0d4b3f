//! Located problems in a scenario file: [`Diagnostic`], its [`Severity`] and the
//! [`ScenarioError`] that carries one; turning byte offsets into line and column and into
//! dotted key paths, and rewording serde's messages into the file's vocabulary.

use std::fmt;

use toml::de::{DeTable, DeValue};
use toml::{Spanned, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One located problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in chars.
    pub column: usize,
    /// Dotted path such as `pool[1].capacity` (indices 0-based), or "".
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: ",
            self.file, self.line, self.column
        )?;
        // An empty key would otherwise print as a dangling ": ".
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The first problem found, with its location.
    #[error("{0}")]
    Invalid(Diagnostic),
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// 1-based line and column (in chars) of a byte offset; offsets past the end
/// or inside a multi-byte char land on the next char boundary.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// Dotted key path of whatever sits at byte `offset`, found by re-parsing the
/// document into toml's spanned tree. Serde errors carry a span but no path,
/// and the span is exact, so this is reliable where the parse succeeds.
pub(crate) fn key_path_at(text: &str, offset: usize) -> String {
    match DeTable::parse(text) {
        Ok(root) => path_in_table(root.get_ref(), offset, "").unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn path_in_table(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let path = join(prefix, key.get_ref());
        if key.span().contains(&offset) {
            Some(path)
        } else {
            path_in_value(value, offset, &path)
        }
    })
}

fn path_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
    // Nested entries first: a table's span can cover its own children.
    let nested = match value.get_ref() {
        DeValue::Table(table) => path_in_table(table, offset, path),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| path_in_value(item, offset, &format!("{path}[{i}]"))),
        _ => None,
    };
    nested.or_else(|| value.span().contains(&offset).then(|| path.to_owned()))
}

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A value as the user wrote it, short enough for a one-line message.
pub(crate) fn render(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("\"{head}...\"")
        }
        Value::String(s) => format!("{s:?}"),
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Rewords serde's vocabulary into the file's: users write keys and arrays,
/// not fields and sequences.
pub(crate) fn polish(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or_default();
    // An integer beyond TOML's 64 bits reaches serde as an i128 nothing can take.
    if let Some(rest) = first_line.strip_prefix("invalid type: integer `")
        && let Some((number, _)) = rest.split_once("` as i128")
    {
        return format!(
            "{number} is too large: a whole number here is at most {}",
            i64::MAX
        );
    }
    first_line
        .replace("unknown field", "unknown key")
        .replace("expected one of", "allowed keys are")
        .replace("there are no fields", "this table takes no keys")
        .replace("a sequence", "an array")
        .replace("sequence", "array")
        .replace("invalid type: map", "invalid type: table")
}
