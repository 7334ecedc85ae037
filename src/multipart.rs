//! A small `multipart/mixed` codec for OData `$batch` (RFC 2046 §5.1, OData v4 part 1
//! §11.7), shared by the Dataverse client (writes requests, reads responses) and the
//! sandbox (reads requests, writes responses).
//!
//! Written here rather than taken from a crate: the batch format needs only the
//! `multipart/mixed` framing plus the `application/http` message inside each part, which is
//! a few dozen lines, while the multipart crates target `multipart/form-data` uploads.
//!
//! The writer always emits CRLF. The reader is strict about structure (an opening
//! delimiter, a header block ended by an empty line in every part, the closing
//! `--boundary--`) and returns a message instead of panicking on anything else. It accepts
//! a bare LF where CRLF is due, because hand-written batches (Postman, curl scripts) often
//! have them and the .NET reader behind Dataverse is known to tolerate them (UNCERTAIN: not
//! documented by Microsoft).

/// One part: its MIME headers and its raw content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Part {
    /// Headers in order, names as written.
    pub headers: Vec<(String, String)>,
    /// The content after the empty line, without the line break before the next delimiter.
    pub body: Vec<u8>,
}

impl Part {
    /// A header's value (case-insensitive name, trimmed).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The media type of `Content-Type`, lower case, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(media_type)
    }
}

/// An HTTP message inside an `application/http` part: a request (`GET url HTTP/1.1`) or a
/// response (`HTTP/1.1 204 No Content`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpMessage {
    /// The request line or status line.
    pub start_line: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body (may be empty).
    pub body: Vec<u8>,
}

impl HttpMessage {
    /// A header's value (case-insensitive name, trimmed).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// `(method, target)` of a request line `METHOD target HTTP/1.1`.
    pub fn request_line(&self) -> Option<(&str, &str)> {
        let mut words = self.start_line.split_whitespace();
        let method = words.next()?;
        let target = words.next()?;
        let version = words.next()?;
        (words.next().is_none() && version.starts_with("HTTP/")).then_some((method, target))
    }

    /// The status code of a status line `HTTP/1.1 204 No Content`.
    pub fn status(&self) -> Option<u16> {
        let mut words = self.start_line.split_whitespace();
        if !words.next()?.starts_with("HTTP/") {
            return None;
        }
        let code = words.next()?;
        (code.len() == 3).then(|| code.parse().ok()).flatten()
    }

    /// Serializes the message (CRLF line ends, one empty line before the body).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.extend_from_slice(self.start_line.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_headers(&mut out, &self.headers);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn write_headers(out: &mut Vec<u8>, headers: &[(String, String)]) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The media type of a `Content-Type` value, lower case, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The `boundary` parameter of a `multipart/mixed` content type (quotes removed); `None`
/// for another media type, a missing or an invalid boundary (RFC 2046: 1–70 characters).
pub fn boundary(content_type: &str) -> Option<String> {
    if media_type(content_type) != "multipart/mixed" {
        return None;
    }
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let valid = !value.is_empty()
            && value.len() <= 70
            && !value.ends_with(' ')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b));
        valid.then(|| value.to_owned())
    })
}

/// Writes a whole multipart body: each part's headers, an empty line, its content, then
/// the closing delimiter.
pub fn write(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_headers(&mut out, &part.headers);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&part.body);
        // The line break before a delimiter belongs to the delimiter (RFC 2046).
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + from)
}

/// Index just past the line end at `at` (`\r\n` or `\n`), if there is one.
fn line_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at..) {
        Some([b'\r', b'\n', ..]) => Some(at + 2),
        Some([b'\n', ..]) => Some(at + 1),
        _ => None,
    }
}

/// Splits a multipart body into its parts.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter starts the body or a line (anything before it is preamble).
    let mut at = if body.starts_with(delimiter) {
        0
    } else {
        let mut search = 0;
        loop {
            let found = find(body, delimiter, search)
                .ok_or_else(|| format!("the body has no opening '--{boundary}' delimiter"))?;
            if found > 0 && body[found - 1] == b'\n' {
                break found;
            }
            search = found + 1;
        }
    };
    let mut parts = Vec::new();
    loop {
        let mut cursor = at + delimiter.len();
        if body[cursor..].starts_with(b"--") {
            if parts.is_empty() {
                return Err("the multipart body has no parts".to_owned());
            }
            return Ok(parts);
        }
        // Transport padding, then the line end.
        while matches!(body.get(cursor), Some(b' ' | b'\t')) {
            cursor += 1;
        }
        cursor = line_end(body, cursor)
            .ok_or_else(|| format!("'--{boundary}' must be followed by a line break"))?;
        // The part runs to the next delimiter at the start of a line.
        let mut search = cursor;
        let next = loop {
            let found = find(body, delimiter, search)
                .ok_or_else(|| format!("the multipart body is not closed with '--{boundary}--'"))?;
            if found > 0 && body[found - 1] == b'\n' {
                break found;
            }
            search = found + 1;
        };
        let mut end = next - 1;
        if end > cursor && body[end - 1] == b'\r' {
            end -= 1;
        }
        let content = &body[cursor..end.max(cursor)];
        let (headers, offset) = parse_headers(content).ok_or_else(|| {
            "a part's headers are not 'Name: value' lines ended by an empty line".to_owned()
        })?;
        parts.push(Part {
            headers,
            body: content[offset..].to_vec(),
        });
        at = next;
    }
}

