//! [`Payload`]: a record's row, kept as its JSON text, and the JSON text writers the sinks share.
//!
//! A model either builds a [`serde_json::Value`] (`json!({...})`, converted with `.into()`) or
//! writes the object's text directly with [`Payload::object`], which costs one allocation a
//! record instead of a map, a key and a value each. Sinks copy the text as it is; the worker
//! checks it against the model's [`RecordSchema`](super::RecordSchema) without building a value.
//! Reading a field (`payload["value"]`, `payload.get(..)`: a payload derefs to a
//! [`Value`]) parses the text once, on first use.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A record's row as JSON text (compact, as `serde_json` writes it), usually an object.
///
/// ```
/// use model_runner_core::model::Payload;
/// use serde_json::json;
///
/// // From a value: the text is what serde_json writes for it (keys sorted).
/// let a: Payload = json!({"value": "10", "log_index": 3}).into();
/// assert_eq!(a.as_json(), r#"{"log_index":3,"value":"10"}"#);
/// // Written directly: keys in the order written.
/// let b = Payload::object().u64("log_index", 3).str("value", "10").finish();
/// assert_eq!(b.as_json(), a.as_json());
/// // Fields read as from a value; equality is by value.
/// assert_eq!(b["log_index"], 3);
/// assert_eq!(b, json!({"log_index": 3, "value": "10"}));
/// ```
#[derive(Clone)]
pub struct Payload {
    json: String,
    /// The text parsed, on first read.
    value: OnceLock<Value>,
}

impl Payload {
    /// Starts writing a JSON object (see [`PayloadWriter`]).
    pub fn object() -> PayloadWriter {
        PayloadWriter::with_capacity(128)
    }

    /// Starts writing a JSON object into a buffer of `bytes` (the usual size of a row, so it
    /// is allocated once).
    pub fn object_with_capacity(bytes: usize) -> PayloadWriter {
        PayloadWriter::with_capacity(bytes)
    }

    /// A payload from JSON text, checked to be one JSON value and kept in compact form.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        let value: Value = serde_json::from_str(json)?;
        Ok(Self::from(value))
    }

    /// The JSON text, as sinks write it.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// The payload as a value, parsed from the text on first use.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| parse(&self.json))
    }

    /// The value, if a read has parsed it already.
    pub(crate) fn parsed(&self) -> Option<&Value> {
        self.value.get()
    }

    /// Changes the payload through its value; the text is written again after `f`.
    ///
    /// ```
    /// # use model_runner_core::model::Payload;
    /// let mut p: Payload = serde_json::json!({"a": 1}).into();
    /// p.edit(|v| v["b"] = true.into());
    /// assert_eq!(p.as_json(), r#"{"a":1,"b":true}"#);
    /// ```
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        let mut value = std::mem::take(self).into_value();
        f(&mut value);
        *self = Self::from(value);
    }

    /// The payload as an owned value.
    pub fn into_value(self) -> Value {
        match self.value.into_inner() {
            Some(v) => v,
            None => parse(&self.json),
        }
    }
}

/// A payload's text as a value: it is JSON by construction.
fn parse(json: &str) -> Value {
    serde_json::from_str(json).expect("a payload's text is JSON by construction")
}

impl Default for Payload {
    /// `null`.
    fn default() -> Self {
        Self::from(Value::Null)
    }
}

impl From<Value> for Payload {
    /// The value's compact JSON text, byte for byte what `serde_json::to_string` writes.
    fn from(value: Value) -> Self {
        let mut json = String::with_capacity(128);
        write_value(&mut json, &value);
        Self {
            json,
            value: OnceLock::new(),
        }
    }
}

impl From<Payload> for Value {
    fn from(p: Payload) -> Self {
        p.into_value()
    }
}

impl Deref for Payload {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.value()
    }
}

impl PartialEq for Payload {
    /// Equal as JSON values (the same text is equal at once).
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json || self.value() == other.value()
    }
}

impl Eq for Payload {}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl PartialEq<Payload> for Value {
    fn eq(&self, other: &Payload) -> bool {
        self == other.value()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({})", self.json)
    }
}

