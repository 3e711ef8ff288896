//! [`RecordSchema`]: the fields a model's record payloads carry, declared by the model.
//!
//! A model that declares a schema ([`ModelSpec::with_schema`](super::ModelSpec::with_schema))
//! promises that every payload it emits is a JSON object with exactly the declared fields. The
//! worker checks each payload with [`RecordSchema::check`] before anything is sent (a mismatch
//! fails the run's attempt like a model error), and sinks that store typed columns (the Parquet
//! sink) derive their columns from the schema instead of guessing them from the data.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Payload;

/// Longest field name: `payload_<name>` then fits PostgreSQL's 63-byte identifiers, the
/// shortest limit among the usual warehouses.
pub const MAX_FIELD_NAME_LEN: usize = 55;

/// The type of one payload field, and the JSON shape that carries it.
///
/// Deliberately exhaustive: a new type must be mapped by every typed sink and view, and the
/// compiler points at each one.
///
/// With the `openapi` feature it is a `utoipa` schema, published under the API's name for it,
/// `FieldTypeView`, with the API's one-line description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(
        as = FieldTypeView,
        description = "The type of a payload field and its JSON shape."
    )
)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// JSON `true` / `false`.
    Bool,
    /// A JSON integer in `i64` range.
    Int64,
    /// A JSON integer in `u64` range (block numbers, log indexes, gas, counts).
    UInt64,
    /// Any JSON number (integers are accepted and widened).
    Float64,
    /// A JSON string.
    String,
    /// An integer too wide for 64 bits (`uint256`, `int256` amounts), carried as a JSON string
    /// of decimal digits with an optional leading `-`, e.g. `"1000000000000000000000"`: at most
    /// 78 digits, which holds every `uint256` and `int256`.
    BigInt,
    /// Bytes as a JSON string `0x` followed by an even number of hex digits, either case
    /// (addresses, hashes, calldata), e.g. `"0xddf252ad..."`.
    Hex,
    /// Any JSON value (an object, an array, ...), kept as JSON text by typed sinks.
    Json,
}

impl FieldType {
    /// The name used in messages and in the serialized schema (`"uint64"`, `"bigint"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int64 => "int64",
            Self::UInt64 => "uint64",
            Self::Float64 => "float64",
            Self::String => "string",
            Self::BigInt => "bigint",
            Self::Hex => "hex",
            Self::Json => "json",
        }
    }

    /// What a value of this type looks like, for error messages.
    fn expected(self) -> &'static str {
        match self {
            Self::Bool => "a bool",
            Self::Int64 => "an integer in i64 range",
            Self::UInt64 => "an integer in u64 range",
            Self::Float64 => "a number",
            Self::String => "a string",
            Self::BigInt => "a string of decimal digits (bigint), e.g. \"1000\"",
            Self::Hex => "a 0x-prefixed string of an even number of hex digits (hex)",
            Self::Json => "any JSON value",
        }
    }

    /// Whether a value of this `shape` has this type: the one set of type rules, for a parsed
    /// value ([`Shape::of`]) and for payload text read in place. `null` is of no type (whether
    /// a field may be null is its own rule).
    fn accepts(self, shape: Shape<'_>) -> bool {
        match (self, shape) {
            (_, Shape::Null) => false,
            (Self::Json, _) | (Self::Bool, Shape::Bool) => true,
            (Self::Int64, Shape::UInt(n)) => i64::try_from(n).is_ok(),
            (Self::Int64, Shape::NegInt) => true,
            (Self::UInt64, Shape::UInt(_)) => true,
            (Self::Float64, Shape::UInt(_) | Shape::NegInt | Shape::Float) => true,
            (Self::String, Shape::Str(_)) => true,
            (Self::BigInt, Shape::Str(s)) => is_decimal(s),
            (Self::Hex, Shape::Str(s)) => is_hex(s),
            _ => false,
        }
    }
}

