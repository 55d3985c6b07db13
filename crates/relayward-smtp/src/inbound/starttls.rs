//! STARTTLS (RFC 3207): the upgrade itself happens in the listener, which owns the socket.

use std::sync::Arc;

use relayward_core::reply;
use rustls::server::danger::ClientCertVerifier;
use rustls::ServerConnection;

use super::State;

impl State {
    /// True when the 220 is queued and the caller must flush and hand over for the handshake.
    pub(crate) fn starttls(&mut self) -> bool {
        if self.ctx.tls.is_none() {
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
    pub(crate) fn tls_established(
        &mut self,
        conn: &ServerConnection,
        chain: Option<&Arc<dyn ClientCertVerifier>>,
    ) {
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth_user = None;
        self.facts.auth_connector = None;
        self.facts.tls = true;
        self.facts.cert_names = Vec::new();
        self.facts.cert_unverified = None;
        match crate::tls::client_certificate(conn, chain) {
            Some((names, Ok(()))) => self.facts.cert_names = names,
            Some((names, Err(why))) => {
                tracing::info!(client_ip = %self.ip_text, names = %names.join(","), %why,
                    "client certificate did not verify");
                self.facts.cert_unverified = Some((names, why));
            }
            None => {}
        }
        self.tls_info = Some(crate::tls::describe(conn));
        self.reattribute();
    }
}
