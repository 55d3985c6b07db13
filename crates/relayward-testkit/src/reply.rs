/// Renders `"250 text"` or several `\n`-separated lines as an SMTP reply on the wire.
///
/// Lines after the first may repeat the code (`"550 a\n550 b"`) or omit it (`"550 a\nb"`).
pub(crate) fn to_wire(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let code = reply_code_str(text);
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let rest = match line.strip_prefix(code) {
            Some("") => "",
            Some(r) if r.starts_with(' ') || r.starts_with('-') => &r[1..],
            _ if i == 0 => line.get(3..).unwrap_or("").trim_start(),
            _ => line,
        };
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(code);
        out.push(sep);
        out.push_str(rest);
        out.push_str("\r\n");
    }
    out
}

fn reply_code_str(text: &str) -> &str {
    text.get(..3).unwrap_or("451")
}

/// The numeric code at the start of a reply text, if it has one.
pub(crate) fn code_of(text: &str) -> Option<u16> {
    let code = text.get(..3)?;
    if code.bytes().all(|b| b.is_ascii_digit()) {
        code.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multiline() {
        assert_eq!(to_wire("250 2.0.0 Ok"), "250 2.0.0 Ok\r\n");
        assert_eq!(to_wire("550 a\n550 b"), "550-a\r\n550 b\r\n");
        assert_eq!(to_wire("550-a\nb"), "550-a\r\n550 b\r\n");
        assert_eq!(to_wire("250"), "250 \r\n");
        assert_eq!(code_of("451 x"), Some(451));
        assert_eq!(code_of("xyz"), None);
    }
}
