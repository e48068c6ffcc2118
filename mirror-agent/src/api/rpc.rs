//! Parameters of an RPC-style request (Alibaba Cloud, Volcengine): the query string and the
//! body merged into one flat map in the query spelling (`Name.1`, `Name.1.Field`), and the
//! readers for the parameter shapes of docs/api.md (lists, structured lists, tags, client
//! token, idempotency fingerprint).

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use serde_json::Value;

use super::ApiError;

/// Most tags one request may carry (`LimitExceeded.Tags` above).
pub const MAX_TAGS: usize = 20;
/// Longest tag key, in characters.
pub const MAX_TAG_KEY_LEN: usize = 128;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Longest client token (the seeds: "no more than 64 ASCII characters").
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;

/// Prefixes the clouds keep for their own tags; compared case-insensitively.
const RESERVED_TAG_PREFIXES: [&str; 4] = ["volc:", "sys:", "acs:", "aliyun"];

/// Parameters that say how the request is carried or signed rather than what it asks for, so
/// a retry may change them without being a different request.
const NOT_FINGERPRINTED: [&str; 8] = [
    "ClientToken",
    "RequestId",
    "Format",
    "Version",
    "RegionId",
    "Timestamp",
    "AccessKeyId",
    "SecurityToken",
];

/// The parameters of one request, keyed in the query spelling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// Query string (without '?') and an optional body: `application/x-www-form-urlencoded`
    /// (also when the content type is absent or unknown and the body does not start with '{'),
    /// or a JSON object (`application/json`, `*+json`, or a body starting with '{') flattened
    /// into the query spelling. A parameter given in the body replaces every query parameter
    /// with the same root name (the part before the first '.'), so a list never mixes items
    /// from both.
    pub fn parse(
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Params, ApiError> {
        let mut map = BTreeMap::new();
        if let Some(query) = query {
            // Tolerated although the caller should have cut it: a '?' would otherwise end up
            // in the first key.
            let query = query.strip_prefix('?').unwrap_or(query);
            insert_form(&mut map, query);
        }
        let body = parse_body(content_type, body)?;
        if !body.is_empty() {
            let roots: HashSet<&str> = body.keys().map(|k| root(k)).collect();
            map.retain(|k, _| !roots.contains(root(k)));
            map.extend(body);
        }
        // Percent-decoding is lossy: `%FF` would become U+FFFD and be stored as such.
        if let Some((k, _)) = map
            .iter()
            .find(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
        {
            return Err(ApiError::bad(
                "InvalidParameter",
                format!("The parameter {k:?} is not valid UTF-8 once percent-decoded."),
            ));
        }
        Ok(Params { map })
    }

    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Params {
        Params {
            map: pairs.into_iter().collect(),
        }
    }

    /// Sets `key` unless the request gave it (the Tea SDK's `x-acs-action` and
    /// `x-acs-version` headers stand for the parameters).
    pub fn set_default(&mut self, key: &str, value: &str) {
        self.map
            .entry(key.to_string())
            .or_insert_with(|| value.to_string());
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.map.insert(key.to_string(), value.to_string());
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }

    /// Moves a parameter to another name unless that name is given too.
    pub fn rename(&mut self, from: &str, to: &str) {
        if self.map.contains_key(to) {
            return;
        }
        if let Some(v) = self.map.remove(from) {
            self.map.insert(to.to_string(), v);
        }
    }

    /// The raw value; `Some("")` for a parameter given empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Like [`Params::get`], but an empty value counts as absent.
    pub fn str_opt(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// `MissingParameter` when absent or empty.
    pub fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.str_opt(key).ok_or_else(|| ApiError::missing(key))
    }

    /// An integer parameter; empty counts as absent. A value that is not an integer is a 400
    /// with `code` (e.g. `InvalidPriority.Malformed`).
    pub fn int(&self, key: &str, code: &str) -> Result<Option<i64>, ApiError> {
        match self.str_opt(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::bad(code, format!("The specified {key} is malformed."))),
        }
    }

    /// `true`/`false` in any case; empty counts as absent.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.str_opt(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(
                key,
                format!("\"{v}\" is neither true nor false"),
            )),
        }
    }

    /// A list in any accepted spelling: `Name.1..Name.N`, `Name=["a","b"]` (strings or
    /// numbers), or a single `Name=a`. `Name=` (empty) is the empty list, as is an absent one.
    pub fn list(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let items = self.indexed(name).map_err(|p| p.into_invalid(name))?;
        match self.get(name) {
            Some(_) if !items.is_empty() => Err(mixed(name)),
            Some("") => Ok(Vec::new()),
            Some(v) if is_json_array(v) => json_scalar_list(name, v),
            Some(v) => Ok(vec![v.to_owned()]),
            None => items
                .into_iter()
                .enumerate()
                .map(|(i, fields)| match fields.as_slice() {
                    [(None, value)] => Ok((*value).to_owned()),
                    _ => Err(ApiError::invalid(
                        name,
                        format!(
                            "{name}.{} must be a single value, not {name}.{}.Field",
                            i + 1,
                            i + 1
                        ),
                    )),
                })
                .collect(),
        }
    }

    /// A structured list `Name.N.Field=…`, or `Name=[{"Field": …}, …]`: one [`Params`] per
    /// item, keyed by the field names (deeper nesting keeps its dots: `Name.1.Sub.2` gives
    /// `Sub.2` in the first item).
    pub fn objects(&self, name: &str) -> Result<Vec<Params>, ApiError> {
        let items = self.indexed(name).map_err(|p| p.into_invalid(name))?;
        match self.get(name) {
            Some(_) if !items.is_empty() => Err(mixed(name)),
            Some("") => Ok(Vec::new()),
            Some(v) if is_json_array(v) => json_object_list(name, v),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("expected {name}.N.Field parameters or a JSON array of objects"),
            )),
            None => items
                .into_iter()
                .enumerate()
                .map(|(i, fields)| {
                    let mut map = BTreeMap::new();
                    for (field, value) in fields {
                        let Some(field) = field else {
                            return Err(ApiError::invalid(
                                name,
                                format!("{name}.{} needs a field: {name}.{}.Field", i + 1, i + 1),
                            ));
                        };
                        map.insert(field.to_owned(), value.to_owned());
                    }
                    Ok(Params { map })
                })
                .collect(),
        }
    }

    /// `Tags.N.Key` / `Tags.N.Value` (or `Tags=[{"Key": …, "Value": …}]`) in index order; a
    /// missing Value is "".
    pub fn tags(&self) -> Result<Vec<(String, String)>, ApiError> {
        let items = self.indexed("Tags").map_err(|_| tag_disorder())?;
        let raw: Vec<RawTag> = match self.get("Tags") {
            Some(_) if !items.is_empty() => return Err(mixed("Tags")),
            Some("") => Vec::new(),
            Some(v) if is_json_array(v) => json_tags(v)?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "Tags",
                    "expected Tags.N.Key/Tags.N.Value parameters or a JSON array of objects",
                ));
            }
            None => items
                .into_iter()
                .enumerate()
                .map(|(i, fields)| {
                    let mut tag = RawTag::default();
                    for (field, value) in fields {
                        match field {
                            Some("Key") => tag.key = Some(value.to_owned()),
                            Some("Value") => tag.value = Some(value.to_owned()),
                            Some(other) => {
                                return Err(ApiError::invalid(
                                    &format!("Tags.{}.{other}", i + 1),
                                    "a tag has only Key and Value",
                                ));
                            }
                            None => {
                                return Err(ApiError::invalid(
                                    &format!("Tags.{}", i + 1),
                                    "expected Tags.N.Key and Tags.N.Value",
                                ));
                            }
                        }
                    }
                    Ok(tag)
                })
                .collect::<Result<_, _>>()?,
        };
        if raw.len() > MAX_TAGS {
            return Err(ApiError::bad(
                "LimitExceeded.Tags",
                format!(
                    "You've reached the limit on the number of tags that you can operate at one time ({MAX_TAGS})."
                ),
            ));
        }
        let mut seen = HashSet::new();
        let mut tags = Vec::with_capacity(raw.len());
        for (i, tag) in raw.into_iter().enumerate() {
            let n = i + 1;
            let key = tag.key.unwrap_or_default();
            let value = tag.value.unwrap_or_default();
            if key.is_empty() {
                return Err(bad_tag_key(format!("Tags.{n}.Key is missing or empty")));
            }
            if key.chars().count() > MAX_TAG_KEY_LEN {
                return Err(bad_tag_key(format!(
                    "Tags.{n}.Key is longer than {MAX_TAG_KEY_LEN} characters"
                )));
            }
            let lower = key.to_lowercase();
            if let Some(prefix) = RESERVED_TAG_PREFIXES.iter().find(|p| lower.starts_with(*p)) {
                return Err(bad_tag_key(format!(
                    "Tags.{n}.Key must not start with \"{prefix}\""
                )));
            }
            if value.chars().count() > MAX_TAG_VALUE_LEN {
                return Err(ApiError::bad(
                    "InvalidTagValue.Malformed",
                    format!(
                        "The specified parameter tag value is invalid: Tags.{n}.Value is longer than {MAX_TAG_VALUE_LEN} characters."
                    ),
                ));
            }
            if !seen.insert(key.clone()) {
                return Err(bad_tag_key(format!(
                    "duplicate tag key \"{key}\" in Tags.{n}.Key"
                )));
            }
            tags.push((key, value));
        }
        Ok(tags)
    }

    /// The parameters in a canonical form for comparing a retried request with the first one:
    /// sorted, percent-encoded `k=v` joined by '&', without the transport and signing
    /// parameters. JSON-array values are expanded into the `.N` spelling first, so the list
    /// spellings compare equal. A single `Name=a` stays distinct from `Name.1=a`: without the
    /// action's schema it cannot be told from a scalar.
    pub fn fingerprint(&self) -> String {
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(self.map.len());
        for (k, v) in &self.map {
            if !fingerprinted(k) {
                continue;
            }
            if is_json_array(v)
                && let Ok(array @ Value::Array(_)) = serde_json::from_str::<Value>(v)
            {
                let mut expanded = BTreeMap::new();
                if flatten(k.clone(), &array, &mut expanded).is_ok() {
                    pairs.extend(expanded);
                    continue;
                }
            }
            pairs.push((k.clone(), v.clone()));
        }
        pairs.sort();
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// The `name.N[.rest]` entries grouped by N, in index order (`result[0]` is index 1); each
    /// entry is (rest, value).
    fn indexed(&self, name: &str) -> Result<Vec<Item<'_>>, IndexProblem> {
        let prefix = format!("{name}.");
        let mut groups: BTreeMap<usize, Item<'_>> = BTreeMap::new();
        let range = self
            .map
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix));
        for (k, v) in range {
            let rest = &k[prefix.len()..];
            let (index, field) = match rest.split_once('.') {
                Some((index, field)) => (index, Some(field)),
                None => (rest, None),
            };
            let n = parse_index(index).ok_or_else(|| IndexProblem::Malformed(k.clone()))?;
            groups.entry(n).or_default().push((field, v.as_str()));
        }
        if groups.keys().enumerate().any(|(i, &n)| n != i + 1) {
            return Err(IndexProblem::Gap);
        }
        Ok(groups.into_values().collect())
    }
}

