//! The admin API's router in this process, as a [`Transport`] of the typed client: the
//! commands on the relay's own host call the very handlers a remote client reaches over HTTP.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Request};
use relayward_client::{Answer, Call, ClientError, Transport};
use tower::ServiceExt;

/// The admin API's router in this process (see [`relayward_admin::local_router`]).
pub struct Local {
    router: axum::Router,
}

impl Local {
    pub fn new(router: axum::Router) -> Local {
        Local { router }
    }
}

#[async_trait]
impl Transport for Local {
    async fn send(&self, call: Call) -> Result<Answer, ClientError> {
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.path_and_query());
        let body = match call.body {
            Some(b) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(b)
            }
            None => Body::empty(),
        };
        let request = request
            .body(body)
            .map_err(|e| ClientError::Usage(format!("request: {e}")))?;
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Answer {
            status,
            body: body.to_vec(),
        })
    }

    fn describe(&self) -> String {
        "the local store".into()
    }
}
