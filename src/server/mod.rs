//! The EBS direct API over HTTP, wire-compatible with the AWS SDKs: the six
//! operations on their REST paths, errors as the service model serializes
//! them, a request id on every response, and block bodies read with a hard
//! limit so no request makes the server allocate without bound.
//!
//! [`router`] builds an axum router over an [`Engine`]; [`serve`] runs it on
//! a listener until a shutdown signal, finishing requests in flight.
//! Requests act for the owner that [`ServerConfig::authentication`]
//! resolves.

pub(crate) mod auth;
mod ec2;
mod listen;
mod maintenance;
mod metrics;
mod quota;
pub(crate) mod wire;

pub use auth::{Credentials, MAX_CLOCK_SKEW};
pub use listen::{serve, ServeReport};
pub use maintenance::{LastRun, Maintenance, MaintenanceReport, MaintenanceSchedule};
pub use quota::RateLimits;

use crate::api::{
    CompleteSnapshotRequest, Ebs, GetSnapshotBlockRequest, ListChangedBlocksRequest,
    ListSnapshotBlocksRequest, PutSnapshotBlockRequest,
};
use crate::codec;
use crate::engine::Engine;
use crate::error::{Error, ValidationReason};
use crate::ids::BLOCK_SIZE;
use auth::Payload;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::{error_response, header, integer, json_response, param, query_params};

/// Who requests act for.
#[derive(Clone, Debug)]
pub enum Authentication {
    /// AWS Signature Version 4 with these access keys; each request acts
    /// for its key's owner.
    SigV4(Arc<Credentials>),
    /// No authentication: every request acts for this owner. Only for a
    /// server reachable by trusted clients alone.
    InsecureSingleOwner(String),
}

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Who requests act for.
    pub authentication: Authentication,
    /// Request-rate quotas (AWS's defaults unless changed).
    pub rate_limits: RateLimits,
    /// Connection and body limits.
    pub limits: ServerLimits,
    /// Scheduled maintenance whose runs `/metrics` reports and whose
    /// damage turns `/health` to 503 (`None`: none scheduled).
    pub maintenance: Option<Arc<Maintenance>>,
}

impl ServerConfig {
    /// A server with `authentication`, AWS's default rate quotas and the
    /// default limits.
    pub fn new(authentication: Authentication) -> ServerConfig {
        ServerConfig {
            authentication,
            rate_limits: RateLimits::default(),
            limits: ServerLimits::default(),
            maintenance: None,
        }
    }
}

/// What a client may hold of the server, so that idle, slow or hostile
/// connections cost it a bounded amount (see DESIGN.md §15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Most connections open at once; more are closed as soon as they are
    /// accepted. `serve` keeps it below the descriptor limit.
    pub max_connections: usize,
    /// A connection must deliver a request's headers within this long of
    /// opening, or of the previous response (so it is also the idle
    /// keep-alive timeout); a TLS handshake must finish within it too.
    pub header_timeout: Duration,
    /// A request body that delivers no byte for this long is abandoned.
    pub body_progress_timeout: Duration,
    /// A request body must arrive whole within this long.
    pub body_timeout: Duration,
    /// After a shutdown signal, requests in flight have this long.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(20),
            body_progress_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

struct ServerState {
    engine: Engine,
    config: ServerConfig,
    metrics: metrics::Metrics,
    throttle: quota::Throttle,
}

/// The router of the EBS direct API over `engine`, with `/health` and
/// `/metrics` (request counts and latencies only: nothing about the
/// store's content, which needs [`router_with_metrics`]).
pub fn router(engine: Engine, config: ServerConfig) -> Router {
    router_with_metrics(engine, config).0
}

