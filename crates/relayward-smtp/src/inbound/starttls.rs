//! STARTTLS (RFC 3207): the upgrade itself happens in the listener, which owns the socket.

use relayward_core::reply;
use rustls::ServerConnection;

use super::State;

impl State {
    /// True when the 220 is queued and the caller must flush and hand over for the handshake.
    pub(crate) fn starttls(&mut self) -> bool {
        if self.ctx.acceptor.is_none() {
            self.reply(&reply::NOT_IMPLEMENTED);
            false
        } else if self.facts.tls {
            self.reply(&reply::ALREADY_TLS);
            false
        } else {
            self.write_reply(&reply::READY_TLS);
            true
        }
    }

    /// After the handshake: forget everything learnt in cleartext (RFC 3207 section 4.2), and
    /// attribute again now that a verified client certificate may name the tenant.
    pub(crate) fn tls_established(&mut self, conn: &ServerConnection) {
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth_user = None;
        self.facts.auth_connector = None;
        self.facts.tls = true;
        self.facts.cert_names = crate::tls::peer_cert_names(conn);
        self.tls_info = Some(crate::tls::describe(conn));
        self.reattribute();
    }
}
