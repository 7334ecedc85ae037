//! Store URLs: which backend a URL names, and how to print one without its password.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use super::StoreError;

/// What a store URL points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `sqlite::memory:`: a private in-memory database that lives as long as the store.
    SqliteMemory,
    /// `sqlite://path` (relative), `sqlite:///abs/path` or `sqlite:path`.
    SqliteFile(PathBuf),
    /// `postgres://…` or `postgresql://…`, handed to sqlx unchanged.
    Postgres,
}

/// Classifies `url`; errors name the URL with its password masked.
pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_string(),
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres);
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(invalid(
            "expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DATABASE",
        ));
    };
    if rest == ":memory:" || rest == "//:memory:" {
        return Ok(Target::SqliteMemory);
    }
    // `sqlite://state.db` is relative and `sqlite:///var/lib/state.db` absolute, the way sqlx
    // and most tools read these URLs: the two slashes only introduce the (empty) authority.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.contains('?') || path.contains('#') {
        // Refused rather than ignored: a silently dropped `?mode=ro` would be a surprise.
        return Err(invalid("query parameters are not supported in SQLite URLs"));
    }
    if path.is_empty() {
        return Err(invalid("the SQLite URL names no file"));
    }
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| invalid("the path is not valid UTF-8 after percent-decoding"))?;
    Ok(Target::SqliteFile(PathBuf::from(decoded.as_ref())))
}

/// `url` with any password masked as `***`: the one in the user-info part
/// (`postgres://user:secret@host/db`) and `password=`/`sslpassword=` query parameters.
///
/// Used for every URL that ends up in an error, a log line or `Debug` output. When in doubt it
/// masks more rather than less (an `@` anywhere ends the user-info part).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // `sqlite:path` / `sqlite::memory:` carry no credentials.
        return url.to_string();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    // The last `@` ends the user-info part even if the password itself holds `/`, `?` or `@`
    // unescaped, which sqlx would reject but which must still not leak.
    let rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            &rest[at..]
        }
        None => rest,
    };
    match rest.split_once('?') {
        None => out.push_str(rest),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                if key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword") {
                    out.push_str(key);
                    out.push_str("=***");
                } else {
                    out.push_str(pair);
                }
            }
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_memory() {
        assert_eq!(parse("sqlite::memory:").unwrap(), Target::SqliteMemory);
        assert_eq!(parse("sqlite://:memory:").unwrap(), Target::SqliteMemory);
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            parse("sqlite://state/cosell.db").unwrap(),
            Target::SqliteFile(PathBuf::from("state/cosell.db"))
        );
        assert_eq!(
            parse("sqlite:///var/lib/cosell/state.db").unwrap(),
            Target::SqliteFile(PathBuf::from("/var/lib/cosell/state.db"))
        );
        assert_eq!(
            parse("sqlite:state.db").unwrap(),
            Target::SqliteFile(PathBuf::from("state.db"))
        );
        assert_eq!(
            parse("sqlite:///tmp/with%20space.db").unwrap(),
            Target::SqliteFile(PathBuf::from("/tmp/with space.db"))
        );
    }

    #[test]
    fn sqlite_bad_urls() {
        for url in [
            "sqlite://",
            "sqlite:",
            "sqlite://x.db?mode=ro",
            "sqlite:///%FF.db",
        ] {
            let err = parse(url).unwrap_err();
            assert!(matches!(err, StoreError::InvalidUrl { .. }), "{url}: {err}");
            assert!(err.to_string().contains(url), "{err}");
        }
    }

    #[test]
    fn postgres_urls() {
        assert_eq!(
            parse("postgres://cosell@db.internal:5432/cosell").unwrap(),
            Target::Postgres
        );
        assert_eq!(
            parse("postgresql://cosell@db/cosell").unwrap(),
            Target::Postgres
        );
    }

    #[test]
    fn unknown_scheme_is_invalid_and_redacted() {
        let err = parse("mysql://root:hunter2@db/cosell").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mysql://root:***@db/cosell"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://cosell:s3cret@db:5432/cosell"),
            "postgres://cosell:***@db:5432/cosell"
        );
        assert_eq!(
            redact_url("postgres://cosell@db/cosell"),
            "postgres://cosell@db/cosell"
        );
        assert_eq!(
            redact_url("postgres://db/cosell?user=a&password=s3cret&sslmode=require"),
            "postgres://db/cosell?user=a&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:pa/ss@wo?rd@db/x?sslpassword=k#frag"),
            "postgres://u:***@db/x?sslpassword=***#frag"
        );
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }
}