/// `ClientToken`: absent or empty is `None`; at most 64 printable ASCII characters.
pub fn client_token(p: &Params) -> Result<Option<String>, ApiError> {
    let Some(token) = p.str_opt("ClientToken") else {
        return Ok(None);
    };
    let printable = token.bytes().all(|b| b.is_ascii() && !b.is_ascii_control());
    if !printable || token.len() > MAX_CLIENT_TOKEN_LEN {
        return Err(ApiError::bad(
            "InvalidParameter.ClientTokenMalformed",
            "The specified parameter ClientToken is malformed.",
        ));
    }
    Ok(Some(token.to_owned()))
}

/// The entries of one `Name.N` item: (the part after `Name.N.`, if any; value).
type Item<'a> = Vec<(Option<&'a str>, &'a str)>;

enum IndexProblem {
    /// The key whose index is not a positive decimal number.
    Malformed(String),
    Gap,
}

impl IndexProblem {
    fn into_invalid(self, name: &str) -> ApiError {
        match self {
            IndexProblem::Malformed(key) => ApiError::invalid(
                name,
                format!("the index in {key} is not a positive integer"),
            ),
            IndexProblem::Gap => ApiError::invalid(
                name,
                format!("the indexes of {name}.N must start at 1 and have no gaps"),
            ),
        }
    }
}