impl fmt::Display for Payload {
    /// The JSON text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

impl Serialize for Payload {
    /// As its value. The sinks write [`Payload::as_json`] instead, without parsing.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}

/// Writes a JSON object's text field by field, for [`Payload::object`]. Keys are written in the
/// order given, each once (a key written twice is kept twice in the text, and the value view
/// keeps the last); strings are escaped as `serde_json` escapes them.
///
/// ```
/// use model_runner_core::model::Payload;
///
/// let p = Payload::object()
///     .hex("address", &[0xab; 20])
///     .display("value", &12345u128)
///     .bool("ok", true)
///     .null("note")
///     .finish();
/// assert_eq!(
///     p.as_json(),
///     r#"{"address":"0xabababababababababababababababababababab","value":"12345","ok":true,"note":null}"#
/// );
/// ```
#[derive(Debug)]
#[must_use = "a payload writer does nothing until `finish`"]
pub struct PayloadWriter {
    json: String,
}

impl PayloadWriter {
    fn with_capacity(bytes: usize) -> Self {
        let mut json = String::with_capacity(bytes.max(2));
        json.push('{');
        Self { json }
    }

    fn key(&mut self, key: &str) {
        if self.json.len() > 1 {
            self.json.push(',');
        }
        write_str(&mut self.json, key);
        self.json.push(':');
    }

    /// A string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        write_str(&mut self.json, value);
        self
    }

    /// A string field of `0x` and the bytes in lowercase hex (addresses, hashes, calldata: the
    /// [`FieldType::Hex`](super::FieldType::Hex) form).
    pub fn hex(mut self, key: &str, bytes: &[u8]) -> Self {
        self.key(key);
        self.json.reserve(bytes.len() * 2 + 4);
        self.json.push_str("\"0x");
        let mut chunk = [0u8; 64];
        for part in bytes.chunks(32) {
            let out = &mut chunk[..part.len() * 2];
            // `out` is exactly twice the part's length.
            let _ = alloy_primitives::hex::encode_to_slice(part, out);
            self.json
                .push_str(std::str::from_utf8(out).expect("hex digits are ASCII"));
        }
        self.json.push('"');
        self
    }

    /// A string field holding `value`'s `Display` text (a `U256` amount as decimal digits, the
    /// [`FieldType::BigInt`](super::FieldType::BigInt) form); escaped like any string.
    pub fn display(mut self, key: &str, value: &impl fmt::Display) -> Self {
        use fmt::Write;
        self.key(key);
        let start = self.json.len();
        self.json.push('"');
        let _ = write!(self.json, "{value}");
        if needs_escape(&self.json[start + 1..]) {
            let text = self.json.split_off(start + 1);
            self.json.truncate(start);
            write_str(&mut self.json, &text);
        } else {
            self.json.push('"');
        }
        self
    }

    /// An unsigned integer field.
    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        write_u64(&mut self.json, value);
        self
    }

    /// A signed integer field.
    pub fn i64(mut self, key: &str, value: i64) -> Self {
        self.key(key);
        self.json.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// A number field (`null` when not finite, as `serde_json` writes it).
    pub fn f64(mut self, key: &str, value: f64) -> Self {
        self.key(key);
        write_scalar(&mut self.json, &value);
        self
    }

    /// A boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        write_bool(&mut self.json, value);
        self
    }

    /// A `null` field.
    pub fn null(mut self, key: &str) -> Self {
        self.key(key);
        self.json.push_str("null");
        self
    }

    /// A field holding any JSON value (an array, a nested object, ...).
    pub fn value(mut self, key: &str, value: &Value) -> Self {
        self.key(key);
        write_value(&mut self.json, value);
        self
    }

    /// The payload.
    pub fn finish(mut self) -> Payload {
        self.json.push('}');
        Payload {
            json: self.json,
            value: OnceLock::new(),
        }
    }
}