/// [`router`], and a second router serving `/metrics` with the store's
/// gauges too (pending snapshots, chunks, stored bytes, block bytes in
/// and out): for a listener only the operator reaches
/// (`--metrics-listen`), because counters of stored chunks and bytes tell
/// one owner whether a block already exists in another's snapshots.
pub fn router_with_metrics(engine: Engine, config: ServerConfig) -> (Router, Router) {
    let state = Arc::new(ServerState {
        throttle: quota::Throttle::new(&config.rate_limits),
        engine,
        config,
        metrics: metrics::Metrics::new(),
    });
    let private = Router::new()
        .route("/metrics", get(render_private_metrics))
        .with_state(state.clone());
    let public = Router::new()
        .route("/snapshots", post(start_snapshot))
        .route("/snapshots/completion/{snapshot}", post(complete_snapshot))
        .route("/snapshots/{snapshot}/blocks", get(list_snapshot_blocks))
        .route(
            "/snapshots/{snapshot}/blocks/{index}",
            put(put_snapshot_block).get(get_snapshot_block),
        )
        .route(
            "/snapshots/{snapshot}/changedblocks",
            get(list_changed_blocks),
        )
        .route("/", post(ec2::query))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .fallback(unknown_operation)
        .method_not_allowed_fallback(unknown_operation)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    (public, private)
}

/// `GET /health`: 200 while the store accepts writes and maintenance has
/// found no damage; 503 once an I/O failure has made it refuse writes, or
/// while damage a maintenance run found stands.
async fn health(State(state): State<Arc<ServerState>>) -> Response {
    if !state.engine.is_writable() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"Status": "failed", "Message": "an I/O failure stopped writes; restart the server"}),
        );
    }
    let damage = state
        .config
        .maintenance
        .as_ref()
        .and_then(|maintenance| maintenance.damage());
    match damage {
        Some(damage) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"Status": "damaged", "Message": format!("{damage}; run `blocksnap verify` for the details")}),
        ),
        None => json_response(StatusCode::OK, &json!({"Status": "ok"})),
    }
}

/// `GET /metrics` on the API port: Prometheus (OpenMetrics) text of the
/// request counts and latencies.
async fn render_metrics(State(state): State<Arc<ServerState>>) -> Response {
    metrics_response(
        state
            .metrics
            .render(None, state.config.maintenance.as_deref()),
    )
}

/// `GET /metrics` on the operator's listener: everything, store gauges
/// included.
async fn render_private_metrics(State(state): State<Arc<ServerState>>) -> Response {
    metrics_response(
        state
            .metrics
            .render(Some(&state.engine), state.config.maintenance.as_deref()),
    )
}

fn metrics_response(text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Adds `x-amzn-RequestId` to every response, logs one line per request
/// and counts it in the metrics.
async fn observe(State(state): State<Arc<ServerState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    // An EC2 response carries its id in its body too: the handler made it.
    let id = match response.headers().get(REQUEST_ID_HEADER) {
        Some(value) => value.to_str().unwrap_or_default().to_string(),
        None => {
            let id = new_request_id();
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            id
        }
    };
    let (mut operation, snapshot) = operation_of(&method, &path);
    if let Some(ec2::Action(action)) = response.extensions().get::<ec2::Action>() {
        operation = action;
    }
    let error_class = match response.extensions().get::<ec2::ErrorCode>() {
        Some(ec2::ErrorCode(code)) => Some(*code),
        None => response
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|value| value.to_str().ok()),
    };
    let seconds = started.elapsed().as_secs_f64();
    state
        .metrics
        .observe(operation, response.status().as_u16(), error_class, seconds);
    tracing::info!(
        request_id = %id,
        operation,
        snapshot,
        status = response.status().as_u16(),
        latency_ms = (seconds * 1000.0 * 1000.0).round() / 1000.0,
        "request"
    );
    response
}

/// The header every response's request id is in.
pub(super) const REQUEST_ID_HEADER: &str = "x-amzn-RequestId";

/// The operation a method and path name, and the snapshot in the path.
fn operation_of<'a>(method: &Method, path: &'a str) -> (&'static str, &'a str) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["snapshots"]) => ("StartSnapshot", ""),
        ("POST", ["snapshots", "completion", snapshot]) => ("CompleteSnapshot", snapshot),
        ("PUT", ["snapshots", snapshot, "blocks", _]) => ("PutSnapshotBlock", snapshot),
        ("GET", ["snapshots", snapshot, "blocks", _]) => ("GetSnapshotBlock", snapshot),
        ("GET", ["snapshots", snapshot, "blocks"]) => ("ListSnapshotBlocks", snapshot),
        ("GET", ["snapshots", snapshot, "changedblocks"]) => ("ListChangedBlocks", snapshot),
        ("POST", [""]) => ("Ec2Query", ""),
        ("GET", ["health"]) => ("Health", ""),
        ("GET", ["metrics"]) => ("Metrics", ""),
        _ => ("Unknown", ""),
    }
}