#[derive(Default)]
struct RawTag {
    key: Option<String>,
    value: Option<String>,
}

fn tag_disorder() -> ApiError {
    ApiError::bad(
        "InvalidTag.Disorder",
        "The specified index order of tag is malformed.",
    )
}

fn bad_tag_key(why: String) -> ApiError {
    ApiError::bad(
        "InvalidTagKey.Malformed",
        format!("The specified parameter tag key is invalid: {why}."),
    )
}

fn mixed(name: &str) -> ApiError {
    ApiError::invalid(
        name,
        format!("{name} and {name}.N cannot be given together"),
    )
}

/// Leading zeros are refused so that `Name.1` and `Name.01` cannot both name the first item.
fn parse_index(s: &str) -> Option<usize> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn root(key: &str) -> &str {
    key.split_once('.').map_or(key, |(root, _)| root)
}

fn is_json_array(v: &str) -> bool {
    v.trim_start().starts_with('[')
}

fn fingerprinted(key: &str) -> bool {
    !(NOT_FINGERPRINTED.contains(&key) || key.starts_with("Signature") || key.starts_with("X-"))
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn insert_form(map: &mut BTreeMap<String, String>, form: &str) {
    for (k, v) in form_urlencoded::parse(form.as_bytes()) {
        // `&&` or a bare `=x` carry no parameter.
        if !k.is_empty() {
            map.insert(k.into_owned(), v.into_owned());
        }
    }
}

fn body_error(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad(
        "InvalidParameter",
        format!("The request body is malformed: {why}"),
    )
}

fn parse_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut map = BTreeMap::new();
    let text = std::str::from_utf8(body).map_err(|e| body_error(format!("not UTF-8 ({e})")))?;
    // Tools like `curl -d @file` keep the file's final newline.
    let text = text.trim();
    if text.is_empty() {
        return Ok(map);
    }
    let essence = content_type
        .map(|ct| ct.split_once(';').map_or(ct, |(essence, _)| essence))
        .map(|ct| ct.trim().to_ascii_lowercase());
    let json = text.starts_with('{')
        || essence
            .as_deref()
            .is_some_and(|e| e == "application/json" || e.ends_with("+json"));
    if !json {
        insert_form(&mut map, text);
        return Ok(map);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| body_error(format!("invalid JSON ({e})")))?;
    let Value::Object(object) = value else {
        return Err(body_error("a JSON body must be an object"));
    };
    for (k, v) in &object {
        if !k.is_empty() {
            flatten(k.clone(), v, &mut map).map_err(body_error)?;
        }
    }
    Ok(map)
}

