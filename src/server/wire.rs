//! The EBS rest-json wire format: request members from paths, query strings,
//! headers and JSON bodies; responses and errors as the service model
//! serializes them (DESIGN.md §15).

use crate::api::{
    ebs_error, ListChangedBlocksResponse, ListSnapshotBlocksResponse, StartSnapshotRequest,
    StartSnapshotResponse, Tag,
};
use crate::error::{Error, ValidationReason};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest StartSnapshot body: 50 tags of 127 + 255 characters (4 bytes
/// each at most) and the other members fit well within it.
pub const MAX_JSON_BODY: usize = 256 << 10;

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid(ValidationReason::InvalidParameterValue, message)
}

/// A timestamp as the model serializes it: epoch seconds, fractions allowed.
pub fn epoch_seconds(time: SystemTime) -> Value {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    json!((since.as_millis() as f64) / 1000.0)
}

/// The query parameters, percent-decoded only: `+` stays `+` (tokens are
/// Base64). A parameter given twice is a validation error.
pub fn query_params(query: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| invalid(format!("The query parameter '{name}' is not UTF-8.")))
        };
        let (name, value) = (decode(name)?, decode(value)?);
        if params.iter().any(|(seen, _)| *seen == name) {
            return Err(invalid(format!(
                "The query parameter '{name}' is repeated."
            )));
        }
        params.push((name, value));
    }
    Ok(params)
}

/// A query parameter's value.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// An integer query parameter or header.
pub fn integer(name: &str, value: Option<&str>) -> Result<Option<i32>, Error> {
    value
        .map(|text| {
            text.trim()
                .parse::<i32>()
                .map_err(|_| invalid(format!("{name} must be an integer, not '{text}'.")))
        })
        .transpose()
}

/// A header's value as text (header names are case-insensitive).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Error> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| invalid(format!("The header {name} is not visible ASCII.")))
        })
        .transpose()
}

fn string_member(object: &Map<String, Value>, name: &str) -> Result<Option<String>, Error> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(invalid(format!("{name} must be a string."))),
    }
}

fn integer_member(object: &Map<String, Value>, name: &str) -> Result<Option<i64>, Error> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(format!("{name} must be an integer."))),
        Some(_) => Err(invalid(format!("{name} must be an integer."))),
    }
}

/// StartSnapshot's JSON body. Unknown members are ignored and `null`
/// counts as absent, as the SDKs do.
pub fn start_snapshot_request(body: &[u8]) -> Result<StartSnapshotRequest, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| invalid(format!("The request body is not JSON: {error}.")))?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid("The request body must be a JSON object."))?;
    let volume_size =
        integer_member(object, "VolumeSize")?.ok_or_else(|| invalid("VolumeSize is required."))?;
    let tags = match object.get("Tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .map(|tag| {
                let tag = tag
                    .as_object()
                    .ok_or_else(|| invalid("Each tag must be an object."))?;
                Ok(Tag {
                    key: string_member(tag, "Key")?.unwrap_or_default(),
                    value: string_member(tag, "Value")?.unwrap_or_default(),
                })
            })
            .collect::<Result<_, Error>>()?,
        Some(_) => return Err(invalid("Tags must be a list.")),
    };
    let encrypted = match object.get("Encrypted") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(flag)) => Some(*flag),
        Some(_) => return Err(invalid("Encrypted must be a boolean.")),
    };
    let timeout = integer_member(object, "Timeout")?
        .map(|minutes| i32::try_from(minutes).map_err(|_| invalid("Timeout is out of range.")))
        .transpose()?;
    Ok(StartSnapshotRequest {
        volume_size,
        parent_snapshot_id: string_member(object, "ParentSnapshotId")?,
        tags,
        description: string_member(object, "Description")?,
        client_token: string_member(object, "ClientToken")?,
        encrypted,
        kms_key_arn: string_member(object, "KmsKeyArn")?,
        timeout,
    })
}

/// Puts `value` in `object` unless it is absent.
fn put_optional(object: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    if let Some(value) = value {
        object.insert(name.to_string(), value);
    }
}