/// A random request id in the UUID text form.
pub(super) fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    // A request id is a label, not a secret: zeros if the generator fails.
    let _ = getrandom::fill(&mut bytes);
    let hex = codec::hex_bytes(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// What a handler needs of the request to authenticate and admit it.
struct Incoming<'a> {
    operation: &'static str,
    snapshot: &'a str,
    parts: &'a Parts,
}

/// A request whose headers passed authentication's checks that need no
/// body (see [`ServerState::present`]).
enum Presented<'a> {
    /// Authentication is off: every request acts for this owner.
    Insecure(&'a str),
    /// SigV4: the signature is checked once the payload is known.
    SigV4(auth::Presented<'a>),
}

impl ServerState {
    /// Checks the request's `Authorization` header (a known access key,
    /// scope for `service`, clock, signed headers) before a byte of its
    /// body is read: a
    /// request without a known key is refused at the cost of its headers.
    fn present<'a>(&'a self, parts: &'a Parts, service: &str) -> Result<Presented<'a>, Error> {
        match &self.config.authentication {
            Authentication::InsecureSingleOwner(owner) => Ok(Presented::Insecure(owner)),
            Authentication::SigV4(credentials) => Ok(Presented::SigV4(auth::check_headers(
                credentials,
                &parts.headers,
                service,
                std::time::SystemTime::now(),
            )?)),
        }
    }

    /// The engine acting for the request's owner, once its signature is
    /// verified over `payload` and the rate quotas admit it.
    fn admit(
        &self,
        presented: Presented<'_>,
        request: &Incoming<'_>,
        payload: Payload<'_>,
    ) -> Result<Engine, Error> {
        let owner = match presented {
            Presented::Insecure(owner) => owner.to_string(),
            Presented::SigV4(presented) => auth::verify_signature(
                presented,
                &request.parts.method,
                &request.parts.uri,
                &request.parts.headers,
                payload,
            )?,
        };
        self.throttle
            .admit(request.operation, &owner, request.snapshot)?;
        Ok(self.engine.as_owner(&owner))
    }

    /// Reads a body after checking its declared length: over `limit` it is
    /// refused before a byte is read (so `Expect: 100-continue` is answered
    /// with the refusal, not a go-ahead). The body must keep arriving (a
    /// gap of `body_progress_timeout` ends it) and be whole within
    /// `body_timeout`; a longer one is refused once `limit` bytes arrived.
    async fn read_body(
        &self,
        parts: &Parts,
        body: Body,
        limit: usize,
        what: &str,
    ) -> Result<bytes::Bytes, Error> {
        let declared = header(&parts.headers, "content-length")?
            .map(|text| {
                text.trim().parse::<u64>().map_err(|_| {
                    Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        format!("Content-Length '{text}' is not a length."),
                    )
                })
            })
            .transpose()?;
        if declared.is_some_and(|declared| declared > limit as u64) {
            return Err(Error::invalid(
                ValidationReason::InvalidParameterValue,
                format!("The {what} may be at most {limit} bytes."),
            ));
        }
        let limits = &self.config.limits;
        let deadline = tokio::time::Instant::now() + limits.body_timeout;
        let mut body = Limited::new(body, limit);
        // Sized once from the declared length (checked against the limit
        // above), so a block's half megabyte arriving in socket-sized
        // frames is copied once rather than regrown and moved each time
        // it doubles.
        let mut collected =
            bytes::BytesMut::with_capacity(declared.map_or(0, |declared| declared as usize));
        loop {
            let wait = limits
                .body_progress_timeout
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let frame = tokio::time::timeout(wait, body.frame())
                .await
                .map_err(|_| {
                    Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        format!(
                            "The {what} stalled: no byte for {} s, or not whole within {} s.",
                            limits.body_progress_timeout.as_secs(),
                            limits.body_timeout.as_secs()
                        ),
                    )
                })?;
            match frame {
                None => return Ok(collected.freeze()),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        collected.extend_from_slice(data);
                    }
                }
                Some(Err(error)) => {
                    return Err(Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        format!("The {what} is longer than {limit} bytes or was cut off: {error}"),
                    ))
                }
            }
        }
    }
}

