//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616): credentials of a connector's AUTH user.

use std::borrow::Cow;
use std::sync::OnceLock;

use base64::Engine;
use relayward_core::{reply, Reply};
use relayward_policy::auth::{hash_password, verify_password};
use relayward_policy::directory::ip_allowed;
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{trim_line_end, LineRead, Session, Wait, MAX_PARAM_LINE};
use super::Exit;

enum Abort {
    /// The client has its answer (cancel, bad encoding, too long).
    Replied,
    Closed,
}

/// Verified against when the user is unknown, so that an unknown user costs the same time as
/// a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("relayward: no such user").unwrap_or_default())
}

/// A user name as it may appear in a trace event.
fn printable(user: &str) -> String {
    user.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn auth(&mut self, mechanism: u64, initial: Cow<'_, str>) -> Option<Exit> {
        let st = &mut self.st;
        let refusal = if st.helo.is_none() {
            Some(reply::BAD_SEQUENCE_EHLO_FIRST)
        } else if st.tx.is_some() {
            Some(reply::AUTH_IN_TRANSACTION)
        } else if st.auth_user.is_some() {
            Some(reply::ALREADY_AUTH)
        } else if st.ctx.srs.is_some() {
            // Nobody logs in to the SRS domain's MX.
            Some(reply::NOT_IMPLEMENTED)
        } else if !st.auth_allowed() {
            Some(reply::AUTH_NEEDS_TLS)
        } else if mechanism != smtp_proto::AUTH_PLAIN && mechanism != smtp_proto::AUTH_LOGIN {
            Some(reply::AUTH_MECH_UNKNOWN)
        } else {
            None
        };
        if let Some(r) = refusal {
            st.refuse(&r, None, None, Some("AUTH".into()));
            return None;
        }
        if st.server.auth_guard.address_locked(st.ip) {
            // Counted as an error too: a guesser is disconnected after max_errors tries.
            st.errors += 1;
            let detail = "reason=auth_locked scope=address".to_string();
            st.refuse(&reply::AUTH_LOCKED, None, None, Some(detail));
            return None;
        }
        let initial = (!initial.is_empty()).then_some(initial.as_bytes());
        let credentials = if mechanism == smtp_proto::AUTH_PLAIN {
            self.auth_plain(initial).await
        } else {
            self.auth_login(initial).await
        };
        match credentials {
            Ok(Some((user, password))) => self.verify(user, password).await,
            Ok(None) => {
                self.st.refuse(
                    &reply::AUTH_INVALID,
                    None,
                    None,
                    Some("AUTH malformed".into()),
                );
            }
            Err(Abort::Replied) => {}
            Err(Abort::Closed) => return Some(Exit::Close),
        }
        None
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`. An authzid other than the authcid is not
    /// ours to grant.
    async fn auth_plain(
        &mut self,
        initial: Option<&[u8]>,
    ) -> Result<Option<(String, String)>, Abort> {
        let decoded = self.response(initial, &reply::AUTH_CHALLENGE_EMPTY).await?;
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(authz), Some(authc), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        if !authz.is_empty() && authz != authc {
            return Ok(None);
        }
        match (
            String::from_utf8(authc.to_vec()),
            String::from_utf8(password.to_vec()),
        ) {
            (Ok(u), Ok(p)) if !u.is_empty() => Ok(Some((u, p))),
            _ => Ok(None),
        }
    }

    async fn auth_login(
        &mut self,
        initial: Option<&[u8]>,
    ) -> Result<Option<(String, String)>, Abort> {
        let user = self
            .response(initial, &reply::AUTH_CHALLENGE_USERNAME)
            .await?;
        let password = self.response(None, &reply::AUTH_CHALLENGE_PASSWORD).await?;
        match (String::from_utf8(user), String::from_utf8(password)) {
            (Ok(u), Ok(p)) if !u.is_empty() => Ok(Some((u, p))),
            _ => Ok(None),
        }
    }

    /// The client's base64 response: the initial response if given, else one line after our
    /// 334 challenge. `*` cancels (RFC 4954 section 4).
    async fn response(
        &mut self,
        initial: Option<&[u8]>,
        challenge: &Reply,
    ) -> Result<Vec<u8>, Abort> {
        let text: Vec<u8> = match initial {
            Some(i) => i.to_vec(),
            None => {
                self.st.write_reply(challenge);
                match self.read_line(MAX_PARAM_LINE, Wait::Command).await {
                    LineRead::Line => trim_line_end(&self.line).to_vec(),
                    LineRead::TooLong => {
                        self.st.reply(&reply::LINE_TOO_LONG);
                        return Err(Abort::Replied);
                    }
                    LineRead::Closed => return Err(Abort::Closed),
                }
            }
        };
        match text.as_slice() {
            b"*" => {
                self.st.reply(&reply::AUTH_CANCELLED);
                Err(Abort::Replied)
            }
            b"=" => Ok(Vec::new()),
            b64 => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| {
                    self.st.reply(&reply::AUTH_BAD_ENCODING);
                    Abort::Replied
                }),
        }
    }

    /// Check the password off the async threads (argon2 is slow on purpose); never log it.
    async fn verify(&mut self, user: String, password: String) {
        if self.st.server.auth_guard.user_locked(&user) {
            self.st.errors += 1;
            let detail = format!("reason=auth_locked scope=user user={}", printable(&user));
            self.st
                .refuse(&reply::AUTH_LOCKED, None, None, Some(detail));
            return;
        }
        let dir = self.st.server.directory.current();
        let found = dir.auth_connector(&user).map(|c| {
            (
                c.id,
                c.enabled && ip_allowed(c, self.st.ip),
                c.auth_password_hash.clone(),
            )
        });
        drop(dir);
        let hash = found.as_ref().and_then(|f| f.2.clone());
        let ok = tokio::task::spawn_blocking(move || {
            let real = hash.is_some();
            let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
            verify_password(Some(&hash), &password) && real
        })
        .await
        .unwrap_or(false);
        let st = &mut self.st;
        match found {
            Some((id, true, _)) if ok => {
                st.facts.auth_connector = Some(id);
                st.facts.auth_user_tried = None;
                st.auth_user = Some(user);
                st.reattribute();
                st.reply(&reply::AUTH_OK);
            }
            _ => {
                let why = match &found {
                    None => "unknown_user",
                    Some((_, false, _)) => "connector_disabled_or_ip_not_allowed",
                    Some(_) => "wrong_password",
                };
                let user = printable(&user);
                st.facts.auth_user_tried = Some(user.clone());
                let detail = format!("reason=auth_failed ({why}) user={user}");
                tracing::info!(client_ip = %st.ip, user = %user, why, "AUTH failed");
                st.refuse(&reply::AUTH_INVALID, None, None, Some(detail));
                if let Some(ev) = st.server.auth_guard.failed(st.ip, &user) {
                    st.server.events.auth_locked(ev);
                }
            }
        }
    }
}
