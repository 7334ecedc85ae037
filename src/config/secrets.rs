//! `${ENV}`, `${ENV:-default}` and `${file:/path}` references.
//!
//! Connection values may interpolate references anywhere in the text (`https://${ORG}.crm.dynamics.com`);
//! secret fields must be nothing but one reference, so a secret can never be committed to a
//! mapping file by accident. Resolved secrets live in [`Secret`], whose `Debug` and `Display`
//! never show the value.

use std::fmt;

/// A resolved secret. Its value is only reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that must send it (an HTTP request body or header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A problem with a reference. Messages name the variable or file, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// `${…}` that is not one of the three forms.
    #[error("malformed reference `{0}`; write ${{NAME}}, ${{NAME:-default}} or ${{file:/path}}")]
    Malformed(String),
    /// `${NAME}` with NAME unset and no default.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// `${file:…}` that cannot be read.
    #[error("cannot read secret file {path}: {reason}")]
    File {
        /// The file named by the reference.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
}

/// One piece of a string with references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<'a> {
    /// Literal text.
    Text(&'a str),
    /// `${NAME}` or `${NAME:-default}`.
    Env {
        /// Variable name.
        name: &'a str,
        /// Default when unset.
        default: Option<&'a str>,
    },
    /// `${file:/path}`.
    File(&'a str),
}

/// Splits `text` into literal text and references. `$$` is a literal `$`.
pub fn parse(text: &str) -> Result<Vec<Part<'_>>, ReferenceError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            parts.push(Part::Text(&rest[..pos + 1]));
            rest = stripped;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            parts.push(Part::Text(&rest[..pos + 1]));
            rest = after;
            continue;
        };
        if pos > 0 {
            parts.push(Part::Text(&rest[..pos]));
        }
        let Some(end) = body_start.find('}') else {
            return Err(ReferenceError::Malformed(rest[pos..].to_string()));
        };
        let body = &body_start[..end];
        parts.push(
            parse_reference(body)
                .ok_or_else(|| ReferenceError::Malformed(format!("${{{body}}}")))?,
        );
        rest = &body_start[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

fn parse_reference(body: &str) -> Option<Part<'_>> {
    if let Some(path) = body.strip_prefix("file:") {
        return (!path.is_empty()).then_some(Part::File(path));
    }
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(Part::Env { name, default })
}

/// Whether `text` is exactly one reference (what secret fields require).
pub fn is_reference(text: &str) -> bool {
    matches!(
        parse(text).as_deref(),
        Ok([Part::Env { .. } | Part::File(_)])
    )
}

/// Resolves every reference in `text`, reading variables through `env` (so tests need not touch
/// the process environment) and files from disk. A file's trailing newline is dropped.
pub fn resolve_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ReferenceError> {
    let mut out = String::new();
    for part in parse(text)? {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Env { name, default } => {
                // `${X:-d}` uses d when X is unset *or empty*, as in the shell.
                let value = env(name).filter(|v| !v.is_empty() || default.is_none());
                match (value, default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => return Err(ReferenceError::MissingEnv(name.to_string())),
                }
            }
            Part::File(path) => {
                let content = std::fs::read_to_string(path).map_err(|e| ReferenceError::File {
                    path: path.to_string(),
                    reason: e.kind().to_string(),
                })?;
                out.push_str(
                    content
                        .strip_suffix('\n')
                        .unwrap_or(&content)
                        .trim_end_matches('\r'),
                );
            }
        }
    }
    Ok(Secret(out))
}

/// Resolves references against the process environment.
pub fn resolve(text: &str) -> Result<Secret, ReferenceError> {
    resolve_with(text, &|name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ORG" => Some("contoso".into()),
            "EMPTY" => Some(String::new()),
            "TOKEN" => Some("s3cr3t-canary".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolates_env_defaults_and_literal_dollars() {
        let r = resolve_with("https://${ORG}.crm.dynamics.com/$$x", &env).unwrap();
        assert_eq!(r.expose(), "https://contoso.crm.dynamics.com/$x");
        assert_eq!(
            resolve_with("${NOPE:-fallback}", &env).unwrap().expose(),
            "fallback"
        );
        assert_eq!(
            resolve_with("${EMPTY:-fallback}", &env).unwrap().expose(),
            "fallback"
        );
        assert_eq!(resolve_with("${EMPTY}", &env).unwrap().expose(), "");
        assert_eq!(resolve_with("price $5", &env).unwrap().expose(), "price $5");
    }

    #[test]
    fn missing_and_malformed_references_are_errors_that_name_no_value() {
        assert_eq!(
            resolve_with("${NOPE}", &env).unwrap_err(),
            ReferenceError::MissingEnv("NOPE".into())
        );
        assert!(matches!(
            parse("${unclosed"),
            Err(ReferenceError::Malformed(_))
        ));
        assert!(matches!(
            parse("${1BAD}"),
            Err(ReferenceError::Malformed(_))
        ));
        assert!(matches!(
            parse("${file:}"),
            Err(ReferenceError::Malformed(_))
        ));
    }

    #[test]
    fn reads_files_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let r = resolve_with(&format!("${{file:{}}}", path.display()), &env).unwrap();
        assert_eq!(r.expose(), "from-file");
        let missing = resolve_with("${file:/nonexistent/cosell}", &env).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/cosell"));
    }

    #[test]
    fn secrets_never_print() {
        let s = resolve_with("${TOKEN}", &env).unwrap();
        assert!(!format!("{s:?} {s}").contains("canary"));
    }

    #[test]
    fn is_reference_requires_exactly_one_reference() {
        assert!(is_reference("${PC_SECRET}"));
        assert!(is_reference("${file:/run/secrets/x}"));
        assert!(is_reference("${A:-b}"));
        assert!(!is_reference("hunter2"));
        assert!(!is_reference("x${A}"));
        assert!(!is_reference("${A}${B}"));
    }
}