/// Writes `value` under `key` in the query spelling: arrays as `key.N`, objects as
/// `key.Field`, scalars as their text. A null member is absent; an empty array stays `[]`
/// so that it still reads as the empty list. Err names a null list item, which would
/// otherwise show up as a confusing gap in the indexes.
fn flatten(key: String, value: &Value, out: &mut BTreeMap<String, String>) -> Result<(), String> {
    match value {
        Value::Null => {}
        Value::Bool(b) => {
            out.insert(key, b.to_string());
        }
        Value::Number(n) => {
            out.insert(key, n.to_string());
        }
        Value::String(s) => {
            out.insert(key, s.clone());
        }
        Value::Array(items) if items.is_empty() => {
            out.insert(key, "[]".to_owned());
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_key = format!("{key}.{}", i + 1);
                if item.is_null() {
                    return Err(format!("{item_key} is null"));
                }
                flatten(item_key, item, out)?;
            }
        }
        Value::Object(members) => {
            for (k, v) in members {
                flatten(format!("{key}.{k}"), v, out)?;
            }
        }
    }
    Ok(())
}

fn parse_json_array(name: &str, v: &str) -> Result<Vec<Value>, ApiError> {
    match serde_json::from_str::<Value>(v) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(_) => Err(ApiError::invalid(name, "not a JSON array")),
        Err(e) => Err(ApiError::invalid(name, format!("not a JSON array ({e})"))),
    }
}

fn json_scalar_list(name: &str, v: &str) -> Result<Vec<String>, ApiError> {
    parse_json_array(name, v)?
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(ApiError::invalid(
                name,
                "the items of the JSON array must be strings or numbers",
            )),
        })
        .collect()
}

fn json_object_list(name: &str, v: &str) -> Result<Vec<Params>, ApiError> {
    parse_json_array(name, v)?
        .into_iter()
        .map(|item| {
            let Value::Object(members) = item else {
                return Err(ApiError::invalid(
                    name,
                    "the items of the JSON array must be objects",
                ));
            };
            let mut map = BTreeMap::new();
            for (k, v) in &members {
                flatten(k.clone(), v, &mut map).map_err(|why| ApiError::invalid(name, why))?;
            }
            Ok(Params { map })
        })
        .collect()
}

