//! How the coordinator talks to memory nodes ([`NodeControl`]) and moves bytes between them
//! during re-replication ([`DataMover`]).
//!
//! Both are traits so that tests use fakes and the binary plugs in the real things: the node
//! admin API over HTTP ([`HttpNodeControl`]) and a data-path client (in the binary: the
//! coordinator itself never touches the data path).

use std::future::Future;
use std::time::Duration;

use oxmem_api::{ApiError, GrantSpec, NodeAddr, ScrubRequest};

use crate::state::NodeTarget;

/// Why a call to a node failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The node could not be reached in time (connection refused, timeout).
    #[error("node {node} unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    /// The node answered with an error.
    #[error("node {node} refused: HTTP {status}: {body}")]
    Refused {
        node: String,
        status: u16,
        body: String,
    },
}

/// The node admin API, as the coordinator uses it (`crates/api` docs). Implementations must
/// be idempotent: the coordinator retries.
pub trait NodeControl: Send + Sync + 'static {
    /// `PUT /v1/grants/{id}`: puts (or replaces) grant `id`.
    fn put_grant(
        &self,
        node: NodeTarget,
        id: u64,
        spec: GrantSpec,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// `DELETE /v1/grants/{id}`: revokes grant `id` (success if it is not there).
    fn delete_grant(
        &self,
        node: NodeTarget,
        id: u64,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// `POST /v1/scrub`: zeroes a range.
    fn scrub(
        &self,
        node: NodeTarget,
        req: ScrubRequest,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
}

/// [`NodeControl`] over HTTP with the node token as Bearer, with a short timeout per call.
#[derive(Debug, Clone)]
pub struct HttpNodeControl {
    client: reqwest::Client,
    token: String,
}

impl HttpNodeControl {
    /// Calls nodes with `token`, giving up on a call after `timeout`.
    ///
    /// # Panics
    ///
    /// When the HTTP client cannot be built (no TLS backend is needed: plain HTTP).
    pub fn new(token: impl Into<String>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("HTTP client");
        HttpNodeControl {
            client,
            token: token.into(),
        }
    }

    async fn send(
        &self,
        node: &NodeTarget,
        req: reqwest::RequestBuilder,
        ok_404: bool,
    ) -> Result<(), ControlError> {
        let resp =
            req.bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| ControlError::Unreachable {
                    node: node.node_id.0.clone(),
                    reason: e.to_string(),
                })?;
        let status = resp.status();
        if status.is_success() || (ok_404 && status.as_u16() == 404) {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let body = match serde_json::from_str::<ApiError>(&body) {
            Ok(e) => e.to_string(),
            Err(_) => body.chars().take(200).collect(),
        };
        Err(ControlError::Refused {
            node: node.node_id.0.clone(),
            status: status.as_u16(),
            body,
        })
    }
}

fn url(node: &NodeTarget, path: &str) -> String {
    format!("{}{path}", node.admin_url.trim_end_matches('/'))
}

impl NodeControl for HttpNodeControl {
    async fn put_grant(
        &self,
        node: NodeTarget,
        id: u64,
        spec: GrantSpec,
    ) -> Result<(), ControlError> {
        let req = self
            .client
            .put(url(&node, &format!("/v1/grants/{id}")))
            .json(&spec);
        self.send(&node, req, false).await
    }

    async fn delete_grant(&self, node: NodeTarget, id: u64) -> Result<(), ControlError> {
        let req = self.client.delete(url(&node, &format!("/v1/grants/{id}")));
        self.send(&node, req, true).await
    }

    async fn scrub(&self, node: NodeTarget, req: ScrubRequest) -> Result<(), ControlError> {
        let r = self.client.post(url(&node, "/v1/scrub")).json(&req);
        self.send(&node, r, false).await
    }
}

/// One end of a copy: a node (with its data addresses) and an address in its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyEnd {
    pub node: NodeAddr,
    pub address: u64,
}

/// Why a copy failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("copy failed: {0}")]
pub struct MoveError(pub String);

/// Copies bytes between nodes over the data path, for re-replication. The coordinator grants
/// [`CoordinatorConfig::mover_addr`](crate::CoordinatorConfig::mover_addr) (when set) read
/// access to the source and write access to the target for the duration of the copy.
pub trait DataMover: Send + Sync + 'static {
    /// Copies `len` bytes from `from` to `to`.
    fn copy(
        &self,
        from: CopyEnd,
        to: CopyEnd,
        len: u64,
    ) -> impl Future<Output = Result<(), MoveError>> + Send;
}

/// A [`DataMover`] that cannot move anything: re-replication never completes, degraded
/// regions stay degraded. For coordinators without a data-path client.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMover;

impl DataMover for NoMover {
    async fn copy(&self, _from: CopyEnd, _to: CopyEnd, _len: u64) -> Result<(), MoveError> {
        Err(MoveError("this coordinator has no data mover".into()))
    }
}
