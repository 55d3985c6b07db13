//! EHLO / HELO: greeting the client and advertising extensions (RFC 5321 section 4.1.1.1).

use std::io::Write;

use super::State;

impl State {
    pub(crate) fn ehlo(&mut self, host: &str, extended: bool) {
        // EHLO in the middle of a transaction resets it, like RSET (RFC 5321 section 4.1.4).
        self.tx = None;
        self.helo = Some(printable(host));
        self.esmtp = extended;
        let offer_tls = self.ctx.tls.is_some() && !self.facts.tls;
        let offer_auth = self.auth_allowed() && self.auth_user.is_none();
        let hostname = &self.server.config.hostname;
        let w = &mut self.wbuf;
        if !extended {
            let _ = write!(w, "250 {hostname}\r\n");
            return;
        }
        let _ = write!(
            w,
            "250-{hostname}\r\n\
             250-PIPELINING\r\n\
             250-SIZE {}\r\n\
             250-8BITMIME\r\n\
             250-SMTPUTF8\r\n\
             250-ENHANCEDSTATUSCODES\r\n",
            self.server.config.max_message_size
        );
        if offer_tls {
            w.extend_from_slice(b"250-STARTTLS\r\n");
        }
        if offer_auth {
            w.extend_from_slice(b"250-AUTH PLAIN LOGIN\r\n");
        }
        w.extend_from_slice(b"250 DSN\r\n");
    }

    /// AUTH only over TLS unless the listener allows cleartext (RFC 4954 section 4); never on
    /// a listener in role `srs`.
    pub(crate) fn auth_allowed(&self) -> bool {
        (self.facts.tls || self.ctx.auth_without_tls) && self.ctx.srs.is_none()
    }
}

/// The EHLO argument as it may appear in our Received header: printable ASCII only, so a
/// client cannot inject header lines or control characters.
fn printable(host: &str) -> String {
    host.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