/// Largest body accepted where the operation has none.
const SMALL_BODY: usize = 4096;

fn reply(result: Result<Response, Error>) -> Response {
    result.unwrap_or_else(|error| error_response(&error))
}

/// Runs an operation without a body (CompleteSnapshot, the reads): reads
/// the (small) body, authenticates with it, then calls `operation` with the
/// owner's engine, the request's headers and its query parameters.
async fn without_body<F, Fut>(
    state: Arc<ServerState>,
    operation: &'static str,
    snapshot: String,
    request: Request,
    call: F,
) -> Response
where
    F: FnOnce(Engine, String, HeaderMap, Vec<(String, String)>) -> Fut,
    Fut: std::future::Future<Output = Result<Response, Error>>,
{
    let (parts, body) = request.into_parts();
    let incoming = Incoming {
        operation,
        snapshot: &snapshot,
        parts: &parts,
    };
    reply(
        async {
            let presented = state.present(&parts, auth::EBS_SERVICE)?;
            let body = state
                .read_body(&parts, body, SMALL_BODY, "request body")
                .await?;
            let engine = state.admit(presented, &incoming, Payload::Bytes(&body))?;
            let params = query_params(parts.uri.query())?;
            call(engine, snapshot.clone(), parts.headers.clone(), params).await
        }
        .await,
    )
}

/// The path's parameters, or the ValidationException a malformed path
/// (invalid percent-encoding, say) gets, in the EBS error shape.
fn path_of<T>(path: Result<Path<T>, PathRejection>) -> Result<T, Box<Response>> {
    path.map(|Path(value)| value).map_err(|rejection| {
        Box::new(error_response(&Error::invalid(
            ValidationReason::InvalidParameterValue,
            format!("The request path is malformed: {rejection}."),
        )))
    })
}

async fn unknown_operation(uri: Uri) -> Response {
    error_response(&Error::invalid(
        ValidationReason::InvalidParameterValue,
        format!("No operation matches {}.", uri.path()),
    ))
}

/// Adds the `x-amz-Checksum` headers of a block to `response`.
fn with_checksum(mut response: Response, checksum: &str, algorithm: &str) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(checksum) {
        headers.insert("x-amz-Checksum", value);
    }
    if let Ok(value) = HeaderValue::from_str(algorithm) {
        headers.insert("x-amz-Checksum-Algorithm", value);
    }
    response
}

fn block_index(text: &str) -> Result<i32, Error> {
    text.parse::<i32>().map_err(|_| {
        Error::invalid(
            ValidationReason::InvalidBlock,
            format!("BlockIndex must be an integer, not '{text}'."),
        )
    })
}

/// An optional header's value as owned text.
fn text_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, Error> {
    header(headers, name).map(|value| value.map(str::to_string))
}

/// The paging members of the list operations.
struct Paging {
    next_token: Option<String>,
    max_results: Option<i32>,
    starting_block_index: Option<i32>,
}

fn paging(params: &[(String, String)]) -> Result<Paging, Error> {
    Ok(Paging {
        next_token: param(params, "pageToken").map(str::to_string),
        max_results: integer("maxResults", param(params, "maxResults"))?,
        starting_block_index: integer("startingBlockIndex", param(params, "startingBlockIndex"))?,
    })
}

async fn start_snapshot(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let incoming = Incoming {
        operation: "StartSnapshot",
        snapshot: "",
        parts: &parts,
    };
    reply(
        async {
            let presented = state.present(&parts, auth::EBS_SERVICE)?;
            let body = state
                .read_body(&parts, body, wire::MAX_JSON_BODY, "request body")
                .await?;
            let engine = state.admit(presented, &incoming, Payload::Bytes(&body))?;
            let request = wire::start_snapshot_request(&body)?;
            let response = Ebs::new(&engine).start_snapshot_async(request).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &wire::start_snapshot_response(&response),
            ))
        }
        .await,
    )
}

