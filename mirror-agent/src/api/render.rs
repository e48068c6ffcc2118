//! Response envelopes of the RPC-style APIs: Alibaba Cloud's flat JSON or XML, and
//! Volcengine's `ResponseMetadata`/`Result` JSON (docs/api.md, "Envelopes").
//!
//! The clouds put `RequestId` (and `ResponseMetadata`) first: serde_json's `preserve_order`
//! keeps members in the order they are inserted, here and in every answer body.

use serde_json::{Map, Value, json};

use super::ApiError;
use super::rpc::Params;

/// The Volcengine API version; a `Version` starting with it selects Volcengine's envelope.
pub const VOLCENGINE_VERSION: &str = "2020-04-01";
/// `HostId` of Alibaba error answers.
pub const HOST_ID: &str = "mirror-agent";
/// `Service` of Volcengine answers.
pub const VOLCENGINE_SERVICE: &str = "vpc";

pub const JSON: &str = "application/json";
pub const XML: &str = "application/xml";

const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    Alibaba {
        xml: bool,
    },
    /// `version` is the request's `Version`, echoed in `ResponseMetadata`.
    Volcengine {
        version: String,
    },
}

/// `Version=2020-04-01…` selects Volcengine; otherwise Alibaba, in XML when `Format=XML` (any
/// case). Volcengine answers only in JSON, whatever `Format` says.
pub fn envelope(p: &Params) -> Envelope {
    match p.get("Version") {
        Some(v) if v.starts_with(VOLCENGINE_VERSION) => Envelope::Volcengine {
            version: v.to_owned(),
        },
        _ => Envelope::Alibaba {
            xml: p
                .get("Format")
                .is_some_and(|f| f.eq_ignore_ascii_case("XML")),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// A success answer, HTTP 200. `body` is a JSON object of the action's answer fields (null or
/// an empty object for actions that answer only `RequestId`; anything that is not an object
/// is treated as no fields). Null members are left out everywhere, and a `RequestId` member
/// in `body` is ignored in favour of `request_id`.
pub fn render_ok(
    env: &Envelope,
    action: &str,
    request_id: &str,
    region: &str,
    body: &Value,
) -> Rendered {
    let fields: Vec<(&str, &Value)> = match body {
        Value::Object(members) => members
            .iter()
            .filter(|(k, v)| k.as_str() != "RequestId" && !v.is_null())
            .map(|(k, v)| (k.as_str(), v))
            .collect(),
        _ => Vec::new(),
    };
    match env {
        Envelope::Alibaba { xml: true } => {
            let mut out = String::from(XML_DECLARATION);
            let root = format!("{}Response", xml_name(action));
            open(&mut out, &root);
            text_element(&mut out, "RequestId", request_id);
            for (k, v) in &fields {
                xml_element(&mut out, k, v);
            }
            close(&mut out, &root);
            Rendered {
                status: 200,
                content_type: XML,
                body: out,
            }
        }
        Envelope::Alibaba { xml: false } => Rendered {
            status: 200,
            content_type: JSON,
            body: with_request_id(request_id, &fields).to_string(),
        },
        Envelope::Volcengine { version } => {
            let metadata = metadata(request_id, action, version, region);
            let result = with_request_id(request_id, &fields);
            Rendered {
                status: 200,
                content_type: JSON,
                body: json!({"ResponseMetadata": metadata, "Result": result}).to_string(),
            }
        }
    }
}

/// An error answer with the error's HTTP status.
pub fn render_err(
    env: &Envelope,
    action: &str,
    request_id: &str,
    region: &str,
    err: &ApiError,
) -> Rendered {
    let (content_type, body) = match env {
        Envelope::Alibaba { xml: true } => {
            let mut out = String::from(XML_DECLARATION);
            open(&mut out, "Error");
            text_element(&mut out, "RequestId", request_id);
            text_element(&mut out, "HostId", HOST_ID);
            text_element(&mut out, "Code", &err.code);
            text_element(&mut out, "Message", &err.message);
            close(&mut out, "Error");
            (XML, out)
        }
        Envelope::Alibaba { xml: false } => (
            JSON,
            json!({
                "RequestId": request_id,
                "HostId": HOST_ID,
                "Code": err.code,
                "Message": err.message,
            })
            .to_string(),
        ),
        Envelope::Volcengine { version } => {
            let mut metadata = metadata(request_id, action, version, region);
            metadata.insert(
                "Error".into(),
                json!({"Code": err.code, "Message": err.message}),
            );
            (JSON, json!({ "ResponseMetadata": metadata }).to_string())
        }
    };
    Rendered {
        status: err.status,
        content_type,
        body,
    }
}

fn metadata(request_id: &str, action: &str, version: &str, region: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("RequestId".into(), request_id.into());
    m.insert("Action".into(), action.into());
    m.insert("Version".into(), version.into());
    m.insert("Service".into(), VOLCENGINE_SERVICE.into());
    m.insert("Region".into(), region.into());
    m
}

fn with_request_id(request_id: &str, fields: &[(&str, &Value)]) -> Value {
    let mut members = Map::new();
    members.insert("RequestId".into(), request_id.into());
    members.extend(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), without_nulls(v))),
    );
    Value::Object(members)
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Arrays become a wrapper named `name` with one child per item, named by dropping the
/// wrapper's trailing "s"; objects become nested elements; nulls are left out.
fn xml_element(out: &mut String, name: &str, v: &Value) {
    match v {
        Value::Null => {}
        Value::Bool(b) => text_element(out, name, if *b { "true" } else { "false" }),
        Value::Number(n) => text_element(out, name, &n.to_string()),
        Value::String(s) => text_element(out, name, s),
        Value::Array(items) => {
            let child = singular(name);
            open(out, name);
            for item in items {
                xml_element(out, child, item);
            }
            close(out, name);
        }
        Value::Object(members) => {
            open(out, name);
            for (k, v) in members {
                xml_element(out, k, v);
            }
            close(out, name);
        }
    }
}

fn singular(name: &str) -> &str {
    match name.strip_suffix('s') {
        Some(stem) if !stem.is_empty() => stem,
        _ => name,
    }
}

fn text_element(out: &mut String, name: &str, text: &str) {
    open(out, name);
    escape_into(out, text);
    close(out, name);
}

fn open(out: &mut String, name: &str) {
    out.push('<');
    out.push_str(&xml_name(name));
    out.push('>');
}

fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(&xml_name(name));
    out.push('>');
}

