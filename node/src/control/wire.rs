//! Bytes ↔ lines of the control protocol: the request and reply envelopes, capped line reads,
//! and the token. Nothing here knows about sockets or the daemon.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _};

/// The one line a client sends, borrowed so the client need not clone its request.
#[derive(Debug, Serialize)]
pub(super) struct RequestLine<'a, Req> {
    pub(super) token: &'a str,
    pub(super) request: &'a Req,
}

/// The server's view of a request line: the request stays raw JSON until the token has been
/// checked, so an unauthenticated client learns nothing about the request types.
#[derive(Debug, Deserialize)]
pub(super) struct RawRequestLine {
    pub(super) token: String,
    pub(super) request: serde_json::Value,
}

/// One reply line: `{"ok": <Resp>}` or `{"error": "<sentence>"}` (serde's external tagging
/// gives exactly that shape).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ReplyLine<Resp> {
    Ok(Resp),
    Error(String),
}

impl<Resp> From<Result<Resp, String>> for ReplyLine<Resp> {
    fn from(reply: Result<Resp, String>) -> Self {
        match reply {
            Ok(resp) => Self::Ok(resp),
            Err(sentence) => Self::Error(sentence),
        }
    }
}

/// Encodes `value` as one line, newline included.
pub(super) fn encode_line<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

/// The error line for `sentence`, which cannot fail to encode.
pub(super) fn error_line(sentence: &str) -> Vec<u8> {
    let mut line = serde_json::json!({ "error": sentence })
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

/// Why [`read_line`] produced no line.
#[derive(Debug)]
pub(super) enum LineError {
    /// The line is longer than the cap; the rest of it was not read.
    TooLong,
    Io(std::io::Error),
}

/// Reads one line into `buf` (cleared first, newline stripped), reading at most `max + 1`
/// bytes, so a peer cannot make us buffer more than that. Returns `Ok(false)` on end of stream
/// before any byte; a last line without a newline is accepted.
pub(super) async fn read_line<R>(
    reader: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<bool, LineError>
where
    R: AsyncBufRead + Unpin,
{
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = reader
        .take(limit)
        .read_until(b'\n', buf)
        .await
        .map_err(LineError::Io)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(true);
    }
    if buf.len() > max {
        return Err(LineError::TooLong);
    }
    Ok(true)
}

/// A fresh token: 32 random bytes as lowercase hex.
pub(super) fn new_token() -> String {
    use std::fmt::Write as _;
    let bytes: [u8; 32] = rand::random();
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Compares two tokens in time independent of where they differ, so that response timing does
/// not let a local attacker guess the token byte by byte. Only the length (public: 64) leaks.
pub(super) fn tokens_match(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    if given.len() != expected.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_hex_chars_and_differ() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn token_comparison() {
        let t = new_token();
        assert!(tokens_match(&t, &t.clone()));
        assert!(!tokens_match(&t, &new_token()));
        assert!(!tokens_match(&t, &t[..63]));
        assert!(!tokens_match("", &t));
    }

    #[test]
    fn reply_line_shape() {
        let ok: ReplyLine<u32> = Ok(7).into();
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":7}"#);
        let err: ReplyLine<u32> = Err("no such user".to_owned()).into();
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":"no such user"}"#
        );
        assert_eq!(
            error_line("a \"quoted\" word"),
            b"{\"error\":\"a \\\"quoted\\\" word\"}\n"
        );
    }

    #[tokio::test]
    async fn read_line_caps_and_strips() {
        let mut buf = Vec::new();
        let mut input: &[u8] = b"abc\ndef";
        assert!(read_line(&mut input, 8, &mut buf).await.unwrap());
        assert_eq!(buf, b"abc");
        assert!(read_line(&mut input, 8, &mut buf).await.unwrap());
        assert_eq!(buf, b"def");
        assert!(!read_line(&mut input, 8, &mut buf).await.unwrap());

        let mut exact: &[u8] = b"12345678\n";
        assert!(read_line(&mut exact, 8, &mut buf).await.unwrap());
        assert_eq!(buf, b"12345678");

        let mut long: &[u8] = b"123456789\n";
        assert!(matches!(
            read_line(&mut long, 8, &mut buf).await,
            Err(LineError::TooLong)
        ));
    }
}