/// What the type rules look at in a JSON value: numbers as serde_json reads them (an integer
/// in u64 range, a negative one in i64 range, else a float).
#[derive(Debug, Clone, Copy)]
enum Shape<'a> {
    Null,
    Bool,
    UInt(u64),
    NegInt,
    Float,
    Str(&'a str),
    /// An array or an object.
    Nested,
}

impl<'a> Shape<'a> {
    fn of(value: &'a Value) -> Self {
        match value {
            Value::Bool(_) => Self::Bool,
            Value::Number(n) => match n.as_u64() {
                Some(u) => Self::UInt(u),
                None if n.is_i64() => Self::NegInt,
                None => Self::Float,
            },
            Value::String(s) => Self::Str(s),
            Value::Array(_) | Value::Object(_) => Self::Nested,
            Value::Null => Self::Null,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.len() <= 78 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_hex(s: &str) -> bool {
    s.strip_prefix("0x")
        .is_some_and(|h| h.len() % 2 == 0 && alloy_primitives::hex::check_raw(h))
}

/// One declared payload field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Payload key and, prefixed with `payload_`, the column name in typed sinks: lowercase
    /// letters, digits and `_`, starting with a letter or `_`, at most [`MAX_FIELD_NAME_LEN`]
    /// characters.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether the field may be missing or `null`.
    pub nullable: bool,
    /// What the field means, for people reading the catalog or the warehouse table.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl FieldSpec {
    /// A field.
    pub fn new(
        name: impl Into<String>,
        ty: FieldType,
        nullable: bool,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            ty,
            nullable,
            description: description.into(),
        }
    }

    /// Why `name` is not a valid field name, if it is not.
    fn name_problem(name: &str) -> Option<String> {
        if name.is_empty() {
            return Some("the name is empty".into());
        }
        if name.len() > MAX_FIELD_NAME_LEN {
            return Some(format!(
                "the name is {} characters long; at most {MAX_FIELD_NAME_LEN} are allowed",
                name.len()
            ));
        }
        let first_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        let rest_ok = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        (!first_ok || !rest_ok).then(|| {
            "not a column identifier: use lowercase letters, digits and '_', starting with a \
             letter or '_'"
                .into()
        })
    }
}

/// The declared shape of a model's record payloads: an ordered list of fields.
///
/// # The rules a payload follows
///
/// - It is a JSON object.
/// - Every declared field that is not nullable is present and not `null`; a nullable field may be
///   missing or `null`.
/// - A present, non-null value has the JSON shape of its [`FieldType`].
/// - It has **no other field**: an undeclared field is an error, because a warehouse table has a
///   fixed set of columns and a silently dropped field is lost data. Add the field to the schema
///   (and bump the model version) instead.
///
/// # Building and checking one
///
/// The order is the column order of typed sinks. Build one with the builder methods and check
/// it with [`validate`](Self::validate) (the engine validates every declared schema when a
/// worker starts, so a bad schema stops the worker with a message naming the model and field):
///
/// ```
/// use model_runner_core::model::{FieldType, RecordSchema};
/// use serde_json::json;
///
/// let schema = RecordSchema::new()
///     .required("token_address", FieldType::Hex, "ERC-20 contract, lowercase 0x-hex")
///     .required("value", FieldType::BigInt, "amount in the token's base unit")
///     .required("block_number", FieldType::UInt64, "")
///     .nullable("memo", FieldType::String, "free text, when the token has one");
/// schema.validate().unwrap();
///
/// let ok = json!({"token_address": "0xdac17f958d2ee523a2206206994597c13d831ec7",
///                 "value": "1000000000000000000000", "block_number": 17000000});
/// schema.check(&ok).unwrap();
///
/// let err = schema.check(&json!({"token_address": "0x01", "value": 1000, "block_number": 1}))
///     .unwrap_err();
/// assert_eq!(err.field(), Some("value"));
/// assert_eq!(
///     err.to_string(),
///     "field \"value\": expected a string of decimal digits (bigint), e.g. \"1000\", found number 1000"
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSchema {
    fields: Vec<FieldSpec>,
}

impl RecordSchema {
    /// A schema with no fields yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A schema of `fields`, in order.
    pub fn from_fields(fields: impl IntoIterator<Item = FieldSpec>) -> Self {
        Self {
            fields: fields.into_iter().collect(),
        }
    }

