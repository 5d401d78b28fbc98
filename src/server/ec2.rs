//! EC2's Query protocol on the API port (`POST /`): a form-encoded body
//! (`Action=DescribeSnapshots&Version=2016-11-15&SnapshotId.1=...`), SigV4
//! with service `ec2`, XML answers in EC2's namespace and shapes, and
//! EC2's error document. The operations are [`crate::api::ec2`]'s; this
//! module only reads the form and writes the XML (DESIGN.md §14).
//!
//! The XML is written here, not with a crate: responses are a handful of
//! fixed shapes of text elements, and the one rule that matters, escaping
//! text, is [`escape`]. Requests are forms, so no XML is ever parsed.

use super::auth::{Payload, EC2_SERVICE};
use super::{new_request_id, Incoming, ServerState, REQUEST_ID_HEADER};
use crate::api::ec2::{
    ec2_error, timestamp, CopySnapshotRequest, CreateTagsRequest, DeleteTagsRequest,
    DescribeSnapshotsRequest, DescribeSnapshotsResponse, DescribeTagsRequest, DescribeTagsResponse,
    Ec2, Ec2Error, Ec2Result, Filter, NO_VOLUME_ID,
};
use crate::api::{Status, Tag};
use crate::engine::Engine;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use std::collections::BTreeMap;
use std::sync::Arc;

/// EC2's XML namespace for the API version the SDKs speak.
const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
/// Largest form accepted: 1,000 ids or filter values of a few dozen bytes
/// each fit.
const FORM_LIMIT: usize = 64 * 1024;

