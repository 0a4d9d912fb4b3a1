//! Parameter checking: a Rust equivalent of ocs's `@ocs_agent.param` decorator and its
//! `ParamHandler`, with the same defaults, casts, type rules, choices, checks, stray-key
//! refusal and error texts (ocs 0.12.1, `ocs/ocs_agent.py`).
//!
//! Declare an op's parameters with [`OpOptions::param`](crate::OpOptions::param): a `start`
//! whose params fail is refused with `[-1, <ocs's error text>, {}]` before any session
//! exists, as with `@param`. Inside a body, [`ParamHandler`] checks parameters the way
//! `ParamHandler.get` does; a [`ParamError`] returned with `?` ends the session with
//! `ERROR: <text>`, as in ocs.
//!
//! Values are JSON, seen as Python sees them after `json.loads`: a JSON integer is an `int`,
//! a number with a fraction or exponent a `float`, `true`/`false` a `bool` (which Python
//! also counts as an `int`), an array a `list`, an object a `dict`.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

/// The Python type a parameter must have (ocs's `type=`), after any cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `int`: a JSON integer, or a bool (Python's `bool` is an `int`).
    Int,
    /// `float`: a JSON number with a fraction or exponent; an `int` (or bool) is converted,
    /// as ocs does ("free cast from int to float").
    Float,
    /// `str`.
    Str,
    /// `bool`.
    Bool,
    /// `list`: a JSON array.
    List,
    /// `dict`: a JSON object.
    Dict,
    /// `tuple`: a JSON array (ocs converts the list when no other cast is given).
    Tuple,
}

impl ParamType {
    fn python(self) -> &'static str {
        match self {
            ParamType::Int => "<class 'int'>",
            ParamType::Float => "<class 'float'>",
            ParamType::Str => "<class 'str'>",
            ParamType::Bool => "<class 'bool'>",
            ParamType::List => "<class 'list'>",
            ParamType::Dict => "<class 'dict'>",
            ParamType::Tuple => "<class 'tuple'>",
        }
    }
}

/// A conversion applied before the type check (ocs's `cast=`), with Python's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    /// `str`: Python's `str()` of the value (`True`, `None`, `[1, 'a']`, `1e+16`, ...).
    Str,
    /// `int`: floats truncate toward zero, bools are 0/1, strings parse as Python does.
    Int,
    /// `float`: ints and bools convert, strings parse as Python does (non-finite results
    /// are refused: JSON cannot carry them).
    Float,
    /// `bool`: Python truthiness (`bool("false")` is `True`).
    Bool,
    /// `str.lower` (strings only).
    Lower,
    /// `str.upper` (strings only).
    Upper,
    /// `list`: a string becomes its characters, a dict its keys.
    List,
    /// `tuple`: as `list`; the value then counts as a tuple for [`ParamType::Tuple`].
    Tuple,
}

impl Cast {
    fn python(self) -> &'static str {
        match self {
            Cast::Str => "<class 'str'>",
            Cast::Int => "<class 'int'>",
            Cast::Float => "<class 'float'>",
            Cast::Bool => "<class 'bool'>",
            Cast::Lower => "<method 'lower' of 'str' objects>",
            Cast::Upper => "<method 'upper' of 'str' objects>",
            Cast::List => "<class 'list'>",
            Cast::Tuple => "<class 'tuple'>",
        }
    }
}

type CheckFn = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// One declared parameter: ocs's `@param(key, default=..., type=..., cast=..., choices=...,
/// check=..., treat_none_as_missing=...)`.
///
/// ```
/// use ocs_feed::{Cast, Param, ParamType};
/// let gain = Param::new("gain").default(1.0).ty(ParamType::Float)
///     .check(|v| v.as_f64().is_some_and(|g| g > 0.0));
/// let mode = Param::new("mode").default("fast").cast(Cast::Lower).choices(["fast", "slow"]);
/// let count = Param::new("count").ty(ParamType::Int); // required
/// # let _ = (gain, mode, count);
/// ```
#[derive(Clone)]
pub struct Param {
    key: String,
    default: Option<Value>,
    ty: Option<ParamType>,
    cast: Option<Cast>,
    choices: Option<Vec<Value>>,
    check: Option<CheckFn>,
    treat_none_as_missing: bool,
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Param")
            .field("key", &self.key)
            .field("default", &self.default)
            .field("ty", &self.ty)
            .field("cast", &self.cast)
            .field("choices", &self.choices)
            .field("check", &self.check.is_some())
            .field("treat_none_as_missing", &self.treat_none_as_missing)
            .finish()
    }
}