/// Appends `v` as compact JSON: byte for byte what `serde_json::to_writer` writes (keys in the
/// map's order), with strings and unsigned integers written without serde's machinery.
pub(crate) fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => write_str(out, s),
        Value::Object(o) => {
            out.push('{');
            for (i, (k, v)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_value(out, v);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_u64() {
            Some(u) => write_u64(out, u),
            None => write_scalar(out, n),
        },
        Value::Bool(b) => write_bool(out, *b),
        Value::Null => out.push_str("null"),
    }
}

fn write_bool(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

/// Appends the decimal digits of `n`.
pub(crate) fn write_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Whether JSON escapes a character of `s` (a control character, `"` or `\`).
fn needs_escape(s: &str) -> bool {
    // Not short-circuiting, so it runs over many bytes at a time.
    s.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Appends `s` as a JSON string: copied between quotes when nothing in it needs an escape,
/// else as `serde_json` escapes it.
pub(crate) fn write_str(out: &mut String, s: &str) {
    if !needs_escape(s) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        write_scalar(out, s);
    }
}

fn write_scalar(out: &mut String, v: &(impl Serialize + ?Sized)) {
    // A string, number, bool or null always serialises, as UTF-8.
    let text = serde_json::to_string(v).expect("a JSON scalar serialises");
    out.push_str(&text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The text of a payload made from a value is serde_json's, for every kind of value and
    /// every string that needs an escape.
    #[test]
    fn text_from_a_value_is_what_serde_json_writes() {
        let values = [
            json!({"a": 1, "b": -2, "c": 1.5, "d": u64::MAX, "e": i64::MIN}),
            json!({"s": "quote \" backslash \\ newline \n tab \t nul \u{0} del \u{7f} é 😀 /"}),
            json!({"nested": {"x": [1, "two", null, true, false, {"y": []}]}, "empty": {}}),
            json!([1, 2, 3]),
            json!("just a string"),
            json!(null),
            json!(1e300),
        ];
        for v in values {
            let p = Payload::from(v.clone());
            assert_eq!(p.as_json(), serde_json::to_string(&v).unwrap());
            assert_eq!(p, v);
            assert_eq!(p.clone().into_value(), v);
        }
    }

    /// Written field by field, the text parses to the value with the same fields, and escapes
    /// as serde_json does (keys too).
    #[test]
    fn a_written_object_is_the_value_it_says() {
        let p = Payload::object_with_capacity(8)
            .str("s", "a\"b\\c\nd\u{1}é")
            .str("k\"ey", "v")
            .hex("h", &[0, 1, 0xfe, 0xff])
            .hex("long", &[0x5a; 70])
            .display("big", &alloy_primitives::U256::MAX)
            .display("odd", &"x\"y")
            .u64("u", u64::MAX)
            .i64("i", i64::MIN)
            .i64("j", 7)
            .f64("f", 0.25)
            .f64("nan", f64::NAN)
            .bool("t", true)
            .null("n")
            .value("v", &json!({"z": [1, {"q": "r"}]}))
            .finish();
        let expected = json!({
            "s": "a\"b\\c\nd\u{1}é",
            "k\"ey": "v",
            "h": "0x0001feff",
            "long": format!("0x{}", "5a".repeat(70)),
            "big": alloy_primitives::U256::MAX.to_string(),
            "odd": "x\"y",
            "u": u64::MAX,
            "i": i64::MIN,
            "j": 7,
            "f": 0.25,
            "nan": null,
            "t": true,
            "n": null,
            "v": {"z": [1, {"q": "r"}]},
        });
        assert_eq!(p, expected);
        // Every string is escaped as serde_json escapes it.
        assert!(
            p.as_json()
                .starts_with(r#"{"s":"a\"b\\c\nd\u0001é","k\"ey":"v""#)
        );
        assert_eq!(Payload::object().finish().as_json(), "{}");
    }

    #[test]
    fn serde_round_trip_is_by_value() {
        let p = Payload::object().u64("b", 2).u64("a", 1).finish();
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"a":1,"b":2}"#);
        let back: Payload = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        assert!(Payload::from_json("{").is_err());
        assert_eq!(
            Payload::from_json(" {\"a\" : 1} ").unwrap().as_json(),
            r#"{"a":1}"#
        );
    }
}
