//! Parameter settings and their evaluation for one tensor: scalars, gradients interpolated
//! over a slice's layers, and `{filter, value}` conditional lists (mergekit §1.4–1.7), read
//! from the recipe's YAML values with pydantic's coercions.

use serde_json::Value as Json;

/// A scalar or a gradient (list of numbers interpolated over the layers of a slice).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// One number for every layer.
    Scalar(f64),
    /// A gradient.
    Gradient(Vec<f64>),
}

/// One entry of a conditional list.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditional {
    /// Substring of the tensor name this entry applies to (`None` or `*`: every tensor).
    pub filter: Option<String>,
    /// The value when the filter matches.
    pub value: Value,
}

/// A parameter setting as written in a recipe.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// A plain value.
    Value(Value),
    /// A list of conditional entries; the first match wins, no match falls through to the
    /// next precedence level.
    Conditional(Vec<Conditional>),
}

impl Value {
    /// The value at position `t` in `[0, 1]` within a slice (§1.6).
    pub fn at(&self, t: f64) -> f64 {
        match self {
            Value::Scalar(v) => *v,
            Value::Gradient(g) => interpolate(g, t),
        }
    }
}

impl Setting {
    /// Evaluates the setting for tensor `name` at slice position `t`; `None` when a
    /// conditional list has no matching entry.
    pub fn eval(&self, name: &str, t: f64) -> Option<f64> {
        match self {
            Setting::Value(v) => Some(v.at(t)),
            Setting::Conditional(entries) => entries
                .iter()
                .find(|c| filter_matches(c.filter.as_deref(), name))
                .map(|c| c.value.at(t)),
        }
    }
}

/// Whether a conditional filter applies to tensor `name`: absent, `*`, or a plain substring.
pub fn filter_matches(filter: Option<&str>, name: &str) -> bool {
    match filter {
        None | Some("*") => true,
        Some(f) => name.contains(f),
    }
}

/// mergekit's gradient interpolation: `s = t·(n−1)`, linear between the neighbouring entries.
pub fn interpolate(g: &[f64], t: f64) -> f64 {
    match g.len() {
        0 => f64::NAN,
        1 => g[0],
        n => {
            let s = t * (n - 1) as f64;
            let i0 = (s as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let f = s - i0 as f64;
            (1.0 - f) * g[i0] + f * g[i1]
        }
    }
}

/// Position of layer `k` of a slice with `len` layers: `k/(len−1)`, or 1 for a one-layer
/// slice. Pre- and post-layer tensors use 0.
pub fn layer_t(k: usize, len: usize) -> f64 {
    if len > 1 {
        k as f64 / (len - 1) as f64
    } else {
        1.0
    }
}

fn number(v: &Json) -> std::result::Result<f64, String> {
    match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Json::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Json::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number, found the string {s:?}")),
        Json::Null => Err("expected a number, found null".into()),
        Json::Array(_) => Err("expected a number, found a list".into()),
        Json::Object(_) => Err("expected a number, found a mapping".into()),
    }
}

fn value(v: &Json) -> std::result::Result<Value, String> {
    match v {
        Json::Array(items) => {
            if items.is_empty() {
                return Err("a gradient needs at least one number".into());
            }
            Ok(Value::Gradient(
                items
                    .iter()
                    .map(number)
                    .collect::<std::result::Result<_, _>>()?,
            ))
        }
        other => Ok(Value::Scalar(number(other)?)),
    }
}

/// Reads a parameter setting as pydantic coerces it (§1.4): numbers, booleans and numeric
/// strings, gradients, `{filter, value}` lists.
pub(super) fn setting(v: &Json) -> std::result::Result<Setting, String> {
    match v {
        Json::Array(items) if items.iter().any(|i| i.is_object()) => {
            let mut entries = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Json::Object(map) = item else {
                    return Err(format!(
                        "entry {i} of a conditional list must be a {{filter, value}} mapping"
                    ));
                };
                // other keys were reported by the key check (mergekit ignores them)
                let filter = match map.get("filter") {
                    None | Some(Json::Null) => None,
                    Some(Json::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(format!(
                            "filter of entry {i} must be a string, found {other}"
                        ));
                    }
                };
                let val = map
                    .get("value")
                    .ok_or_else(|| format!("conditional entry {i} has no `value`"))?;
                entries.push(Conditional {
                    filter,
                    value: value(val).map_err(|m| format!("entry {i}: {m}"))?,
                });
            }
            Ok(Setting::Conditional(entries))
        }
        Json::Object(_) => Err(
            "a single {filter, value} mapping is not a valid setting; write it as a list: \
             `- filter: ...` / `  value: ...`"
                .into(),
        ),
        other => Ok(Setting::Value(value(other)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn spec_gradient_examples() {
        let g = [0.0, 0.5, 0.3, 0.7, 1.0];
        let at = |k| interpolate(&g, layer_t(k, 32));
        assert_eq!(at(0), 0.0);
        assert!(close(at(1), 0.064516));
        assert!(close(at(8), 0.493548));
        assert!(close(at(15), 0.312903));
        assert!(close(at(16), 0.325806));
        assert!(close(at(24), 0.729032));
        assert_eq!(at(31), 1.0);
        let g = [0.0, 0.3, 0.7, 1.0];
        assert_eq!(interpolate(&g, layer_t(0, 40)), 0.0);
        assert!(close(interpolate(&g, layer_t(13, 40)), 0.3));
        assert!(close(interpolate(&g, layer_t(20, 40)), 0.515385));
        assert_eq!(interpolate(&g, layer_t(39, 40)), 1.0);
        assert_eq!(layer_t(0, 1), 1.0);
    }

    #[test]
    fn conditional_first_match_and_fallthrough() {
        let s = Setting::Conditional(vec![
            Conditional {
                filter: Some("self_attn".into()),
                value: Value::Scalar(0.1),
            },
            Conditional {
                filter: Some("mlp".into()),
                value: Value::Gradient(vec![1.0, 0.0]),
            },
        ]);
        assert_eq!(
            s.eval("model.layers.0.self_attn.q_proj.weight", 0.0),
            Some(0.1)
        );
        assert_eq!(
            s.eval("model.layers.0.mlp.up_proj.weight", 0.25),
            Some(0.75)
        );
        assert_eq!(s.eval("model.norm.weight", 0.0), None);
        let s = Setting::Conditional(vec![Conditional {
            filter: Some("*".into()),
            value: Value::Scalar(2.0),
        }]);
        assert_eq!(s.eval("anything", 0.0), Some(2.0));
    }
}