impl Param {
    /// A required parameter (no default): missing or `null` is an error.
    pub fn new(key: impl Into<String>) -> Param {
        Param {
            key: key.into(),
            default: None,
            ty: None,
            cast: None,
            choices: None,
            check: None,
            treat_none_as_missing: true,
        }
    }

    /// The parameter's name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value used when the parameter is missing (or `null`, see
    /// [`Param::treat_none_as_missing`]); `Value::Null` is Python's `default=None`.
    pub fn default(mut self, value: impl Into<Value>) -> Param {
        self.default = Some(value.into());
        self
    }

    /// The required type, checked after the cast.
    pub fn ty(mut self, ty: ParamType) -> Param {
        self.ty = Some(ty);
        self
    }

    /// A conversion applied first.
    pub fn cast(mut self, cast: Cast) -> Param {
        self.cast = Some(cast);
        self
    }

    /// The allowed values (compared after the cast, with Python's `==`: `1 == 1.0 == True`).
    pub fn choices<V: Into<Value>>(mut self, choices: impl IntoIterator<Item = V>) -> Param {
        self.choices = Some(choices.into_iter().map(Into::into).collect());
        self
    }

    /// A validity check on the final value; `false` refuses it.
    pub fn check(mut self, check: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Param {
        self.check = Some(Arc::new(check));
        self
    }

    /// Whether `{"key": null}` counts as missing (default `true`, as in ocs). With `false`, an
    /// explicit `null` is taken as is and only an absent key is missing.
    pub fn treat_none_as_missing(mut self, yes: bool) -> Param {
        self.treat_none_as_missing = yes;
        self
    }
}

/// A parameter refused, with ocs's text (e.g. `Param 'x'=abc is not of required type
/// (<class 'int'>)`).
///
/// Returned with `?` from an op body, it ends the session with `ERROR: <text>` (success
/// false), as a `ParamError` raised in an ocs op does. It deliberately does not implement
/// `std::error::Error`, so that this conversion, not the generic one, applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    message: String,
}

impl ParamError {
    /// ocs's text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ParamError> for crate::OpError {
    fn from(e: ParamError) -> crate::OpError {
        crate::OpError::new(format!("ERROR: {}", e.message))
    }
}

fn err(message: String) -> ParamError {
    ParamError { message }
}

/// Checks parameters one at a time, as ocs's `ParamHandler` (for use inside an op body).
///
/// ```
/// use ocs_feed::{Param, ParamHandler, ParamType};
/// let params = serde_json::json!({"speed": 3}).as_object().unwrap().clone();
/// let mut h = ParamHandler::new(&params);
/// let speed = h.get(&Param::new("speed").ty(ParamType::Float)).unwrap();
/// assert_eq!(speed, serde_json::json!(3.0));
/// h.check_for_strays(&[]).unwrap();
/// ```
#[derive(Debug)]
pub struct ParamHandler<'a> {
    params: &'a Map<String, Value>,
    checked: HashSet<String>,
}