/// Names come from the code's answer fields, but one odd key must not make the whole
/// document unparsable: characters outside `[A-Za-z0-9_.-]` become '_', and a name that
/// cannot start an element gets a leading '_'.
fn xml_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// Characters XML 1.0 cannot carry at all (most C0 controls, U+FFFE, U+FFFF) become U+FFFD
/// so that user-supplied text cannot break the document.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(query: &str) -> Params {
        Params::parse(Some(query), None, b"").unwrap()
    }

    fn parse(r: &Rendered) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    /// The seeds print XML with a line per element.
    fn squeeze(xml: &str) -> String {
        xml.lines().map(str::trim).collect()
    }

    const ALIBABA_JSON: Envelope = Envelope::Alibaba { xml: false };
    const ALIBABA_XML: Envelope = Envelope::Alibaba { xml: true };

    fn volc() -> Envelope {
        Envelope::Volcengine {
            version: "2020-04-01".into(),
        }
    }

    #[test]
    fn choosing_the_envelope() {
        assert_eq!(envelope(&params("Action=X")), ALIBABA_JSON);
        assert_eq!(envelope(&params("Action=X&Format=XML")), ALIBABA_XML);
        assert_eq!(envelope(&params("Action=X&Format=xml")), ALIBABA_XML);
        assert_eq!(envelope(&params("Action=X&Format=JSON")), ALIBABA_JSON);
        assert_eq!(
            envelope(&params("Action=X&Version=2016-04-28")),
            ALIBABA_JSON
        );
        assert_eq!(envelope(&params("Action=X&Version=2020-04-01")), volc());
        assert_eq!(
            envelope(&params("Action=X&Version=2020-04-01&Format=XML")),
            volc()
        );
        assert_eq!(
            envelope(&params("Version=2020-04-01-beta")),
            Envelope::Volcengine {
                version: "2020-04-01-beta".into()
            }
        );
    }

    #[test]
    fn seed_000_alibaba_json() {
        let r = render_ok(
            &ALIBABA_JSON,
            "AddSourcesToTrafficMirrorSession",
            "87F70089-5B38-41A8-BAD8-0B55E2F8DC57",
            "cn-hongkong",
            &Value::Null,
        );
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let seed = r#"{
"RequestId" : "87F70089-5B38-41A8-BAD8-0B55E2F8DC57"
}"#;
        assert_eq!(parse(&r), serde_json::from_str::<Value>(seed).unwrap());
        assert_eq!(
            render_ok(
                &ALIBABA_JSON,
                "A",
                "87F70089-5B38-41A8-BAD8-0B55E2F8DC57",
                "r",
                &json!({})
            )
            .body,
            r.body
        );
    }

    #[test]
    fn seed_000_alibaba_xml() {
        let r = render_ok(
            &ALIBABA_XML,
            "AddSourcesToTrafficMirrorSession",
            "87F70089-5B38-41A8-BAD8-0B55E2F8DC57",
            "cn-hongkong",
            &Value::Null,
        );
        assert_eq!((r.status, r.content_type), (200, "application/xml"));
        let seed = "<AddSourcesToTrafficMirrorSessionResponse>
<RequestId>87F70089-5B38-41A8-BAD8-0B55E2F8DC57</RequestId>
</AddSourcesToTrafficMirrorSessionResponse>";
        let body = r.body.strip_prefix(XML_DECLARATION).unwrap();
        assert_eq!(body, squeeze(seed));
    }

    #[test]
    fn seed_002_alibaba_xml() {
        let r = render_ok(
            &ALIBABA_XML,
            "DeleteTrafficMirrorSession",
            "0ED8D006-F706-4D23-88ED-E11ED28DCAC0",
            "cn-hongkong",
            &json!({}),
        );
        let seed = "<DeleteTrafficMirrorSessionResponse>
<RequestId>0ED8D006-F706-4D23-88ED-E11ED28DCAC0</RequestId>
</DeleteTrafficMirrorSessionResponse>";
        assert_eq!(r.body, format!("{XML_DECLARATION}{}", squeeze(seed)));
    }

    #[test]
    fn seed_001_volcengine() {
        let r = render_ok(
            &volc(),
            "CreateTrafficMirrorSession",
            "2021062415303301022514515207C4****",
            "cn-beijing",
            &json!({"TrafficMirrorSessionId": "tms-j6cmls82xnc86vtpe****"}),
        );
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let seed = r#"{ "ResponseMetadata": { "RequestId": "2021062415303301022514515207C4****", "Action": "CreateTrafficMirrorSession", "Version": "2020-04-01", "Service": "vpc", "Region": "cn-beijing" }, "Result": { "RequestId": "2021062415303301022514515207C4****", "TrafficMirrorSessionId": "tms-j6cmls82xnc86vtpe****" } }"#;
        assert_eq!(parse(&r), serde_json::from_str::<Value>(seed).unwrap());
        // Same member order as the seed, not just the same members.
        let compact: String = seed.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(r.body, compact);
    }

    #[test]
    fn seed_004_volcengine() {
        let r = render_ok(
            &volc(),
            "CreateFlowLog",
            "2021062415303301022514515207C4****",
            "cn-beijing",
            &json!({"FlowLogId": "2021062415303301022514515207C4****"}),
        );
        let seed = r#"{ "ResponseMetadata": { "RequestId": "2021062415303301022514515207C4****", "Action": "CreateFlowLog", "Version": "2020-04-01", "Service": "vpc", "Region": "cn-beijing" }, "Result": { "RequestId": "2021062415303301022514515207C4****", "FlowLogId": "2021062415303301022514515207C4****" } }"#;
        assert_eq!(parse(&r), serde_json::from_str::<Value>(seed).unwrap());
    }

    #[test]
    fn alibaba_json_fields_request_id_first_nulls_dropped() {
        let body = json!({
            "TrafficMirrorSessions": [{"TrafficMirrorSessionId": "tms-1", "PacketLength": null, "Tags": []}],
            "TotalCount": 1,
            "NextToken": null,
            "Enabled": true,
            "RequestId": "ignored",
        });
        let r = render_ok(
            &ALIBABA_JSON,
            "ListTrafficMirrorSessions",
            "rid",
            "r",
            &body,
        );
        assert!(r.body.starts_with(r#"{"RequestId":"rid","#), "{}", r.body);
        assert_eq!(
            parse(&r),
            json!({
                "RequestId": "rid",
                "TrafficMirrorSessions": [{"TrafficMirrorSessionId": "tms-1", "Tags": []}],
                "TotalCount": 1,
                "Enabled": true,
            })
        );
    }

    #[test]
    fn xml_arrays_objects_and_scalars() {
        let body = json!({
            "TrafficMirrorSessions": [{
                "TrafficMirrorSessionId": "tms-1",
                "TrafficMirrorSourceIds": ["eni-a", "eni-b"],
                "Tags": [{"Key": "k", "Value": "v"}],
                "PacketLength": null,
                "Enabled": true,
                "Priority": 1,
            }],
            "IngressRules": [{"InstanceId": "tmr-1"}],
            "TotalCount": 1,
            "NextToken": null,
            "Empty": [],
        });
        let r = render_ok(&ALIBABA_XML, "ListTrafficMirrorSessions", "rid", "r", &body);
        // Elements in the order the answer's members were written (as the clouds' models
        // order them), nulls left out.
        let want = "<ListTrafficMirrorSessionsResponse>\
            <RequestId>rid</RequestId>\
            <TrafficMirrorSessions><TrafficMirrorSession>\
            <TrafficMirrorSessionId>tms-1</TrafficMirrorSessionId>\
            <TrafficMirrorSourceIds><TrafficMirrorSourceId>eni-a</TrafficMirrorSourceId><TrafficMirrorSourceId>eni-b</TrafficMirrorSourceId></TrafficMirrorSourceIds>\
            <Tags><Tag><Key>k</Key><Value>v</Value></Tag></Tags>\
            <Enabled>true</Enabled>\
            <Priority>1</Priority>\
            </TrafficMirrorSession></TrafficMirrorSessions>\
            <IngressRules><IngressRule><InstanceId>tmr-1</InstanceId></IngressRule></IngressRules>\
            <TotalCount>1</TotalCount>\
            <Empty></Empty>\
            </ListTrafficMirrorSessionsResponse>";
        assert_eq!(r.body, format!("{XML_DECLARATION}{want}"));
    }

    #[test]
    fn xml_escaping() {
        let body = json!({"Description": "a<b>&\"c\"'d'\u{1}\tz"});
        let r = render_ok(&ALIBABA_XML, "X", "r&<1>", "r", &body);
        assert!(
            r.body.contains("<RequestId>r&amp;&lt;1&gt;</RequestId>"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains(
                "<Description>a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;\u{FFFD}\tz</Description>"
            ),
            "{}",
            r.body
        );
        let err = ApiError::bad("InvalidName.Malformed", "The name <x> & \"y\" is bad.");
        let r = render_err(&ALIBABA_XML, "X", "rid", "r", &err);
        assert!(
            r.body
                .contains("<Message>The name &lt;x&gt; &amp; &quot;y&quot; is bad.</Message>")
        );
        // Odd names cannot break the document either.
        let r = render_ok(&ALIBABA_XML, "Bad Action", "rid", "r", &json!({"1 x": "v"}));
        assert!(r.body.contains("<Bad_ActionResponse>"), "{}", r.body);
        assert!(r.body.contains("<_1_x>v</_1_x>"), "{}", r.body);
    }

    #[test]
    fn json_escaping() {
        let body = json!({"Description": "quote \" backslash \\ newline \n"});
        let r = render_ok(&ALIBABA_JSON, "X", "r\"1", "r", &body);
        assert_eq!(
            parse(&r),
            json!({"RequestId": "r\"1", "Description": "quote \" backslash \\ newline \n"})
        );
    }

    #[test]
    fn alibaba_errors() {
        let err = ApiError::bad(
            "ResourceNotFound.TrafficMirrorSession",
            "The specified resource of traffic mirror session is not found.",
        );
        let r = render_err(
            &ALIBABA_JSON,
            "DeleteTrafficMirrorSession",
            "rid",
            "r",
            &err,
        );
        assert_eq!((r.status, r.content_type), (400, "application/json"));
        assert_eq!(
            r.body,
            r#"{"RequestId":"rid","HostId":"mirror-agent","Code":"ResourceNotFound.TrafficMirrorSession","Message":"The specified resource of traffic mirror session is not found."}"#
        );

        let r = render_err(&ALIBABA_XML, "DeleteTrafficMirrorSession", "rid", "r", &err);
        assert_eq!((r.status, r.content_type), (400, "application/xml"));
        assert_eq!(
            r.body,
            format!(
                "{XML_DECLARATION}<Error><RequestId>rid</RequestId><HostId>mirror-agent</HostId><Code>ResourceNotFound.TrafficMirrorSession</Code><Message>The specified resource of traffic mirror session is not found.</Message></Error>"
            )
        );
    }

    #[test]
    fn volcengine_errors() {
        let err = ApiError::new(
            412,
            "IdempotentProcessing",
            "The request uses the same client token as a previous one that is still in process.",
        );
        let r = render_err(
            &volc(),
            "CreateTrafficMirrorSession",
            "rid",
            "cn-beijing",
            &err,
        );
        assert_eq!((r.status, r.content_type), (412, "application/json"));
        assert_eq!(
            parse(&r),
            json!({"ResponseMetadata": {
                "RequestId": "rid",
                "Action": "CreateTrafficMirrorSession",
                "Version": "2020-04-01",
                "Service": "vpc",
                "Region": "cn-beijing",
                "Error": {"Code": "IdempotentProcessing", "Message": err.message},
            }})
        );
        assert!(
            r.body
                .starts_with(r#"{"ResponseMetadata":{"RequestId":"rid","#)
        );
    }
}