async fn put_snapshot_block(
    State(state): State<Arc<ServerState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let (snapshot, index) = match path_of(path) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let incoming = Incoming {
        operation: "PutSnapshotBlock",
        snapshot: &snapshot,
        parts: &parts,
    };
    reply(
        async {
            // An unsigned body (as the SDKs send blocks) is authenticated
            // before a byte of it is read; a signed one once it is read,
            // after the checks that need no body.
            let presented = state.present(&parts, auth::EBS_SERVICE)?;
            let unsigned = header(headers, "x-amz-content-sha256")? == Some(auth::UNSIGNED_PAYLOAD);
            let (authenticated, presented) = if unsigned {
                (
                    Some(state.admit(presented, &incoming, Payload::Unsigned)?),
                    None,
                )
            } else {
                (None, Some(presented))
            };
            let data_length = integer("x-amz-Data-Length", header(headers, "x-amz-Data-Length")?)?
                .ok_or_else(|| {
                    Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        "x-amz-Data-Length is required.",
                    )
                })?;
            if data_length != BLOCK_SIZE as i32 {
                return Err(Error::invalid(
                    ValidationReason::InvalidBlock,
                    format!("x-amz-Data-Length is {data_length}; blocks are {BLOCK_SIZE} bytes."),
                ));
            }
            let block_data = state.read_body(&parts, body, BLOCK_SIZE, "block").await?;
            // A signed body is hashed once, off the runtime's threads; the
            // signature check and the put both use that hash.
            let (engine, data_sha256) = match (authenticated, presented) {
                (Some(engine), _) => (engine, None),
                (None, Some(presented)) => {
                    let data = block_data.clone();
                    let sha256 = state
                        .engine
                        .run_blocking(move |_| Ok(codec::sha256(&data)))
                        .await?;
                    let engine = state.admit(presented, &incoming, Payload::Hashed(&sha256))?;
                    (engine, Some(sha256))
                }
                (None, None) => unreachable!("a request is admitted or presented"),
            };
            let request = PutSnapshotBlockRequest {
                snapshot_id: snapshot.clone(),
                block_index: block_index(&index)?,
                data_length,
                progress: integer("x-amz-Progress", header(headers, "x-amz-Progress")?)?,
                checksum: text_header(headers, "x-amz-Checksum")?.unwrap_or_default(),
                checksum_algorithm: text_header(headers, "x-amz-Checksum-Algorithm")?
                    .unwrap_or_default(),
                block_data,
            };
            let ebs = Ebs::new(&engine);
            let response = match data_sha256 {
                Some(sha256) => ebs.put_snapshot_block_hashed_async(request, sha256).await?,
                None => ebs.put_snapshot_block_async(request).await?,
            };
            Ok(with_checksum(
                json_response(StatusCode::CREATED, &json!({})),
                &response.checksum,
                &response.checksum_algorithm,
            ))
        }
        .await,
    )
}

async fn complete_snapshot(
    State(state): State<Arc<ServerState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let snapshot = match path_of(path) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    without_body(
        state,
        "CompleteSnapshot",
        snapshot,
        request,
        |engine, snapshot, headers, _| async move {
            let changed = integer(
                "x-amz-ChangedBlocksCount",
                header(&headers, "x-amz-ChangedBlocksCount")?,
            )?
            .ok_or_else(|| {
                Error::invalid(
                    ValidationReason::InvalidParameterValue,
                    "x-amz-ChangedBlocksCount is required.",
                )
            })?;
            let request = CompleteSnapshotRequest {
                snapshot_id: snapshot.clone(),
                changed_blocks_count: changed,
                checksum: text_header(&headers, "x-amz-Checksum")?,
                checksum_algorithm: text_header(&headers, "x-amz-Checksum-Algorithm")?,
                checksum_aggregation_method: text_header(
                    &headers,
                    "x-amz-Checksum-Aggregation-Method",
                )?,
            };
            let response = Ebs::new(&engine).complete_snapshot_async(request).await?;
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"Status": response.status.as_str()}),
            ))
        },
    )
    .await
}

