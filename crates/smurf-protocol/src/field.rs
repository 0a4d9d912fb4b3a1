//! Reading typed fields out of a parsed JSON object, with errors that name the field.
//!
//! Every function takes the field's full dotted name (`"payload.path"`); the key looked up is
//! the part after the last dot. Optional fields treat a JSON `null` like an absent key, since
//! pysmurf sends `null` for values it does not have.

use serde_json::{Map, Value};

use crate::ParseError;

/// Names the kind of a JSON value for error messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn key(name: &'static str) -> &'static str {
    name.rsplit('.').next().unwrap_or(name)
}

fn mistyped(name: &'static str, expected: &'static str, found: &Value) -> ParseError {
    ParseError::MistypedField {
        field: name,
        expected,
        found: kind_of(found),
    }
}

/// The field's value, which may be `null`; an error if the key is absent.
pub(crate) fn required<'a>(
    map: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a Value, ParseError> {
    map.get(key(name))
        .ok_or(ParseError::MissingField { field: name })
}

/// The field's value, or `None` if the key is absent or `null`.
pub(crate) fn optional<'a>(map: &'a Map<String, Value>, name: &'static str) -> Option<&'a Value> {
    map.get(key(name)).filter(|value| !value.is_null())
}

/// The field as an object.
pub(crate) fn as_object<'a>(
    value: &'a Value,
    name: &'static str,
) -> Result<&'a Map<String, Value>, ParseError> {
    value
        .as_object()
        .ok_or_else(|| mistyped(name, "object", value))
}

/// A string that must be present and not `null`.
pub(crate) fn required_str<'a>(
    map: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, ParseError> {
    let value = required(map, name)?;
    value
        .as_str()
        .ok_or_else(|| mistyped(name, "string", value))
}

/// A string that may be absent or `null`.
pub(crate) fn optional_str<'a>(
    map: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ParseError> {
    optional(map, name)
        .map(|value| {
            value
                .as_str()
                .ok_or_else(|| mistyped(name, "string or null", value))
        })
        .transpose()
}

/// A non-negative integer that may be absent or `null`.
pub(crate) fn optional_u64(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, ParseError> {
    optional(map, name)
        .map(|value| {
            value
                .as_u64()
                .ok_or_else(|| mistyped(name, "non-negative integer or null", value))
        })
        .transpose()
}

/// A JSON number (integer or float) that may be absent or `null`.
pub(crate) fn optional_number(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, ParseError> {
    optional(map, name)
        .map(|value| {
            value
                .as_f64()
                .ok_or_else(|| mistyped(name, "number or null", value))
        })
        .transpose()
}

/// Seconds as a JSON number or a decimal string (pysmurf's `get_timestamp()` returns a
/// string), absent or `null`. Strings are trimmed; non-finite values are refused.
pub(crate) fn optional_seconds(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, ParseError> {
    const EXPECTED: &str = "number, numeric string or null";
    let Some(value) = optional(map, name) else {
        return Ok(None);
    };
    match value {
        Value::Number(n) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| mistyped(name, EXPECTED, value)),
        Value::String(s) => parse_finite(s)
            .map(Some)
            .ok_or(non_numeric_string(name, EXPECTED)),
        _ => Err(mistyped(name, EXPECTED, value)),
    }
}

/// Whole seconds as an integer, a float or a decimal string, absent or `null`.
///
/// Fractions are rounded down (towards negative infinity), so a float names the second it
/// falls in, as Python's `int(time.time())` does for times after 1970.
pub(crate) fn optional_whole_seconds(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, ParseError> {
    const EXPECTED: &str = "integer, float, numeric string or null";
    let Some(value) = optional(map, name) else {
        return Ok(None);
    };
    let seconds = match value {
        Value::Number(n) => match n.as_i64() {
            Some(whole) => Some(whole),
            None => n.as_f64().and_then(floor_to_i64),
        },
        Value::String(s) => {
            let trimmed = s.trim();
            match trimmed.parse::<i64>() {
                Ok(whole) => Some(whole),
                Err(_) => match parse_finite(trimmed) {
                    Some(float) => floor_to_i64(float),
                    None => return Err(non_numeric_string(name, EXPECTED)),
                },
            }
        }
        _ => None,
    };
    seconds
        .map(Some)
        .ok_or_else(|| mistyped(name, EXPECTED, value))
}

/// A flag sent as a boolean or as the integer 0 or 1, absent or `null`.
pub(crate) fn optional_flag(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<bool>, ParseError> {
    let Some(value) = optional(map, name) else {
        return Ok(None);
    };
    match value {
        Value::Bool(flag) => Ok(Some(*flag)),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(Some(false)),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(Some(true)),
        _ => Err(mistyped(name, "boolean, 0, 1 or null", value)),
    }
}

fn parse_finite(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|float| float.is_finite())
}

fn floor_to_i64(float: f64) -> Option<i64> {
    // 2^63 is exactly representable; every float in [-2^63, 2^63) converts without loss of
    // range.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let floor = float.floor();
    (floor.is_finite() && (-LIMIT..LIMIT).contains(&floor)).then_some(floor as i64)
}

fn non_numeric_string(name: &'static str, expected: &'static str) -> ParseError {
    ParseError::MistypedField {
        field: name,
        expected,
        found: "non-numeric string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("test input is not an object: {other}"),
        }
    }

    #[test]
    fn key_is_last_segment() {
        assert_eq!(key("payload.path"), "path");
        assert_eq!(key("id"), "id");
    }

    #[test]
    fn whole_seconds_accepts_what_publishers_send() {
        let map = object(json!({
            "int": 1_584_401_673,
            "float": 1_584_401_673.9,
            "negative_float": -0.5,
            "string": "1584401673",
            "padded": " 1584401673",
            "float_string": "1584401673.5",
            "null": null,
        }));
        let read = |name| optional_whole_seconds(&map, name).ok().flatten();
        assert_eq!(read("int"), Some(1_584_401_673));
        assert_eq!(read("float"), Some(1_584_401_673));
        assert_eq!(read("negative_float"), Some(-1));
        assert_eq!(read("string"), Some(1_584_401_673));
        assert_eq!(read("padded"), Some(1_584_401_673));
        assert_eq!(read("float_string"), Some(1_584_401_673));
        assert_eq!(read("null"), None);
        assert_eq!(read("absent"), None);
    }

    #[test]
    fn whole_seconds_refuses_out_of_range_and_words() {
        let map = object(json!({"huge": 1e300, "u64": u64::MAX, "word": "soon", "inf": "inf"}));
        for name in ["huge", "u64", "word", "inf"] {
            assert!(
                optional_whole_seconds(&map, name).is_err(),
                "{name} should be refused"
            );
        }
    }

    #[test]
    fn flag_accepts_bool_and_zero_one_only() {
        let map = object(json!({"t": true, "one": 1, "zero": 0, "two": 2, "float": 1.0, "s": "1"}));
        assert_eq!(optional_flag(&map, "t").ok(), Some(Some(true)));
        assert_eq!(optional_flag(&map, "one").ok(), Some(Some(true)));
        assert_eq!(optional_flag(&map, "zero").ok(), Some(Some(false)));
        for name in ["two", "float", "s"] {
            assert!(
                optional_flag(&map, name).is_err(),
                "{name} should be refused"
            );
        }
    }
}
