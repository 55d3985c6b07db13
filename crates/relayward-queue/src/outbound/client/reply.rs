//! SMTP replies: what one says (positive, transient, permanent, enhanced status), and reading
//! one, all its lines, off the wire.

use std::fmt;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest reply line accepted; RFC 5321 says 512 octets, real servers exceed it a little.
const MAX_LINE: usize = 4096;
/// A multi-line reply longer than this is treated as a broken server.
const MAX_REPLY_LINES: usize = 128;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The RFC 3463 status at the start of the text ("5.1.1"), if the server sent one whose class
    /// agrees with the reply code.
    pub fn enhanced_status(&self) -> Option<String> {
        let first = self.lines.first()?;
        let word = first.split_whitespace().next()?;
        let mut parts = word.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        let ok = parts.next().is_none()
            && matches!(class, "2" | "4" | "5")
            && class.as_bytes()[0] - b'0' == (self.code / 100) as u8
            && (1..=3).contains(&subject.len())
            && subject.bytes().all(|b| b.is_ascii_digit())
            && (1..=3).contains(&detail.len())
            && detail.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| word.to_string())
    }

    /// The enhanced status, or the generic one for the reply's class.
    pub fn status(&self) -> String {
        self.enhanced_status()
            .unwrap_or_else(|| match self.code / 100 {
                2 => "2.0.0".into(),
                4 => "4.0.0".into(),
                _ => "5.0.0".into(),
            })
    }
}

/// The reply on one line, as logged and quoted in DSNs: "550 5.1.1 No such user".
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for line in &self.lines {
            if !line.is_empty() {
                write!(f, " {line}")?;
            }
        }
        Ok(())
    }
}

/// Reads one reply (all its lines) from the next hop, as the client does after each command:
/// lines end with LF (a CR before it is dropped), each starts with the same three digits,
/// `-` after them continues the reply. Malformed or endless replies are `InvalidData`.
pub async fn read_reply<R: AsyncBufRead + Unpin>(stream: &mut R) -> std::io::Result<Reply> {
    let mut lines = Vec::new();
    let mut code = 0u16;
    loop {
        let line = read_reply_line(stream).await?;
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("malformed reply line {line:?}"),
            ));
        }
        let this: u16 = line[..3].parse().unwrap_or(0);
        if lines.is_empty() {
            code = this;
        } else if this != code {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply code changed within a reply: {line:?}"),
            ));
        }
        let last = bytes.get(3) != Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_string());
        if last {
            return Ok(Reply { code, lines });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "reply too long",
            ));
        }
    }
}

async fn read_reply_line<R: AsyncBufRead + Unpin>(stream: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let buf = stream.fill_buf().await?;
        if buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..pos]);
            stream.consume(pos + 1);
            break;
        }
        let n = buf.len();
        line.extend_from_slice(buf);
        stream.consume(n);
        if line.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line.truncate(MAX_LINE);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status() {
        let r = Reply::new(550, "5.1.1 No such user");
        assert_eq!(r.enhanced_status().as_deref(), Some("5.1.1"));
        assert_eq!(r.to_string(), "550 5.1.1 No such user");
        let r = Reply::new(450, "5.1.1 mismatched class");
        assert_eq!(r.enhanced_status(), None);
        assert_eq!(r.status(), "4.0.0");
        assert_eq!(Reply::new(250, "ok").status(), "2.0.0");
    }
}