impl<'a> ParamHandler<'a> {
    /// A handler over the params an op was started with.
    pub fn new(params: &'a Map<String, Value>) -> ParamHandler<'a> {
        ParamHandler {
            params,
            checked: HashSet::new(),
        }
    }

    /// The parameter's final value (`Value::Null` for a `null` default), or ocs's error.
    pub fn get(&mut self, param: &Param) -> Result<Value, ParamError> {
        self.checked.insert(param.key.clone());
        get(self.params, param)
    }

    /// Refuses keys not yet read with [`ParamHandler::get`] (nor in `ignore`).
    pub fn check_for_strays(&self, ignore: &[&str]) -> Result<(), ParamError> {
        let weird: Vec<Value> = self
            .params
            .keys()
            .filter(|k| !self.checked.contains(*k) && !ignore.contains(&k.as_str()))
            .map(|k| Value::String(k.clone()))
            .collect();
        if weird.is_empty() {
            Ok(())
        } else {
            Err(err(format!(
                "params included unexpected values: {}",
                py_repr(&Value::Array(weird))
            )))
        }
    }
}

/// Checks `params` against the declared `specs` as ocs's `@param` prescreen does; returns the
/// processed params (defaults filled in, casts applied), in declaration order.
pub(crate) fn prescreen(
    specs: &[Param],
    params: &Map<String, Value>,
    check_strays: bool,
) -> Result<Map<String, Value>, ParamError> {
    let mut handler = ParamHandler::new(params);
    let mut out = Map::new();
    for spec in specs {
        let value = handler.get(spec)?;
        out.insert(spec.key.clone(), value);
    }
    if check_strays {
        handler.check_for_strays(&[])?;
    }
    Ok(out)
}

/// What ocs's `@param` checks when the decorator runs: the default (or `None`) must pass.
pub(crate) fn validate_spec(spec: &Param) -> Result<(), ParamError> {
    let probe = match &spec.default {
        Some(_) => spec.clone(),
        None => spec.clone().default(Value::Null),
    };
    get(&Map::new(), &probe).map(|_| ())
}

fn get(params: &Map<String, Value>, p: &Param) -> Result<Value, ParamError> {
    let key = &p.key;
    let given = params.get(key);
    let is_unset =
        matches!(given, None | Some(Value::Null)) && (p.treat_none_as_missing || given.is_none());
    let mut value = if is_unset {
        match &p.default {
            None => {
                return Err(err(format!(
                    "Param '{key}' is required and must not be None"
                )))
            }
            Some(d) => d.clone(),
        }
    } else {
        given.cloned().unwrap_or(Value::Null)
    };
    if value.is_null() {
        return Ok(value);
    }
    let mut is_tuple = false;
    if let Some(cast) = p.cast {
        value = apply_cast(cast, &value).ok_or_else(|| {
            err(format!(
                "Param '{key}'={} could not be cast to {}.",
                py_str(&value),
                cast.python()
            ))
        })?;
        is_tuple = cast == Cast::Tuple;
    }
    if let Some(ty) = p.ty {
        if ty == ParamType::Float {
            if let Some(f) = int_value(&value) {
                value = float(f as f64);
            }
        }
        if ty == ParamType::Tuple && value.is_array() && matches!(p.cast, None | Some(Cast::Tuple))
        {
            is_tuple = true;
        }
        let ok = match ty {
            ParamType::Int => int_value(&value).is_some() || is_big_int(&value),
            ParamType::Float => value.as_number().is_some_and(Number::is_f64),
            ParamType::Str => value.is_string(),
            ParamType::Bool => value.is_boolean(),
            ParamType::List => value.is_array() && !is_tuple,
            ParamType::Dict => value.is_object(),
            ParamType::Tuple => is_tuple,
        };
        if !ok {
            let shown = if is_tuple {
                py_tuple_str(&value)
            } else {
                py_str(&value)
            };
            return Err(err(format!(
                "Param '{key}'={shown} is not of required type ({})",
                ty.python()
            )));
        }
    }
    if let Some(choices) = &p.choices {
        if !choices.iter().any(|c| py_eq(&value, c)) {
            return Err(err(format!(
                "Param '{key}'={} is not in allowed set ({})",
                py_str(&value),
                py_repr(&Value::Array(choices.clone()))
            )));
        }
    }
    if let Some(check) = &p.check {
        if !check(&value) {
            return Err(err(format!(
                "Param '{key}' failed validity check (see docs?)."
            )));
        }
    }
    Ok(value)
}

/// A Python `int` (bools included) that fits in i128.
fn int_value(v: &Value) -> Option<i128> {
    match v {
        Value::Bool(b) => Some(i128::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        _ => None,
    }
}

fn is_big_int(_v: &Value) -> bool {
    // serde_json reads integers beyond u64 as floats: they are not ints here.
    false
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn int_to_value(i: i128) -> Option<Value> {
    if let Ok(v) = i64::try_from(i) {
        Some(Value::from(v))
    } else {
        u64::try_from(i).ok().map(Value::from)
    }
}

fn apply_cast(cast: Cast, v: &Value) -> Option<Value> {
    match cast {
        Cast::Str => Some(Value::String(py_str(v))),
        Cast::Int => match v {
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64()?;
                if !f.is_finite() {
                    return None;
                }
                int_to_value(f.trunc() as i128)
            }
            Value::String(s) => parse_py_int(s).and_then(int_to_value),
            _ => int_value(v).and_then(int_to_value),
        },
        Cast::Float => match v {
            Value::Number(n) if n.is_f64() => Some(v.clone()),
            Value::String(s) => parse_py_float(s).filter(|f| f.is_finite()).map(float),
            _ => int_value(v).map(|i| float(i as f64)),
        },
        Cast::Bool => Some(Value::Bool(py_truthy(v))),
        Cast::Lower => v.as_str().map(|s| Value::String(s.to_lowercase())),
        Cast::Upper => v.as_str().map(|s| Value::String(s.to_uppercase())),
        Cast::List | Cast::Tuple => match v {
            Value::Array(_) => Some(v.clone()),
            Value::String(s) => Some(Value::Array(
                s.chars().map(|c| Value::String(c.to_string())).collect(),
            )),
            Value::Object(m) => Some(Value::Array(
                m.keys().map(|k| Value::String(k.clone())).collect(),
            )),
            _ => None,
        },
    }
}

fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// Digits with single underscores between them, as Python's numeric literals allow.
fn strip_underscores(s: &str) -> Option<String> {
    let b = s.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'_' {
            let before = i > 0 && b[i - 1].is_ascii_digit();
            let after = i + 1 < b.len() && b[i + 1].is_ascii_digit();
            if !(before && after) {
                return None;
            }
        }
    }
    Some(s.replace('_', ""))
}

fn parse_py_int(s: &str) -> Option<i128> {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty() || !digits.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let digits = strip_underscores(digits)?;
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: i128 = digits.parse().ok()?;
    Some(if neg { -n } else { n })
}

fn parse_py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if ["inf", "infinity", "nan"].contains(&body) {
        return lower.parse().ok();
    }
    if !t
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.' | b'e' | b'E' | b'_'))
    {
        return None;
    }
    strip_underscores(t)?.parse().ok()
}