    /// Appends a field that every payload carries, non-null.
    pub fn required(
        self,
        name: impl Into<String>,
        ty: FieldType,
        description: impl Into<String>,
    ) -> Self {
        self.field(FieldSpec::new(name, ty, false, description))
    }

    /// Appends a field that may be missing or `null`.
    pub fn nullable(
        self,
        name: impl Into<String>,
        ty: FieldType,
        description: impl Into<String>,
    ) -> Self {
        self.field(FieldSpec::new(name, ty, true, description))
    }

    /// Appends the three fields that place a log on the chain, as the built-in log models end:
    /// `transaction_hash` (hex), `log_index` and `block_number` (uint64).
    pub fn log_position(self) -> Self {
        self.required(
            "transaction_hash",
            FieldType::Hex,
            "transaction that emitted the log",
        )
        .required("log_index", FieldType::UInt64, "log index in the block")
        .required("block_number", FieldType::UInt64, "block number")
    }

    /// Appends `field`.
    pub fn field(mut self, field: FieldSpec) -> Self {
        self.fields.push(field);
        self
    }

    /// The fields, in declared order.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// The field called `name`.
    pub fn get(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks the schema itself: every name is a valid column identifier and unique.
    pub fn validate(&self) -> Result<(), SchemaError> {
        let mut seen = HashSet::new();
        for (index, f) in self.fields.iter().enumerate() {
            let invalid = |reason: String| SchemaError::InvalidField {
                index,
                field: f.name.chars().take(64).collect(),
                reason,
            };
            if let Some(reason) = FieldSpec::name_problem(&f.name) {
                return Err(invalid(reason));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(invalid("the name is declared twice".into()));
            }
        }
        Ok(())
    }

    /// Checks a record's [`Payload`] as [`check`](Self::check) checks a value, reading its JSON
    /// text in place: a conforming payload is never parsed into a value. Only a payload that
    /// does not conform is parsed, to name its first problem as `check` does.
    pub fn check_payload(&self, payload: &Payload) -> Result<(), PayloadError> {
        if let Some(value) = payload.parsed() {
            return self.check(value);
        }
        if self.conforms(payload.as_json()) {
            Ok(())
        } else {
            self.check(payload.value())
        }
    }

    /// Whether `json`, a payload's text (valid, compact JSON by construction), holds an object
    /// that passes [`check`](Self::check), read in one pass without building a value. `false`
    /// also where it cannot tell cheaply (a key given twice, a key or string with an escape,
    /// more than 64 fields, anything unexpected): the caller then checks the value.
    fn conforms(&self, json: &str) -> bool {
        let fields = &self.fields;
        if fields.len() > 64 {
            return false;
        }
        let b = json.as_bytes();
        let mut at = 1;
        if b.first() != Some(&b'{') {
            return false;
        }
        let mut seen = 0u64;
        if b.get(at) == Some(&b'}') {
            at += 1;
        } else {
            loop {
                let Some((key, after)) = plain_string(json, at) else {
                    return false;
                };
                let Some(i) = fields.iter().position(|f| f.name == key) else {
                    return false;
                };
                let bit = 1u64 << i;
                if seen & bit != 0 || b.get(after) != Some(&b':') {
                    return false;
                }
                seen |= bit;
                let Some((ok, end)) =
                    value_conforms(json, after + 1, fields[i].ty, fields[i].nullable)
                else {
                    return false;
                };
                if !ok {
                    return false;
                }
                match b.get(end) {
                    Some(b',') => at = end + 1,
                    Some(b'}') => {
                        at = end + 1;
                        break;
                    }
                    _ => return false,
                }
            }
        }
        at == b.len()
            && fields
                .iter()
                .enumerate()
                .all(|(i, f)| f.nullable || seen & (1u64 << i) != 0)
    }

    /// Checks `payload` against the schema (see the [rules](RecordSchema#the-rules-a-payload-follows)). The
    /// first problem found is returned: declared fields in order, then undeclared fields.
    pub fn check(&self, payload: &Value) -> Result<(), PayloadError> {
        let Value::Object(object) = payload else {
            return Err(PayloadError::NotAnObject {
                found: describe(payload),
            });
        };
        let mut present = 0;
        for f in &self.fields {
            let value = object.get(&f.name);
            present += usize::from(value.is_some());
            match value {
                None | Some(Value::Null) if f.nullable => {}
                None => {
                    return Err(PayloadError::Missing {
                        field: f.name.clone(),
                        expected: f.ty,
                    });
                }
                Some(Value::Null) => {
                    return Err(PayloadError::Null {
                        field: f.name.clone(),
                        expected: f.ty,
                    });
                }
                Some(v) if !f.ty.accepts(Shape::of(v)) => {
                    return Err(PayloadError::WrongType {
                        field: f.name.clone(),
                        expected: f.ty,
                        found: describe(v),
                    });
                }
                Some(_) => {}
            }
        }
        // Every key is a declared field unless the object has more keys than declared fields
        // found in it; only then look for the stranger.
        if object.len() > present
            && let Some(extra) = object.keys().find(|k| self.get(k).is_none())
        {
            return Err(PayloadError::Unknown {
                field: extra.chars().take(64).collect(),
                declared: self
                    .fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(())
    }
}

/// A short description of a JSON value for messages: its kind and, for scalars, the value
/// (long strings cut).
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("string {:?}...", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A schema that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A field with a bad or duplicate name.
    #[error("invalid record schema: field {field:?} (#{index}): {reason}")]
    InvalidField {
        /// Position in the schema, from 0.
        index: usize,
        /// The field name (cut to 64 characters).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl SchemaError {
    /// The field at fault.
    pub fn field(&self) -> &str {
        match self {
            Self::InvalidField { field, .. } => field,
        }
    }
}

/// A payload that does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload is not a JSON object.
    #[error("the payload is {found}, expected a JSON object")]
    NotAnObject {
        /// What it is.
        found: String,
    },
    /// A non-nullable field is missing.
    #[error("field {field:?} is missing: expected {}, and the field is not nullable", .expected.expected())]
    Missing {
        /// The field.
        field: String,
        /// Its declared type.
        expected: FieldType,
    },
    /// A non-nullable field is `null`.
    #[error("field {field:?} is null: expected {}, and the field is not nullable", .expected.expected())]
    Null {
        /// The field.
        field: String,
        /// Its declared type.
        expected: FieldType,
    },
    /// A value of the wrong type.
    #[error("field {field:?}: expected {}, found {found}", .expected.expected())]
    WrongType {
        /// The field.
        field: String,
        /// Its declared type.
        expected: FieldType,
        /// What the payload holds.
        found: String,
    },
    /// A field the schema does not declare.
    #[error("field {field:?} is not declared in the record schema (declared: {declared})")]
    Unknown {
        /// The field (cut to 64 characters).
        field: String,
        /// The declared field names, comma-separated.
        declared: String,
    },
}

impl PayloadError {
    /// The field at fault; `None` when the payload is not an object.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::NotAnObject { .. } => None,
            Self::Missing { field, .. }
            | Self::Null { field, .. }
            | Self::WrongType { field, .. }
            | Self::Unknown { field, .. } => Some(field),
        }
    }
}

/// The string starting at `json[at]` (a `"`) when it holds no escape, and the index after its
/// closing quote.
fn plain_string(json: &str, at: usize) -> Option<(&str, usize)> {
    let b = json.as_bytes();
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let len = memchr::memchr2(b'"', b'\\', &b[at + 1..])?;
    if b[at + 1 + len] != b'"' {
        return None;
    }
    Some((&json[at + 1..at + 1 + len], at + len + 2))
}

/// Whether the value starting at `json[at]` is of type `ty` (`null` only when `nullable`), by
/// the rules of [`FieldType::accepts`], and the index after it. `None` where it cannot tell (a
/// string with an escape, text that is not compact JSON).
fn value_conforms(json: &str, at: usize, ty: FieldType, nullable: bool) -> Option<(bool, usize)> {
    let b = json.as_bytes();
    let (shape, end) = match *b.get(at)? {
        b'n' => return Some((nullable, literal(b, at, b"null")?)),
        b'"' => {
            let (s, end) = plain_string(json, at)?;
            (Shape::Str(s), end)
        }
        b't' => (Shape::Bool, literal(b, at, b"true")?),
        b'f' => (Shape::Bool, literal(b, at, b"false")?),
        b'{' | b'[' => (Shape::Nested, nested_end(b, at)?),
        b'-' | b'0'..=b'9' => {
            let len = b[at..]
                .iter()
                .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .unwrap_or(b.len() - at);
            let text = &json[at..at + len];
            // As serde_json reads it; `-0` is a float to it (it keeps the sign).
            let shape = match (text.parse::<u64>(), text.parse::<i64>()) {
                (Ok(n), _) => Shape::UInt(n),
                (_, Ok(n)) if n < 0 => Shape::NegInt,
                _ => Shape::Float,
            };
            (shape, at + len)
        }
        _ => return None,
    };
    Some((ty.accepts(shape), end))
}

/// The index after the literal `word` at `b[at]`.
fn literal(b: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    b[at..].starts_with(word).then_some(at + word.len())
}

/// The index after the object or array opening at `b[at]`, skipping strings (and their
/// escapes) inside it.
fn nested_end(b: &[u8], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = at;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'"' => {
                i += 1;
                while *b.get(i)? != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transfers() -> RecordSchema {
        RecordSchema::new()
            .required("token_address", FieldType::Hex, "token contract")
            .required("value", FieldType::BigInt, "amount")
            .required("log_index", FieldType::UInt64, "")
            .required("delta", FieldType::Int64, "")
            .required("price", FieldType::Float64, "")
            .required("ok", FieldType::Bool, "")
            .required("symbol", FieldType::String, "")
            .nullable("extra", FieldType::Json, "anything")
    }

    fn payload() -> Value {
        json!({
            "token_address": "0xDAC17F958D2ee523a2206206994597C13D831ec7",
            "value": "115792089237316195423570985008687907853269984665640564039457584007913129639935",
            "log_index": u64::MAX,
            "delta": -5,
            "price": 3,
            "ok": true,
            "symbol": "USDT",
            "extra": {"nested": [1, 2]},
        })
    }

    /// Reading a payload's text in place gives the same verdict, and the same error, as
    /// checking its value, over every type against every kind of JSON value, nulls, missing,
    /// unknown and repeated keys, escaped keys and strings, and non-objects.
    #[test]
    fn checking_the_text_agrees_with_checking_the_value() {
        let s = transfers();
        let kinds = [
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(-1e-7),
            json!(""),
            json!("12"),
            json!("-12"),
            json!("0xAbCd"),
            json!("0xabc"),
            json!("x\"y"),
            json!([1, {"a": []}]),
            json!({"a": {"b": null}}),
        ];
        let mut payloads = vec![payload()];
        for field in s.fields.iter().map(|f| f.name.clone()) {
            for kind in &kinds {
                let mut p = payload();
                p[&field] = kind.clone();
                payloads.push(p);
            }
            let mut p = payload();
            p.as_object_mut().unwrap().remove(&field);
            payloads.push(p);
        }
        let mut unknown = payload();
        unknown["stranger"] = json!(1);
        payloads.extend([unknown, json!([1]), json!("text"), json!(null), json!({})]);
        for p in payloads {
            let text = Payload::from(p.clone());
            assert!(text.parsed().is_none());
            assert_eq!(s.check_payload(&text), s.check(&p), "{p}");
        }
        // Text read in place, and what it leaves to the value: a key given twice (the value
        // keeps the last), an escaped key, a string with escapes; numbers as serde_json reads
        // them; nested values with brackets and quotes inside strings.
        let mut base = payload();
        base.as_object_mut().unwrap().remove("symbol");
        base.as_object_mut().unwrap().remove("log_index");
        base.as_object_mut().unwrap().remove("extra");
        let base = serde_json::to_string(&base).unwrap();
        let cases = [
            (r#""symbol":"x","log_index":1,"log_index":-2"#, false),
            (r#""symbol":"x","log_index":-2,"log_index":1"#, false),
            (r#""symb\u006fl":"x","log_index":1"#, false),
            (r#""symbol":"a\"b\u00e9","log_index":1"#, false),
            (r#""symbol":1,"log_index":1"#, false),
            (r#""symbol":"x","log_index":18446744073709551616"#, false),
            (r#""symbol":"x","log_index":1e2"#, false),
            (r#""symbol":"x","log_index":-0"#, false),
            (
                r#""symbol":"x","log_index":1,"extra":{"a":["}\"]",{"b":[]}],"c":"\\"}"#,
                true,
            ),
            (
                r#""symbol":"x","log_index":1,"delta":-9223372036854775809"#,
                false,
            ),
        ];
        for (fields, in_place) in cases {
            let text = format!("{},{fields}}}", &base[..base.len() - 1]);
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(s.conforms(&text), in_place, "{text}");
            let payload = Payload::from_json(&text).unwrap();
            assert_eq!(s.check_payload(&payload), s.check(&value), "{text}");
        }
    }

    #[test]
    fn a_conforming_payload_passes_and_nullable_fields_may_be_missing_or_null() {
        let s = transfers();
        s.validate().unwrap();
        s.check(&payload()).unwrap();
        let mut p = payload();
        p["extra"] = Value::Null;
        s.check(&p).unwrap();
        p.as_object_mut().unwrap().remove("extra");
        s.check(&p).unwrap();
        p["value"] = json!("-42");
        s.check(&p).unwrap();
        p["extra"] = json!("a string is JSON too");
        s.check(&p).unwrap();
    }

    #[test]
    fn each_payload_problem_names_the_field_expected_and_found() {
        let s = transfers();
        let with = |field: &str, v: Value| {
            let mut p = payload();
            p[field] = v;
            s.check(&p).unwrap_err()
        };
        let cases = [
            (
                with("log_index", json!(-1)),
                "field \"log_index\": expected an integer in u64 range, found number -1",
            ),
            (
                with("delta", json!(1.5)),
                "field \"delta\": expected an integer in i64 range, found number 1.5",
            ),
            (
                with("delta", json!(u64::MAX)),
                "field \"delta\": expected an integer in i64 range, found number 18446744073709551615",
            ),
            (
                with("price", json!("3.0")),
                "field \"price\": expected a number, found string \"3.0\"",
            ),
            (
                with("ok", json!(1)),
                "field \"ok\": expected a bool, found number 1",
            ),
            (
                with("symbol", json!(["USDT"])),
                "field \"symbol\": expected a string, found an array",
            ),
            (
                with("value", json!(1000)),
                "field \"value\": expected a string of decimal digits (bigint), e.g. \"1000\", found number 1000",
            ),
            (
                with("value", json!("1e21")),
                "field \"value\": expected a string of decimal digits (bigint), e.g. \"1000\", found string \"1e21\"",
            ),
            (
                with("value", json!("9".repeat(79))),
                &format!(
                    "field \"value\": expected a string of decimal digits (bigint), e.g. \"1000\", found string {:?}...",
                    "9".repeat(40)
                ),
            ),
            (
                with("token_address", json!("dac17f95")),
                "field \"token_address\": expected a 0x-prefixed string of an even number of hex digits (hex), found string \"dac17f95\"",
            ),
            (
                with("token_address", json!("0xabc")),
                "field \"token_address\": expected a 0x-prefixed string of an even number of hex digits (hex), found string \"0xabc\"",
            ),
            (
                with("token_address", json!("0xzz")),
                "field \"token_address\": expected a 0x-prefixed string of an even number of hex digits (hex), found string \"0xzz\"",
            ),
            (
                with("symbol", Value::Null),
                "field \"symbol\" is null: expected a string, and the field is not nullable",
            ),
            (
                with("surprise", json!(1)),
                "field \"surprise\" is not declared in the record schema (declared: token_address, value, log_index, delta, price, ok, symbol, extra)",
            ),
        ];
        for (err, message) in cases {
            assert_eq!(err.to_string(), message);
            let field = err.field().unwrap();
            assert!(message.contains(&format!("{field:?}")), "{err:?}");
        }

        let mut p = payload();
        p.as_object_mut().unwrap().remove("log_index");
        let err = s.check(&p).unwrap_err();
        assert_eq!(
            err,
            PayloadError::Missing {
                field: "log_index".into(),
                expected: FieldType::UInt64
            }
        );
        assert_eq!(
            err.to_string(),
            "field \"log_index\" is missing: expected an integer in u64 range, and the field is not nullable"
        );

        let err = s.check(&json!([1, 2])).unwrap_err();
        assert_eq!(err.field(), None);
        assert_eq!(
            err.to_string(),
            "the payload is an array, expected a JSON object"
        );
    }

    #[test]
    fn an_extra_field_is_refused_even_when_a_nullable_one_is_missing() {
        let s = transfers();
        let mut p = payload();
        p.as_object_mut().unwrap().remove("extra");
        p["extras"] = json!({});
        let err = s.check(&p).unwrap_err();
        assert_eq!(err.field(), Some("extras"));
    }

    #[test]
    fn invalid_schemas_name_the_field() {
        let cases = [
            (
                RecordSchema::new().required("", FieldType::Bool, ""),
                "invalid record schema: field \"\" (#0): the name is empty",
            ),
            (
                RecordSchema::new()
                    .required("a", FieldType::Bool, "")
                    .required("Value", FieldType::Bool, ""),
                "invalid record schema: field \"Value\" (#1): not a column identifier: use \
                 lowercase letters, digits and '_', starting with a letter or '_'",
            ),
            (
                RecordSchema::new().required("1st", FieldType::Bool, ""),
                "invalid record schema: field \"1st\" (#0): not a column identifier: use \
                 lowercase letters, digits and '_', starting with a letter or '_'",
            ),
            (
                RecordSchema::new().required("from address", FieldType::Hex, ""),
                "invalid record schema: field \"from address\" (#0): not a column identifier: \
                 use lowercase letters, digits and '_', starting with a letter or '_'",
            ),
            (
                RecordSchema::new()
                    .required("value", FieldType::BigInt, "")
                    .nullable("value", FieldType::String, ""),
                "invalid record schema: field \"value\" (#1): the name is declared twice",
            ),
            (
                RecordSchema::new().required("x".repeat(56), FieldType::Bool, ""),
                &format!(
                    "invalid record schema: field {:?} (#0): the name is 56 characters long; at \
                     most 55 are allowed",
                    "x".repeat(56)
                ),
            ),
        ];
        for (schema, message) in cases {
            let err = schema.validate().unwrap_err();
            assert_eq!(err.to_string(), message);
        }
        RecordSchema::new()
            .required("_private", FieldType::Bool, "")
            .required("x".repeat(55), FieldType::Bool, "")
            .required("erc20_v2", FieldType::Bool, "")
            .validate()
            .unwrap();
    }

    #[test]
    fn the_schema_round_trips_through_json() {
        let s = transfers();
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            text.starts_with(
                r#"{"fields":[{"name":"token_address","type":"hex","nullable":false,"description":"token contract"}"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"{"name":"log_index","type":"uint64","nullable":false}"#));
        assert_eq!(serde_json::from_str::<RecordSchema>(&text).unwrap(), s);
        for ty in [
            FieldType::Bool,
            FieldType::Int64,
            FieldType::UInt64,
            FieldType::Float64,
            FieldType::String,
            FieldType::BigInt,
            FieldType::Hex,
            FieldType::Json,
        ] {
            assert_eq!(
                serde_json::to_value(ty).unwrap(),
                Value::String(ty.as_str().into())
            );
        }
    }
}