/// Header lines up to the first empty line: the headers and where the body starts. A block
/// that ends without the empty line is accepted as headers only (a GET in a batch often
/// ends right after its request line).
fn parse_headers(bytes: &[u8]) -> Option<(Vec<(String, String)>, usize)> {
    let mut headers = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (line, next) = match find(bytes, b"\n", at) {
            Some(newline) => (&bytes[at..newline], newline + 1),
            None => (&bytes[at..], bytes.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Some((headers, next));
        }
        let line = std::str::from_utf8(line).ok()?;
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.is_empty() || name.contains(' ') {
            return None;
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
        at = next;
    }
    Some((headers, bytes.len()))
}

/// Parses the content of an `application/http` part.
pub fn parse_http(bytes: &[u8]) -> Result<HttpMessage, String> {
    // Blank lines before the start line are tolerated (some writers put one there).
    let mut at = 0;
    while let Some(next) = line_end(bytes, at) {
        at = next;
    }
    let rest = &bytes[at..];
    let (start_line, offset) = match find(rest, b"\n", 0) {
        Some(newline) => (&rest[..newline], newline + 1),
        None => (rest, rest.len()),
    };
    let start_line = start_line.strip_suffix(b"\r").unwrap_or(start_line);
    let start_line = std::str::from_utf8(start_line)
        .map_err(|_| "the request line is not UTF-8".to_owned())?
        .trim()
        .to_owned();
    if start_line.is_empty() {
        return Err("the part has no request or status line".to_owned());
    }
    let (headers, body_at) = parse_headers(&rest[offset..])
        .ok_or_else(|| format!("the headers after '{start_line}' are malformed"))?;
    Ok(HttpMessage {
        start_line,
        headers,
        body: rest[offset + body_at..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_read_from_content_types() {
        assert_eq!(
            boundary("multipart/mixed; boundary=\"batch_1\"").as_deref(),
            Some("batch_1")
        );
        assert_eq!(
            boundary("Multipart/Mixed;boundary=changeset_a-b").as_deref(),
            Some("changeset_a-b")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/mixed"), None);
        assert_eq!(boundary("multipart/mixed; boundary=\"\""), None);
    }

    #[test]
    fn parts_round_trip_and_nest() {
        let inner = write(
            "changeset_x",
            &[Part {
                headers: vec![("Content-ID".into(), "1".into())],
                body: b"POST accounts HTTP/1.1\r\n\r\n{}".to_vec(),
            }],
        );
        let outer = write(
            "batch_y",
            &[
                Part {
                    headers: vec![("Content-Type".into(), "application/http".into())],
                    body: b"GET accounts HTTP/1.1\r\n".to_vec(),
                },
                Part {
                    headers: vec![(
                        "Content-Type".into(),
                        "multipart/mixed; boundary=changeset_x".into(),
                    )],
                    body: inner,
                },
            ],
        );
        let parts = parse(&outer, "batch_y").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].media_type().as_deref(), Some("application/http"));
        let request = parse_http(&parts[0].body).unwrap();
        assert_eq!(request.request_line(), Some(("GET", "accounts")));
        assert!(request.body.is_empty());
        let nested = parse(&parts[1].body, "changeset_x").unwrap();
        assert_eq!(nested[0].header("content-id"), Some("1"));
        let message = parse_http(&nested[0].body).unwrap();
        assert_eq!(message.body, b"{}");
    }

    #[test]
    fn bare_line_feeds_and_preambles_are_read() {
        let body = b"preamble\n--b\nContent-Type: application/http\n\nHTTP/1.1 204 No Content\nOData-EntityId: x\n\n\n--b--\n";
        let parts = parse(body, "b").unwrap();
        let message = parse_http(&parts[0].body).unwrap();
        assert_eq!(message.status(), Some(204));
        assert_eq!(message.header("odata-entityid"), Some("x"));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"--b",
            b"--b\r\n",
            b"--b\r\nContent-Type: x\r\n\r\nbody",
            b"--b--",
            b"--bx\r\n",
            b"--b\r\nnot a header\r\n\r\n\r\n--b--",
            b"no delimiter at all",
        ] {
            assert!(
                parse(body, "b").is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse_http(b"").is_err());
        assert!(parse_http(b"\r\n\r\n").is_err());
        assert_eq!(parse_http(b"GET x").unwrap().request_line(), None);
        assert_eq!(parse_http(b"HTTP/1.1 20x OK").unwrap().status(), None);
    }
}