fn json_tags(v: &str) -> Result<Vec<RawTag>, ApiError> {
    fn text(v: Option<Value>, field: &str) -> Result<Option<String>, String> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(format!("{field} must be a string")),
        }
    }
    parse_json_array("Tags", v)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let n = i + 1;
            let Value::Object(mut members) = item else {
                return Err(ApiError::invalid("Tags", "the items must be objects"));
            };
            let key = text(members.remove("Key"), &format!("Tags.{n}.Key")).map_err(bad_tag_key)?;
            let value =
                text(members.remove("Value"), &format!("Tags.{n}.Value")).map_err(|why| {
                    ApiError::bad(
                        "InvalidTagValue.Malformed",
                        format!("The specified parameter tag value is invalid: {why}."),
                    )
                })?;
            if let Some(other) = members.keys().next() {
                return Err(ApiError::invalid(
                    &format!("Tags.{n}.{other}"),
                    "a tag has only Key and Value",
                ));
            }
            Ok(RawTag { key, value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(query: &str) -> Params {
        Params::parse(Some(query), None, b"").unwrap()
    }

    fn pairs(items: &[(&str, &str)]) -> Params {
        Params::from_pairs(items.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const SEED_000_QUERY: &str = "Action=AddSourcesToTrafficMirrorSession&ClientToken=0c593ea1-3bea-11e9-b96b-88e9fe63****&DryRun=false&TrafficMirrorSessionId=tms-j6cla50buc44ap8tu****&TrafficMirrorSourceIds=[\"eni-j6c8znm5l1yt4sox****\"]&RegionId=cn-hongkong";

    #[test]
    fn seed_000_sample_query() {
        let p = q(SEED_000_QUERY);
        assert_eq!(p.get("Action"), Some("AddSourcesToTrafficMirrorSession"));
        assert_eq!(
            p.required("TrafficMirrorSessionId").unwrap(),
            "tms-j6cla50buc44ap8tu****"
        );
        assert_eq!(
            p.list("TrafficMirrorSourceIds").unwrap(),
            strings(&["eni-j6c8znm5l1yt4sox****"])
        );
        assert_eq!(p.bool("DryRun").unwrap(), Some(false));
        assert_eq!(p.get("RegionId"), Some("cn-hongkong"));
        assert_eq!(
            client_token(&p).unwrap().as_deref(),
            Some("0c593ea1-3bea-11e9-b96b-88e9fe63****")
        );
    }

    #[test]
    fn seed_000_sample_query_percent_encoded() {
        let encoded = "Action=AddSourcesToTrafficMirrorSession&TrafficMirrorSourceIds=%5B%22eni-j6c8znm5l1yt4sox%2A%2A%2A%2A%22%5D";
        assert_eq!(
            q(encoded).list("TrafficMirrorSourceIds").unwrap(),
            strings(&["eni-j6c8znm5l1yt4sox****"])
        );
    }

    #[test]
    fn seed_001_sample_query() {
        let p = q(
            "Action=CreateTrafficMirrorSession&Version=2020-04-01&TrafficMirrorSessionName=TM_Session_1&NetworkInterfaceId=eni-bp1fgnh68xyz9****&TrafficMirrorTargetId=tmt-35bvae1r7rv283dy2w2ll****&Priority=1&TrafficMirrorFilterId=tmf-bp1opxu1zkhn00123****",
        );
        assert_eq!(
            p.int("Priority", "InvalidPriority.Malformed").unwrap(),
            Some(1)
        );
        assert_eq!(p.get("NetworkInterfaceId"), Some("eni-bp1fgnh68xyz9****"));
        assert_eq!(
            p.int("PacketLength", "InvalidPacketLength.Malformed")
                .unwrap(),
            None
        );
    }

    #[test]
    fn percent_decoding_and_plus() {
        let p = q("Name=a+b%20c&K%2Ey=%E6%B5%8B&Empty=&&=orphan");
        assert_eq!(p.get("Name"), Some("a b c"));
        assert_eq!(p.get("K.y"), Some("测"));
        assert_eq!(p.get("Empty"), Some(""));
        assert_eq!(p.str_opt("Empty"), None);
        assert_eq!(p.get("Absent"), None);
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["Empty", "K.y", "Name"]);
        assert_eq!(q("?Action=X").get("Action"), Some("X"));
    }

    #[test]
    fn required_and_missing() {
        let p = pairs(&[("A", "x"), ("B", "")]);
        assert_eq!(p.required("A").unwrap(), "x");
        for key in ["B", "C"] {
            let e = p.required(key).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, "MissingParameter"));
            assert!(e.message.contains(key));
        }
    }

    #[test]
    fn integers() {
        let p = pairs(&[
            ("P", "32766"),
            ("N", "-3"),
            ("Bad", "1.5"),
            ("Word", "one"),
            ("E", ""),
        ]);
        assert_eq!(
            p.int("P", "InvalidPriority.Malformed").unwrap(),
            Some(32766)
        );
        assert_eq!(p.int("N", "X").unwrap(), Some(-3));
        assert_eq!(p.int("E", "X").unwrap(), None);
        assert_eq!(p.int("Absent", "X").unwrap(), None);
        for key in ["Bad", "Word"] {
            let e = p.int(key, "InvalidPriority.Malformed").unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.code, "InvalidPriority.Malformed");
            assert_eq!(e.message, format!("The specified {key} is malformed."));
        }
    }

    #[test]
    fn booleans() {
        let p = pairs(&[
            ("A", "true"),
            ("B", "FALSE"),
            ("C", "True"),
            ("D", "yes"),
            ("E", "1"),
        ]);
        assert_eq!(p.bool("A").unwrap(), Some(true));
        assert_eq!(p.bool("B").unwrap(), Some(false));
        assert_eq!(p.bool("C").unwrap(), Some(true));
        assert_eq!(p.bool("Absent").unwrap(), None);
        for key in ["D", "E"] {
            let e = p.bool(key).unwrap_err();
            assert_eq!(e.code, "InvalidParameter");
            assert!(e.message.contains(key));
        }
    }

    #[test]
    fn list_spellings() {
        let want = strings(&["a", "b"]);
        assert_eq!(q("Ids.1=a&Ids.2=b").list("Ids").unwrap(), want);
        assert_eq!(q("Ids.2=b&Ids.1=a").list("Ids").unwrap(), want);
        assert_eq!(q(r#"Ids=["a","b"]"#).list("Ids").unwrap(), want);
        assert_eq!(q(r#"Ids=[ "a" , "b" ]"#).list("Ids").unwrap(), want);
        assert_eq!(q("Ids=a").list("Ids").unwrap(), strings(&["a"]));
        assert_eq!(q("Ids=[1,2]").list("Ids").unwrap(), strings(&["1", "2"]));
        assert_eq!(q("Ids=[]").list("Ids").unwrap(), Vec::<String>::new());
        assert_eq!(q("Ids=").list("Ids").unwrap(), Vec::<String>::new());
        assert_eq!(q("Other=a").list("Ids").unwrap(), Vec::<String>::new());
        // Ten and more items order by number, not by text.
        let many: Vec<String> = (1..=12).map(|i| format!("Ids.{i}=v{i}")).collect();
        let want: Vec<String> = (1..=12).map(|i| format!("v{i}")).collect();
        assert_eq!(q(&many.join("&")).list("Ids").unwrap(), want);
        // A longer name sharing the prefix is another parameter.
        assert_eq!(q("IdsX.1=a&Ids.1=b").list("Ids").unwrap(), strings(&["b"]));
    }

    #[test]
    fn list_errors() {
        for query in [
            "Ids.2=b",
            "Ids.1=a&Ids.3=c",
            "Ids.0=a&Ids.1=b",
            "Ids.01=a",
            "Ids.x=a",
            "Ids.-1=a",
            "Ids.=a",
            "Ids=a&Ids.1=b",
            r#"Ids=["a"]&Ids.1=b"#,
            r#"Ids=["a",{"b":1}]"#,
            r#"Ids=["a",true]"#,
            r#"Ids=["a""#,
            "Ids.1.Field=a",
        ] {
            let e = q(query).list("Ids").unwrap_err();
            assert_eq!(
                (e.status, e.code.as_str()),
                (400, "InvalidParameter"),
                "{query}"
            );
            assert!(e.message.contains("Ids"), "{query}: {}", e.message);
        }
    }

    #[test]
    fn structured_lists() {
        let p = q(
            "IngressRules.1.Priority=1&IngressRules.1.Action=accept&IngressRules.2.Priority=2&IngressRules.2.Protocol=TCP&EgressRules.1.Priority=3",
        );
        let rules = p.objects("IngressRules").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].get("Priority"), Some("1"));
        assert_eq!(rules[0].get("Action"), Some("accept"));
        assert_eq!(rules[1].get("Protocol"), Some("TCP"));
        assert_eq!(rules[1].get("Action"), None);
        assert_eq!(p.objects("EgressRules").unwrap().len(), 1);
        assert!(p.objects("Absent").unwrap().is_empty());

        let json =
            q(r#"IngressRules=[{"Priority":1,"Action":"accept","Ports":["1/2"]},{"Priority":2}]"#);
        let rules = json.objects("IngressRules").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].get("Priority"), Some("1"));
        assert_eq!(rules[0].list("Ports").unwrap(), strings(&["1/2"]));
        assert_eq!(rules[1].get("Priority"), Some("2"));

        let nested = q("R.1.Sub.1=a&R.1.Sub.2=b");
        assert_eq!(
            nested.objects("R").unwrap()[0].list("Sub").unwrap(),
            strings(&["a", "b"])
        );
    }

    #[test]
    fn structured_list_errors() {
        for query in [
            "R.2.Priority=1",
            "R.1.Priority=1&R.3.Priority=1",
            "R.1=a",
            "R=a",
            "R=[1]",
            r#"R=[{"Priority":1}]&R.1.Priority=2"#,
            "R.one.Priority=1",
        ] {
            let e = q(query).objects("R").unwrap_err();
            assert_eq!(
                (e.status, e.code.as_str()),
                (400, "InvalidParameter"),
                "{query}"
            );
        }
    }

    fn tag_query(n: usize) -> String {
        (1..=n)
            .map(|i| format!("Tags.{i}.Key=k{i}&Tags.{i}.Value=v{i}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    #[test]
    fn tags_ok() {
        let p = q("Tags.1.Key=key1&Tags.2.Key=key2&Tags.1.Value=value1&Tags.2.Value=value2");
        assert_eq!(
            p.tags().unwrap(),
            vec![
                ("key1".into(), "value1".into()),
                ("key2".into(), "value2".into())
            ]
        );
        assert_eq!(
            q("Tags.1.Key=k").tags().unwrap(),
            vec![("k".into(), String::new())]
        );
        assert!(q("Action=X").tags().unwrap().is_empty());
        assert_eq!(q(&tag_query(20)).tags().unwrap().len(), 20);
        let json = q(r#"Tags=[{"Key":"a","Value":"b"},{"Key":"c"}]"#);
        assert_eq!(
            json.tags().unwrap(),
            vec![("a".into(), "b".into()), ("c".into(), String::new())]
        );
        // Reserved prefixes only count at the start.
        assert!(q("Tags.1.Key=my-acs:key").tags().is_ok());
        let long_ok = format!(
            "Tags.1.Key={}&Tags.1.Value={}",
            "k".repeat(128),
            "v".repeat(256)
        );
        assert!(q(&long_ok).tags().is_ok());
    }

    fn tag_err(query: &str) -> ApiError {
        q(query).tags().unwrap_err()
    }

    #[test]
    fn tags_disorder() {
        for query in [
            "Tags.2.Key=a",
            "Tags.1.Key=a&Tags.3.Key=c",
            "Tags.0.Key=a",
            "Tags.x.Key=a",
        ] {
            let e = tag_err(query);
            assert_eq!(e.status, 400);
            assert_eq!(e.code, "InvalidTag.Disorder", "{query}");
            assert_eq!(e.message, "The specified index order of tag is malformed.");
        }
    }

    #[test]
    fn tags_limit() {
        let e = tag_err(&tag_query(21));
        assert_eq!((e.status, e.code.as_str()), (400, "LimitExceeded.Tags"));
    }

    #[test]
    fn tags_bad_keys() {
        let long = format!("Tags.1.Key={}", "k".repeat(129));
        for query in [
            "Tags.1.Key=",
            "Tags.1.Value=v",
            "Tags.1.Key=a&Tags.2.Value=v",
            long.as_str(),
            "Tags.1.Key=volc:x",
            "Tags.1.Key=sys:x",
            "Tags.1.Key=acs:x",
            "Tags.1.Key=aliyun-x",
            "Tags.1.Key=Aliyun",
            r#"Tags=[{"Value":"v"}]"#,
        ] {
            let e = tag_err(query);
            assert_eq!(
                (e.status, e.code.as_str()),
                (400, "InvalidTagKey.Malformed"),
                "{query}"
            );
        }
        let e = tag_err("Tags.1.Key=a&Tags.2.Key=b&Tags.3.Key=a");
        assert_eq!(e.code, "InvalidTagKey.Malformed");
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn tags_bad_values() {
        let e = tag_err(&format!("Tags.1.Key=k&Tags.1.Value={}", "v".repeat(257)));
        assert_eq!(
            (e.status, e.code.as_str()),
            (400, "InvalidTagValue.Malformed")
        );
    }

    #[test]
    fn tags_other_errors() {
        for query in [
            "Tags.1.Color=red",
            "Tags.1=a",
            "Tags=a",
            r#"Tags=[{"Key":"a","X":1}]"#,
        ] {
            assert_eq!(tag_err(query).code, "InvalidParameter", "{query}");
        }
    }

    #[test]
    fn form_body() {
        let p = Params::parse(
            Some("Action=CreateTrafficMirrorSession&Priority=9&TrafficMirrorSourceIds.1=q"),
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"Priority=1&TrafficMirrorSessionName=a+b&TrafficMirrorSourceIds=%5B%22eni-1%22%5D\n",
        )
        .unwrap();
        assert_eq!(p.get("Action"), Some("CreateTrafficMirrorSession"));
        assert_eq!(p.get("Priority"), Some("1"));
        assert_eq!(p.get("TrafficMirrorSessionName"), Some("a b"));
        // The body's list replaces the query's rather than mixing with it.
        assert_eq!(
            p.list("TrafficMirrorSourceIds").unwrap(),
            strings(&["eni-1"])
        );

        // No content type: a body not starting with '{' is a form.
        let p = Params::parse(None, None, b"A=1&B.1=x").unwrap();
        assert_eq!(p.get("A"), Some("1"));
        assert_eq!(p.list("B").unwrap(), strings(&["x"]));
    }

    #[test]
    fn json_body() {
        let body = br#"{
            "Action": "CreateTrafficMirrorFilter",
            "Priority": 1,
            "Ratio": 1.5,
            "Enabled": true,
            "DryRun": false,
            "Gone": null,
            "TrafficMirrorSourceIds": ["eni-1", "eni-2"],
            "Empty": [],
            "IngressRules": [{"Priority": 1, "Action": "accept"}, {"Priority": 2}],
            "Tags": [{"Key": "k", "Value": "v"}],
            "Nested": {"A": "x", "B": {"C": 3}}
        }"#;
        let p = Params::parse(
            Some("Priority=7&IngressRules.3.Priority=9"),
            Some("application/json"),
            body,
        )
        .unwrap();
        assert_eq!(p.get("Priority"), Some("1"));
        assert_eq!(p.get("Ratio"), Some("1.5"));
        assert_eq!(p.bool("Enabled").unwrap(), Some(true));
        assert_eq!(p.get("DryRun"), Some("false"));
        assert_eq!(p.get("Gone"), None);
        assert_eq!(p.get("TrafficMirrorSourceIds.2"), Some("eni-2"));
        assert_eq!(
            p.list("TrafficMirrorSourceIds").unwrap(),
            strings(&["eni-1", "eni-2"])
        );
        assert!(p.list("Empty").unwrap().is_empty());
        assert_eq!(p.get("IngressRules.1.Action"), Some("accept"));
        let rules = p.objects("IngressRules").unwrap();
        assert_eq!(
            rules.len(),
            2,
            "the query's IngressRules.3 is replaced by the body's"
        );
        assert_eq!(rules[1].get("Priority"), Some("2"));
        assert_eq!(p.tags().unwrap(), vec![("k".into(), "v".into())]);
        assert_eq!(p.get("Nested.A"), Some("x"));
        assert_eq!(p.get("Nested.B.C"), Some("3"));

        // Sniffed without a content type, and with a foreign one.
        for ct in [None, Some("text/plain")] {
            let p = Params::parse(None, ct, br#" {"A": "1"}"#).unwrap();
            assert_eq!(p.get("A"), Some("1"));
        }
        // Query spelling inside JSON keys still works.
        let p = Params::parse(None, None, br#"{"Ids.1": "a", "Ids.2": "b"}"#).unwrap();
        assert_eq!(p.list("Ids").unwrap(), strings(&["a", "b"]));
        // An empty body is no body.
        assert_eq!(
            Params::parse(Some("A=1"), Some("application/json"), b"  ").unwrap(),
            q("A=1")
        );
    }

    #[test]
    fn malformed_bodies() {
        for (ct, body) in [
            (Some("application/json"), &b"{\"A\": "[..]),
            (Some("application/json"), &b"[1, 2]"[..]),
            (Some("application/json"), &b"\"x\""[..]),
            (None, &b"{not json}"[..]),
            (None, &b"{\"A\": [\"x\", null]}"[..]),
            (
                Some("application/x-www-form-urlencoded"),
                &b"A=\xff\xfe"[..],
            ),
        ] {
            let e = Params::parse(None, ct, body).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, "InvalidParameter"));
            assert!(
                e.message.starts_with("The request body is malformed"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn fingerprint_equal_across_spellings() {
        let dotted = q(
            "Action=Add&TrafficMirrorSessionId=tms-1&TrafficMirrorSourceIds.1=eni-a&TrafficMirrorSourceIds.2=eni-b&DryRun=false",
        );
        let json_query = q(
            r#"DryRun=false&TrafficMirrorSourceIds=["eni-a","eni-b"]&TrafficMirrorSessionId=tms-1&Action=Add"#,
        );
        let json_body = Params::parse(
            Some("Action=Add"),
            Some("application/json"),
            br#"{"TrafficMirrorSessionId":"tms-1","TrafficMirrorSourceIds":["eni-a","eni-b"],"DryRun":false}"#,
        )
        .unwrap();
        assert_eq!(dotted.fingerprint(), json_query.fingerprint());
        assert_eq!(dotted.fingerprint(), json_body.fingerprint());
        // Transport and signing parameters do not count.
        let signed = q(
            r#"ClientToken=t&RequestId=r&Format=XML&Version=2014-05-26&RegionId=cn-hongkong&Timestamp=2024-01-01T00:00:00Z&Signature=s&SignatureMethod=HMAC-SHA1&SignatureNonce=n&SignatureVersion=1.0&AccessKeyId=ak&DryRun=false&TrafficMirrorSourceIds=["eni-a","eni-b"]&TrafficMirrorSessionId=tms-1&Action=Add"#,
        );
        assert_eq!(dotted.fingerprint(), signed.fingerprint());
        // Structured lists too.
        assert_eq!(
            q("R.1.Priority=1&R.1.Action=accept").fingerprint(),
            q(r#"R=[{"Action":"accept","Priority":1}]"#).fingerprint()
        );
    }

    #[test]
    fn fingerprint_differs_for_different_values() {
        let base = q("Action=Add&TrafficMirrorSourceIds.1=eni-a&TrafficMirrorSourceIds.2=eni-b");
        for other in [
            "Action=Add&TrafficMirrorSourceIds.1=eni-a",
            "Action=Add&TrafficMirrorSourceIds.1=eni-b&TrafficMirrorSourceIds.2=eni-a",
            "Action=Add&TrafficMirrorSourceIds.1=eni-a&TrafficMirrorSourceIds.2=eni-c",
            r#"Action=Add&TrafficMirrorSourceIds=["eni-a"]"#,
            "Action=Remove&TrafficMirrorSourceIds.1=eni-a&TrafficMirrorSourceIds.2=eni-b",
            "Action=Add&TrafficMirrorSourceIds.1=eni-a&TrafficMirrorSourceIds.2=eni-b&DryRun=true",
        ] {
            assert_ne!(base.fingerprint(), q(other).fingerprint(), "{other}");
        }
        // Separators inside values cannot forge other parameters.
        assert_ne!(
            pairs(&[("A", "1&B=2")]).fingerprint(),
            pairs(&[("A", "1"), ("B", "2")]).fingerprint()
        );
    }

    #[test]
    fn client_tokens() {
        assert_eq!(client_token(&q("Action=X")).unwrap(), None);
        assert_eq!(client_token(&q("ClientToken=")).unwrap(), None);
        let max = "a".repeat(64);
        assert_eq!(
            client_token(&pairs(&[("ClientToken", &max)])).unwrap(),
            Some(max.clone())
        );
        assert_eq!(
            client_token(&q("ClientToken=123e4567-e89b-12d3-a456-42665544****"))
                .unwrap()
                .as_deref(),
            Some("123e4567-e89b-12d3-a456-42665544****")
        );
        for bad in [
            "a".repeat(65),
            "tök".to_string(),
            "a\tb".to_string(),
            "a\u{7f}".to_string(),
        ] {
            let e = client_token(&pairs(&[("ClientToken", &bad)])).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.code, "InvalidParameter.ClientTokenMalformed");
            assert_eq!(
                e.message,
                "The specified parameter ClientToken is malformed."
            );
        }
    }
}