/// Python's `==` between JSON values (`1 == 1.0 == True`).
fn py_eq(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::Bool(x) => Some(f64::from(u8::from(*x))),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => match (int_value(a), int_value(b)) {
            (Some(x), Some(y)) => x == y,
            _ => match (num(a), num(b)) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            },
        },
    }
}

/// Python's `str()` of a JSON value.
pub(crate) fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_tuple_str(v: &Value) -> String {
    match v {
        Value::Array(a) if a.len() == 1 => format!("({},)", py_repr(&a[0])),
        Value::Array(a) => format!("({})", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        other => py_str(other),
    }
}

/// Python's `repr()` of a JSON value.
pub(crate) fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => py_float_repr(f),
            _ => n.to_string(),
        },
        Value::String(s) => py_str_repr(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's `repr()` of a float: the shortest round-trip digits, positional for exponents
/// from -5 to 15, otherwise `d.ddde+XX`.
pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(p: &Param, params: Value) -> Result<Value, String> {
        let m = params.as_object().unwrap().clone();
        get(&m, p).map_err(|e| e.message)
    }

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0.0"),
            (2.5e-7, "2.5e-07"),
            (1.5e300, "1.5e+300"),
            (123456789.125, "123456789.125"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn python_reprs() {
        assert_eq!(
            py_repr(&json!([1, "a", null, true, 2.5, {"k": "v"}])),
            "[1, 'a', None, True, 2.5, {'k': 'v'}]"
        );
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!("a\"b'c")), "'a\"b\\'c'");
        assert_eq!(py_str(&json!("plain")), "plain");
    }

    #[test]
    fn types_casts_and_errors_are_ocs_texts() {
        let int = Param::new("x").default(1).ty(ParamType::Int);
        assert_eq!(run(&int, json!({})), Ok(json!(1)));
        assert_eq!(run(&int, json!({"x": true})), Ok(json!(true)));
        assert_eq!(
            run(&int, json!({"x": 7.5})),
            Err("Param 'x'=7.5 is not of required type (<class 'int'>)".into())
        );
        let f = Param::new("g").ty(ParamType::Float);
        assert_eq!(run(&f, json!({"g": 2})), Ok(json!(2.0)));
        assert_eq!(
            run(&f, json!({})),
            Err("Param 'g' is required and must not be None".into())
        );
        let c = Param::new("r").cast(Cast::Float);
        assert_eq!(run(&c, json!({"r": " 2_5.5 "})), Ok(json!(25.5)));
        assert_eq!(
            run(&c, json!({"r": "abc"})),
            Err("Param 'r'=abc could not be cast to <class 'float'>.".into())
        );
        let i = Param::new("i").cast(Cast::Int);
        assert_eq!(run(&i, json!({"i": -2.7})), Ok(json!(-2)));
        assert_eq!(run(&i, json!({"i": " +1_000 "})), Ok(json!(1000)));
        let m = Param::new("m").cast(Cast::Lower).choices(["fast", "slow"]);
        assert_eq!(run(&m, json!({"m": "SLOW"})), Ok(json!("slow")));
        assert_eq!(
            run(&m, json!({"m": "Med"})),
            Err("Param 'm'=med is not in allowed set (['fast', 'slow'])".into())
        );
        let n = Param::new("n").choices([1, 2]);
        assert_eq!(run(&n, json!({"n": true})), Ok(json!(true)), "True == 1");
        assert_eq!(run(&n, json!({"n": 2.0})), Ok(json!(2.0)));
        let t = Param::new("t").ty(ParamType::Tuple);
        assert_eq!(run(&t, json!({"t": [1]})), Ok(json!([1])));
        let t = Param::new("t").cast(Cast::Tuple).ty(ParamType::List);
        assert_eq!(
            run(&t, json!({"t": [1]})),
            Err("Param 't'=(1,) is not of required type (<class 'list'>)".into())
        );
        let k = Param::new("k").check(|v| v.as_f64().is_some_and(|x| x > 0.0));
        assert_eq!(
            run(&k, json!({"k": 0})),
            Err("Param 'k' failed validity check (see docs?).".into())
        );
        let keep = Param::new("z").default(5).treat_none_as_missing(false);
        assert_eq!(run(&keep, json!({"z": null})), Ok(Value::Null));
        assert_eq!(run(&keep, json!({})), Ok(json!(5)));
    }

    #[test]
    fn strays_are_listed_in_params_order_and_specs_are_validated() {
        let specs = [Param::new("x").default(1)];
        let p = json!({"x": 1, "zz": 2, "aa": 3});
        let e = prescreen(&specs, p.as_object().unwrap(), true).unwrap_err();
        assert_eq!(e.message, "params included unexpected values: ['zz', 'aa']");
        assert!(prescreen(&specs, p.as_object().unwrap(), false).is_ok());
        let bad = Param::new("x").default("one").ty(ParamType::Int);
        assert_eq!(
            validate_spec(&bad).unwrap_err().message,
            "Param 'x'=one is not of required type (<class 'int'>)"
        );
        assert!(validate_spec(&Param::new("y").ty(ParamType::Int)).is_ok());
        let e: crate::OpError = ParamError {
            message: "m".into(),
        }
        .into();
        assert_eq!(e.message(), "ERROR: m");
    }
}