/// The action a response answered, for the request log and metrics.
#[derive(Clone, Copy, Debug)]
pub(super) struct Action(pub(super) &'static str);

/// The EC2 error code a response carries, for the metrics.
#[derive(Clone, Copy, Debug)]
pub(super) struct ErrorCode(pub(super) &'static str);

/// The actions answered, by name (anything else is `InvalidAction`).
const ACTIONS: [&str; 6] = [
    "DescribeSnapshots",
    "DeleteSnapshot",
    "CopySnapshot",
    "CreateTags",
    "DeleteTags",
    "DescribeTags",
];

/// `POST /`: one EC2 Query request.
pub(super) async fn query(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    let id = new_request_id();
    let (parts, body) = request.into_parts();
    let mut action = Action("Ec2Query");
    let outcome = async {
        let presented = state
            .present(&parts, EC2_SERVICE)
            .map_err(|e| ec2_error(&e))?;
        let body = state
            .read_body(&parts, body, FORM_LIMIT, "request body")
            .await
            .map_err(|e| ec2_error(&e))?;
        let form = Form::parse(&body)?;
        let name = form.required("Action", "MissingAction")?;
        let known = ACTIONS
            .iter()
            .find(|known| **known == name)
            .ok_or_else(|| {
                Ec2Error::client(
                    "InvalidAction",
                    format!("The action {name} is not valid for this web service."),
                )
            })?;
        action = Action(known);
        let incoming = Incoming {
            operation: known,
            snapshot: "",
            parts: &parts,
        };
        let engine = state
            .admit(presented, &incoming, Payload::Bytes(&body))
            .map_err(|e| ec2_error(&e))?;
        let id = id.clone();
        tokio::task::spawn_blocking(move || answer(&engine, known, &form, &id))
            .await
            .map_err(|error| Ec2Error {
                code: "InternalError",
                http_status: 500,
                message: format!("The request failed: {error}"),
            })?
    }
    .await;
    let (status, xml, code) = match outcome {
        Ok(xml) => (StatusCode::OK, xml, None),
        Err(error) => (
            StatusCode::from_u16(error.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error_document(&error, &id),
            Some(ErrorCode(error.code)),
        ),
    };
    let mut response = Response::new(Body::from(xml));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    response.extensions_mut().insert(action);
    if let Some(code) = code {
        response.extensions_mut().insert(code);
    }
    response
}

/// Runs `action` and writes its response document.
fn answer(engine: &Engine, action: &str, form: &Form, id: &str) -> Ec2Result<String> {
    let ec2 = Ec2::new(engine);
    let dry_run = form.boolean("DryRun")?.unwrap_or(false);
    let mut xml = Xml::document(&format!("{action}Response"), id);
    match action {
        "DescribeSnapshots" => {
            let request = DescribeSnapshotsRequest {
                snapshot_ids: form.list("SnapshotId"),
                owner_ids: form.list("Owner"),
                filters: form.filters()?,
                max_results: form.integer("MaxResults")?,
                next_token: form.optional("NextToken").map(str::to_string),
            };
            let response = ec2.describe_snapshots(&request)?;
            dry_run_stops(dry_run)?;
            snapshots_xml(&mut xml, &response);
        }
        "DeleteSnapshot" => {
            let snapshot = form.required("SnapshotId", "MissingParameter")?;
            dry_run_stops(dry_run)?;
            ec2.delete_snapshot(snapshot)?;
            xml.leaf("return", "true");
        }
        "CopySnapshot" => {
            let request = CopySnapshotRequest {
                source_snapshot_id: form
                    .required("SourceSnapshotId", "MissingParameter")?
                    .to_string(),
                source_region: form
                    .required("SourceRegion", "MissingParameter")?
                    .to_string(),
                description: form.optional("Description").map(str::to_string),
                encrypted: form.boolean("Encrypted")?,
                kms_key_id: form.optional("KmsKeyId").map(str::to_string),
                tags: form.snapshot_tags()?,
            };
            dry_run_stops(dry_run)?;
            let copy = ec2.copy_snapshot(&request)?;
            xml.leaf("snapshotId", &copy);
            tags_xml(&mut xml, &request.tags);
        }
        "CreateTags" => {
            let request = CreateTagsRequest {
                resource_ids: form.list("ResourceId"),
                tags: form
                    .tags("Tag")?
                    .into_iter()
                    .map(|(key, value)| Tag {
                        key,
                        value: value.unwrap_or_default(),
                    })
                    .collect(),
            };
            dry_run_stops(dry_run)?;
            ec2.create_tags(&request)?;
            xml.leaf("return", "true");
        }
        "DeleteTags" => {
            let request = DeleteTagsRequest {
                resource_ids: form.list("ResourceId"),
                tags: form.tags("Tag")?,
            };
            dry_run_stops(dry_run)?;
            ec2.delete_tags(&request)?;
            xml.leaf("return", "true");
        }
        "DescribeTags" => {
            let request = DescribeTagsRequest {
                filters: form.filters()?,
                max_results: form.integer("MaxResults")?,
                next_token: form.optional("NextToken").map(str::to_string),
            };
            let response = ec2.describe_tags(&request)?;
            dry_run_stops(dry_run)?;
            tag_descriptions_xml(&mut xml, &response);
        }
        other => {
            return Err(Ec2Error::client(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ))
        }
    }
    Ok(xml.finish())
}

/// EC2's answer to a request with `DryRun=true` that would have succeeded.
fn dry_run_stops(dry_run: bool) -> Ec2Result<()> {
    if dry_run {
        return Err(Ec2Error {
            code: "DryRunOperation",
            http_status: 412,
            message: "Request would have succeeded, but DryRun flag is set.".into(),
        });
    }
    Ok(())
}

fn snapshots_xml(xml: &mut Xml, response: &DescribeSnapshotsResponse) {
    xml.open("snapshotSet");
    for snapshot in &response.snapshots {
        xml.open("item");
        xml.leaf("snapshotId", &snapshot.snapshot_id);
        xml.leaf("volumeId", NO_VOLUME_ID);
        xml.leaf(
            "status",
            match snapshot.state {
                Status::Pending => "pending",
                Status::Completed => "completed",
                Status::Error => "error",
            },
        );
        if let Some(message) = &snapshot.state_message {
            xml.leaf("statusMessage", message);
        }
        xml.leaf("startTime", &timestamp(snapshot.start_millis));
        if let Some(completed) = snapshot.completion_millis {
            xml.leaf("completionTime", &timestamp(completed));
        }
        xml.leaf("progress", snapshot.progress);
        xml.leaf("ownerId", &snapshot.owner_id);
        xml.leaf("volumeSize", &snapshot.volume_size.to_string());
        xml.leaf("description", snapshot.description.as_deref().unwrap_or(""));
        xml.leaf(
            "encrypted",
            if snapshot.encrypted { "true" } else { "false" },
        );
        if let Some(key) = &snapshot.kms_key_id {
            xml.leaf("kmsKeyId", key);
        }
        xml.leaf("storageTier", "standard");
        tags_xml(xml, &snapshot.tags);
        xml.close("item");
    }
    xml.close("snapshotSet");
    if let Some(token) = &response.next_token {
        xml.leaf("nextToken", token);
    }
}

fn tags_xml(xml: &mut Xml, tags: &[Tag]) {
    if tags.is_empty() {
        return;
    }
    xml.open("tagSet");
    for tag in tags {
        xml.open("item");
        xml.leaf("key", &tag.key);
        xml.leaf("value", &tag.value);
        xml.close("item");
    }
    xml.close("tagSet");
}

fn tag_descriptions_xml(xml: &mut Xml, response: &DescribeTagsResponse) {
    xml.open("tagSet");
    for tag in &response.tags {
        xml.open("item");
        xml.leaf("resourceId", &tag.resource_id);
        xml.leaf("resourceType", "snapshot");
        xml.leaf("key", &tag.key);
        xml.leaf("value", &tag.value);
        xml.close("item");
    }
    xml.close("tagSet");
    if let Some(token) = &response.next_token {
        xml.leaf("nextToken", token);
    }
}

/// EC2's error document.
fn error_document(error: &Ec2Error, id: &str) -> String {
    let mut xml =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>");
    xml.push_str(&escape(error.code));
    xml.push_str("</Code><Message>");
    xml.push_str(&escape(&error.message));
    xml.push_str("</Message></Error></Errors><RequestID>");
    xml.push_str(&escape(id));
    xml.push_str("</RequestID></Response>");
    xml
}

/// Text made safe for an XML element: the five characters XML reserves
/// become references, and characters XML 1.0 cannot carry at all (control
/// characters other than tab, newline and carriage return) become `?`.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\t' | '\n' | '\r' => escaped.push(character),
            control if control.is_control() => escaped.push('?'),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A response document under construction.
struct Xml {
    text: String,
    root: String,
}

impl Xml {
    /// `<?xml ...?><ROOT xmlns="..."><requestId>ID</requestId>`.
    fn document(root: &str, id: &str) -> Xml {
        let mut xml = Xml {
            text: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} xmlns=\"{NAMESPACE}\">"
            ),
            root: root.to_string(),
        };
        xml.leaf("requestId", id);
        xml
    }

    fn open(&mut self, name: &str) {
        self.text.push('<');
        self.text.push_str(name);
        self.text.push('>');
    }

    fn close(&mut self, name: &str) {
        self.text.push_str("</");
        self.text.push_str(name);
        self.text.push('>');
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.open(name);
        self.text.push_str(&escape(text));
        self.close(name);
    }

    fn finish(mut self) -> String {
        let root = std::mem::take(&mut self.root);
        self.close(&root);
        self.text
    }
}

/// A Query request's form: names to values, lists flattened as EC2 does
/// (`SnapshotId.1`, `Filter.2.Value.3`).
pub(crate) struct Form {
    values: BTreeMap<String, String>,
}

impl Form {
    /// Decodes an `application/x-www-form-urlencoded` body. A name given
    /// twice is an error (which value would count is not clear).
    pub(crate) fn parse(body: &[u8]) -> Ec2Result<Form> {
        let mut values = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(body) {
            if values
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(Ec2Error::client(
                    "InvalidParameterValue",
                    format!("The parameter {name} is given more than once"),
                ));
            }
        }
        Ok(Form { values })
    }

    fn optional(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn required(&self, name: &str, code: &'static str) -> Ec2Result<&str> {
        self.optional(name).ok_or_else(|| {
            Ec2Error::client(
                code,
                format!("The request must contain the parameter {name}"),
            )
        })
    }

    fn integer(&self, name: &str) -> Ec2Result<Option<i64>> {
        self.optional(name)
            .map(|text| {
                text.parse::<i64>().map_err(|_| {
                    Ec2Error::client(
                        "InvalidParameterValue",
                        format!(
                            "Value ({text}) for parameter {name} is invalid. Expecting an integer."
                        ),
                    )
                })
            })
            .transpose()
    }

    fn boolean(&self, name: &str) -> Ec2Result<Option<bool>> {
        self.optional(name)
            .map(|text| match text {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(Ec2Error::client(
                    "InvalidParameterValue",
                    format!(
                        "Value ({text}) for parameter {name} is invalid. Expecting true or false."
                    ),
                )),
            })
            .transpose()
    }

    /// The members `PREFIX.1`, `PREFIX.2`, ... in member order (numbers
    /// need not be contiguous; names under them, like `PREFIX.1.Name`, are
    /// not members).
    fn members(&self, prefix: &str) -> Vec<(u32, &str)> {
        let dotted = format!("{prefix}.");
        let mut members: Vec<(u32, &str)> = self
            .values
            .range(dotted.clone()..)
            .take_while(|(name, _)| name.starts_with(&dotted))
            .filter_map(|(name, value)| {
                let number = name.get(dotted.len()..)?.parse::<u32>().ok()?;
                Some((number, value.as_str()))
            })
            .collect();
        members.sort_unstable_by_key(|(number, _)| *number);
        members
    }

    /// The numbers `N` that some `PREFIX.N.…` name uses, in order.
    fn structures(&self, prefix: &str) -> Vec<u32> {
        let dotted = format!("{prefix}.");
        let mut numbers: Vec<u32> = self
            .values
            .range(dotted.clone()..)
            .take_while(|(name, _)| name.starts_with(&dotted))
            .filter_map(|(name, _)| {
                let rest = name.get(dotted.len()..)?;
                let (number, _) = rest.split_once('.')?;
                number.parse::<u32>().ok()
            })
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    fn list(&self, prefix: &str) -> Vec<String> {
        self.members(prefix)
            .into_iter()
            .map(|(_, value)| value.to_string())
            .collect()
    }

    /// `Filter.N.Name` with its `Filter.N.Value.M`.
    fn filters(&self) -> Ec2Result<Vec<Filter>> {
        self.structures("Filter")
            .into_iter()
            .map(|number| {
                let name = self.required(&format!("Filter.{number}.Name"), "MissingParameter")?;
                Ok(Filter {
                    name: name.to_string(),
                    values: self.list(&format!("Filter.{number}.Value")),
                })
            })
            .collect()
    }

    /// The tags of `TagSpecification.N` whose resource type is `snapshot`.
    fn snapshot_tags(&self) -> Ec2Result<Vec<Tag>> {
        let mut tags = Vec::new();
        for number in self.structures("TagSpecification") {
            let resource = self.optional(&format!("TagSpecification.{number}.ResourceType"));
            if resource.is_some_and(|resource| resource != "snapshot") {
                return Err(Ec2Error::client(
                    "InvalidParameterValue",
                    format!(
                        "'{}' is not a valid taggable resource type for this operation.",
                        resource.unwrap_or_default()
                    ),
                ));
            }
            for (key, value) in self.tags(&format!("TagSpecification.{number}.Tag"))? {
                tags.push(Tag {
                    key,
                    value: value.unwrap_or_default(),
                });
            }
        }
        Ok(tags)
    }

    /// `PREFIX.N.Key` with its `PREFIX.N.Value`, which may be absent.
    fn tags(&self, prefix: &str) -> Ec2Result<Vec<(String, Option<String>)>> {
        self.structures(prefix)
            .into_iter()
            .map(|tag| {
                let key = self.required(&format!("{prefix}.{tag}.Key"), "MissingParameter")?;
                let value = self.optional(&format!("{prefix}.{tag}.Value"));
                Ok((key.to_string(), value.map(str::to_string)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_flatten_lists_and_structures_as_ec2_does() {
        let form = Form::parse(
            b"Action=DescribeSnapshots&SnapshotId.2=snap-b&SnapshotId.1=snap-a&SnapshotId.10=snap-c\
              &Filter.1.Name=tag%3AName&Filter.1.Value.1=web+1&Filter.1.Value.2=db*\
              &Filter.2.Name=status&Filter.2.Value.1=completed",
        )
        .expect("parses");
        assert_eq!(form.list("SnapshotId"), ["snap-a", "snap-b", "snap-c"]);
        assert_eq!(
            form.filters().expect("filters"),
            [
                Filter {
                    name: "tag:Name".into(),
                    values: vec!["web 1".into(), "db*".into()],
                },
                Filter {
                    name: "status".into(),
                    values: vec!["completed".into()],
                },
            ]
        );
        assert!(Form::parse(b"A=1&A=2").is_err(), "a name twice");
        let missing_name = Form::parse(b"Filter.1.Value.1=x").expect("parses");
        assert_eq!(
            missing_name.filters().map_err(|error| error.code),
            Err("MissingParameter")
        );
    }

    #[test]
    fn text_is_escaped_and_documents_are_well_formed() {
        assert_eq!(
            escape("a<b>&\"c'\u{1}\n"),
            "a&lt;b&gt;&amp;&quot;c&apos;?\n"
        );
        let mut xml = Xml::document("DeleteSnapshotResponse", "id-1");
        xml.leaf("return", "true");
        assert_eq!(
            xml.finish(),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteSnapshotResponse xmlns=\"{NAMESPACE}\"><requestId>id-1</requestId><return>true</return></DeleteSnapshotResponse>")
        );
    }
}