/// StartSnapshot's response body.
pub fn start_snapshot_response(response: &StartSnapshotResponse) -> Value {
    let mut object = Map::new();
    object.insert("SnapshotId".into(), json!(response.snapshot_id));
    object.insert("OwnerId".into(), json!(response.owner_id));
    object.insert("Status".into(), json!(response.status.as_str()));
    object.insert("StartTime".into(), epoch_seconds(response.start_time));
    object.insert("VolumeSize".into(), json!(response.volume_size));
    object.insert("BlockSize".into(), json!(response.block_size));
    object.insert(
        "Tags".into(),
        Value::Array(
            response
                .tags
                .iter()
                .map(|tag| json!({"Key": tag.key, "Value": tag.value}))
                .collect(),
        ),
    );
    put_optional(
        &mut object,
        "Description",
        response.description.as_ref().map(|text| json!(text)),
    );
    put_optional(
        &mut object,
        "ParentSnapshotId",
        response.parent_snapshot_id.as_ref().map(|id| json!(id)),
    );
    put_optional(
        &mut object,
        "KmsKeyArn",
        response.kms_key_arn.as_ref().map(|arn| json!(arn)),
    );
    object.insert("SseType".into(), json!(response.sse_type.as_str()));
    Value::Object(object)
}

/// A listing's body: its entries under `entries_name`, then the members
/// both list operations share.
fn listing_response(
    entries_name: &str,
    entries: Vec<Value>,
    expiry_time: Option<SystemTime>,
    volume_size: i64,
    block_size: i32,
    next_token: Option<&String>,
) -> Value {
    let mut object = Map::new();
    object.insert(entries_name.into(), Value::Array(entries));
    put_optional(&mut object, "ExpiryTime", expiry_time.map(epoch_seconds));
    object.insert("VolumeSize".into(), json!(volume_size));
    object.insert("BlockSize".into(), json!(block_size));
    put_optional(
        &mut object,
        "NextToken",
        next_token.map(|token| json!(token)),
    );
    Value::Object(object)
}

/// ListSnapshotBlocks' response body.
pub fn list_snapshot_blocks_response(response: &ListSnapshotBlocksResponse) -> Value {
    let entries = response
        .blocks
        .iter()
        .map(|block| json!({"BlockIndex": block.block_index, "BlockToken": block.block_token}))
        .collect();
    listing_response(
        "Blocks",
        entries,
        response.expiry_time,
        response.volume_size,
        response.block_size,
        response.next_token.as_ref(),
    )
}

/// ListChangedBlocks' response body.
pub fn list_changed_blocks_response(response: &ListChangedBlocksResponse) -> Value {
    let entries = response
        .changed_blocks
        .iter()
        .map(|block| {
            let mut entry = Map::new();
            entry.insert("BlockIndex".into(), json!(block.block_index));
            put_optional(
                &mut entry,
                "FirstBlockToken",
                block.first_block_token.as_ref().map(|token| json!(token)),
            );
            put_optional(
                &mut entry,
                "SecondBlockToken",
                block.second_block_token.as_ref().map(|token| json!(token)),
            );
            Value::Object(entry)
        })
        .collect();
    listing_response(
        "ChangedBlocks",
        entries,
        response.expiry_time,
        response.volume_size,
        response.block_size,
        response.next_token.as_ref(),
    )
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error as the model serializes it: the shape's status, the
/// `x-amzn-ErrorType` header, and `Message` and `Reason` in the body.
pub fn error_response(error: &Error) -> Response {
    let ebs = ebs_error(error);
    let mut body = Map::new();
    body.insert("Message".into(), json!(ebs.message));
    if let Some(reason) = ebs.reason {
        body.insert("Reason".into(), json!(reason));
    }
    let status = StatusCode::from_u16(ebs.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &Value::Object(body));
    response
        .headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(ebs.code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_percent_decoded_only() {
        let params = query_params(Some("pageToken=AA%2B%2F%3D+x&maxResults=100")).expect("parse");
        assert_eq!(param(&params, "pageToken"), Some("AA+/=+x"));
        assert_eq!(param(&params, "maxResults"), Some("100"));
        assert!(query_params(Some("a=1&a=2")).is_err());
    }

    #[test]
    fn start_snapshot_body_types_are_checked() {
        let request = start_snapshot_request(
            br#"{"VolumeSize": 2, "Tags": [{"Key": "k", "Value": "v"}], "Encrypted": null, "Extra": 1}"#,
        )
        .expect("parse");
        assert_eq!(request.volume_size, 2);
        assert_eq!(request.tags.len(), 1);
        assert_eq!(request.encrypted, None);
        for bad in [
            &br#"{}"#[..],
            br#"{"VolumeSize": "1"}"#,
            br#"{"VolumeSize": 1, "Tags": {}}"#,
            br#"{"VolumeSize": 1, "Encrypted": "yes"}"#,
            br#"[1]"#,
            br#"{"VolumeSize": 1"#,
        ] {
            assert!(
                start_snapshot_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