async fn get_snapshot_block(
    State(state): State<Arc<ServerState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let (snapshot, index) = match path_of(path) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    without_body(
        state,
        "GetSnapshotBlock",
        snapshot,
        request,
        |engine, snapshot, _, params| async move {
            let request = GetSnapshotBlockRequest {
                snapshot_id: snapshot.clone(),
                block_index: block_index(&index)?,
                block_token: param(&params, "blockToken").unwrap_or_default().to_string(),
            };
            let response = Ebs::new(&engine).get_snapshot_block_async(request).await?;
            let mut reply = Response::new(Body::from(response.block_data));
            let headers = reply.headers_mut();
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert("x-amz-Data-Length", HeaderValue::from(response.data_length));
            Ok(with_checksum(
                reply,
                &response.checksum,
                &response.checksum_algorithm,
            ))
        },
    )
    .await
}

async fn list_snapshot_blocks(
    State(state): State<Arc<ServerState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let snapshot = match path_of(path) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    without_body(
        state,
        "ListSnapshotBlocks",
        snapshot,
        request,
        |engine, snapshot, _, params| async move {
            let Paging {
                next_token,
                max_results,
                starting_block_index,
            } = paging(&params)?;
            let request = ListSnapshotBlocksRequest {
                snapshot_id: snapshot.clone(),
                next_token,
                max_results,
                starting_block_index,
            };
            let response = Ebs::new(&engine)
                .list_snapshot_blocks_async(request)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &wire::list_snapshot_blocks_response(&response),
            ))
        },
    )
    .await
}

async fn list_changed_blocks(
    State(state): State<Arc<ServerState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let snapshot = match path_of(path) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    without_body(
        state,
        "ListChangedBlocks",
        snapshot,
        request,
        |engine, snapshot, _, params| async move {
            let Paging {
                next_token,
                max_results,
                starting_block_index,
            } = paging(&params)?;
            let request = ListChangedBlocksRequest {
                first_snapshot_id: param(&params, "firstSnapshotId").map(str::to_string),
                second_snapshot_id: snapshot.clone(),
                next_token,
                max_results,
                starting_block_index,
            };
            let response = Ebs::new(&engine).list_changed_blocks_async(request).await?;
            Ok(json_response(
                StatusCode::OK,
                &wire::list_changed_blocks_response(&response),
            ))
        },
    )
    .await
}

/// A TLS certificate and key from PEM files that can be loaded again
/// while the server runs (`serve`'s SIGHUP): new handshakes use the
/// current pair, sessions already established keep theirs, and a reload
/// that fails leaves the current pair in place.
#[derive(Debug)]
pub struct ReloadableCertificate {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: parking_lot::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCertificate {
    /// Loads the certificate chain at `cert` and the private key at `key`
    /// (they must match).
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<Self> {
        Ok(ReloadableCertificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: parking_lot::RwLock::new(Arc::new(certified_key(cert, key)?)),
        })
    }

    /// Reads both files again and, if they load and match, uses them for
    /// every later handshake.
    pub fn reload(&self) -> std::io::Result<()> {
        let loaded = certified_key(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(loaded);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<rustls::sign::CertifiedKey> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, path: &std::path::Path, error: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} {}: {error}", path.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| invalid("reading the certificate chain", cert, &error))?;
    if chain.is_empty() {
        return Err(invalid(
            "reading the certificate chain",
            cert,
            &"no certificate",
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| invalid("reading the private key", key, &error))?;
    rustls::sign::CertifiedKey::from_der(
        chain,
        private_key,
        &rustls::crypto::ring::default_provider(),
    )
    .map_err(|error| invalid("using the certificate", cert, &error))
}

/// The TLS configuration of `serve`: `certificate`'s current pair for
/// each handshake, with the ring provider (the one crypto provider in the
/// binary), HTTP/1.1 by ALPN.
pub fn tls_config(
    certificate: Arc<ReloadableCertificate>,
) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| std::io::Error::other(format!("configuring TLS: {error}")))?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
