//! A JSON document that keeps its keys in file order, so that an agent's
//! settings come back byte for byte after `setup` and `setup --remove`
//! (`serde_json::Value` sorts keys, and its `preserve_order` feature would
//! change the key order of every `--json` output in the workspace).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// A JSON value; objects keep their key order.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as serde_json read it.
    Number(serde_json::Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in file order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses a document; empty text is an empty object (a file not there yet).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::Object(Vec::new()));
        }
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
    }

    /// Two-space pretty text with a final newline, as the agents write it;
    /// empty text when nothing is left (the file is then removed).
    pub fn render(&self) -> Result<String, String> {
        if matches!(self, Self::Object(fields) if fields.is_empty()) {
            return Ok(String::new());
        }
        let mut text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        text.push('\n');
        Ok(text)
    }

    /// The object under `key`, created empty (at the end) when absent.
    pub fn object_at(&mut self, key: &str) -> Result<&mut Self, String> {
        let Self::Object(fields) = self else {
            return Err("is not a JSON object".into());
        };
        let at = match fields.iter().position(|(k, _)| k == key) {
            Some(at) => at,
            None => {
                fields.push((key.to_owned(), Self::Object(Vec::new())));
                fields.len() - 1
            }
        };
        let value = &mut fields[at].1;
        if matches!(value, Self::Object(_)) {
            Ok(value)
        } else {
            Err(format!("`{key}` is not a JSON object; fix it by hand"))
        }
    }

    /// Sets `key`, in place when present, else at the end.
    pub fn set(&mut self, key: &str, value: Self) {
        if let Self::Object(fields) = self {
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some((_, old)) => *old = value,
                None => fields.push((key.to_owned(), value)),
            }
        }
    }

    /// Removes `key` (nothing when absent).
    pub fn remove(&mut self, key: &str) {
        if let Self::Object(fields) = self {
            fields.retain(|(k, _)| k != key);
        }
    }

    /// The value under `key`, if any.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Self> {
        match self {
            Self::Object(fields) => fields.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Removes `key` when it holds an empty object or array (one setup
    /// created, now emptied by `--remove`).
    pub fn prune(&mut self, key: &str) {
        let empty = match self.get_mut(key) {
            Some(Self::Object(fields)) => fields.is_empty(),
            Some(Self::Array(items)) => items.is_empty(),
            _ => false,
        };
        if empty {
            self.remove(key);
        }
    }

    /// A string value.
    pub fn str(text: &str) -> Self {
        Self::String(text.to_owned())
    }

    /// An array of strings.
    pub fn strings<S: AsRef<str>>(items: &[S]) -> Self {
        Self::Array(items.iter().map(|s| Self::str(s.as_ref())).collect())
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => s.serialize_unit(),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Number(n) => n.serialize(s),
            Self::String(text) => s.serialize_str(text),
            Self::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(n)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, text: &str) -> Result<Json, E> {
        Ok(Json::str(text))
    }

    fn visit_string<E>(self, text: String) -> Result<Json, E> {
        Ok(Json::String(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields: Vec<(String, Json)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            // JSON.parse keeps the last of duplicate keys; so do we.
            fields.retain(|(old, _)| *old != k);
            fields.push((k, v));
        }
        Ok(Json::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_comes_back_byte_for_byte() {
        let text = "{\n  \"zeta\": 1,\n  \"alpha\": [\n    true,\n    null,\n    1.5\n  ],\n  \"m\": {},\n  \"s\": \"é\\\"\"\n}\n";
        let doc = Json::parse(text).map_err(|e| e.to_string());
        assert_eq!(doc.and_then(|d| d.render()), Ok(text.to_owned()));
    }

    #[test]
    fn bad_json_is_an_error_and_empty_is_an_empty_object() {
        assert!(Json::parse("{").is_err());
        assert_eq!(Json::parse(""), Ok(Json::Object(Vec::new())));
        assert_eq!(Json::Object(Vec::new()).render(), Ok(String::new()));
        let mut not_object = Json::parse("[1]").unwrap_or(Json::Null);
        assert!(not_object.object_at("x").is_err());
    }
}
