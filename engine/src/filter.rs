//! Destination filters: a JSON document matched against
//! `{"id","topic","time","metadata","data"}` with the operators Outpost documents
//! (`$eq $neq $gt $gte $lt $lte $in $nin $startsWith $endsWith $exist $or $and $not`).
//!
//! One deliberate difference from Outpost's Go port: a field-level `$not`
//! (`{"status": {"$not": {"$in": [...]}}}`) works against primitive values, as
//! the filter documentation shows; Go evaluates it as "no match".

use serde_json::{Map, Value};

/// Checks that a filter document is well-formed (operators take the right shapes).
pub fn validate(schema: &Value) -> Result<(), String> {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                match k.as_str() {
                    "$or" | "$and" => {
                        let arr = v.as_array().ok_or_else(|| format!("{k} must be an array"))?;
                        arr.iter().try_for_each(validate)?;
                    }
                    "$not" => validate(v)?,
                    "$exist" => {
                        if !v.is_boolean() {
                            return Err("$exist must be a boolean".into());
                        }
                    }
                    "$eq" | "$neq" | "$gt" | "$gte" | "$lt" | "$lte" | "$in" | "$nin" | "$startsWith" | "$endsWith" => {
                    }
                    op if op.starts_with('$') => return Err(format!("unknown filter operator {op}")),
                    _ => validate(v)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(validate),
        _ => Ok(()),
    }
}

/// True when `input` satisfies `schema`. An empty schema matches everything.
pub fn matches(input: &Value, schema: &Value) -> bool {
    match_value(Some(input), schema)
}

fn match_value(input: Option<&Value>, schema: &Value) -> bool {
    match schema {
        Value::Object(map) => match_object(input, map),
        Value::Array(items) => match input {
            Some(Value::Array(have)) => items.iter().all(|want| have.iter().any(|h| match_value(Some(h), want))),
            _ => false,
        },
        prim => match input {
            Some(Value::Array(have)) => have.iter().any(|h| loose_eq(h, prim)),
            Some(v) => loose_eq(v, prim),
            None => false,
        },
    }
}

fn match_object(input: Option<&Value>, schema: &Map<String, Value>) -> bool {
    // A schema of plain fields applied to an array: any element may satisfy it.
    if let Some(Value::Array(items)) = input {
        if !schema.keys().any(|k| k.starts_with('$')) {
            return items.iter().any(|i| match_object(Some(i), schema));
        }
    }
    schema.iter().all(|(key, sub)| match key.as_str() {
        "$or" => sub
            .as_array()
            .is_some_and(|alts| alts.iter().any(|alt| match_value(input, alt))),
        "$and" => sub
            .as_array()
            .is_some_and(|all| all.iter().all(|s| match_value(input, s))),
        "$not" => !match_value(input, sub),
        "$exist" => sub.as_bool().is_some_and(|want| want == input.is_some()),
        op if op.starts_with('$') => match input {
            Some(v) => operator(op, v, sub),
            None => op == "$neq" || op == "$nin",
        },
        field => match input {
            Some(Value::Object(obj)) => match_value(obj.get(field), sub),
            // A missing parent only satisfies `{"$exist": false}`-style sub-schemas.
            _ => match_value(None, sub),
        },
    })
}

fn operator(op: &str, v: &Value, arg: &Value) -> bool {
    match op {
        "$eq" => deep_eq(v, arg),
        "$neq" => !deep_eq(v, arg),
        "$gt" => compare(v, arg).is_some_and(|o| o.is_gt()),
        "$gte" => compare(v, arg).is_some_and(|o| o.is_ge()),
        "$lt" => compare(v, arg).is_some_and(|o| o.is_lt()),
        "$lte" => compare(v, arg).is_some_and(|o| o.is_le()),
        "$in" => contains(v, arg),
        "$nin" => !contains(v, arg),
        "$startsWith" => str_test(v, arg, |s, p| s.starts_with(p)),
        "$endsWith" => str_test(v, arg, |s, p| s.ends_with(p)),
        _ => false,
    }
}

fn contains(v: &Value, arg: &Value) -> bool {
    match (v, arg) {
        (_, Value::Array(options)) => match v {
            Value::Array(have) => have.iter().any(|h| options.iter().any(|o| deep_eq(h, o))),
            _ => options.iter().any(|o| deep_eq(v, o)),
        },
        (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
        (Value::Array(have), single) => have.iter().any(|h| deep_eq(h, single)),
        _ => false,
    }
}

fn str_test(v: &Value, arg: &Value, f: impl Fn(&str, &str) -> bool) -> bool {
    let Some(s) = v.as_str() else { return false };
    match arg {
        Value::String(p) => f(s, p),
        Value::Array(ps) => ps.iter().filter_map(Value::as_str).any(|p| f(s, p)),
        _ => false,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn deep_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| deep_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| deep_eq(v, w)))
        }
        _ => loose_eq(a, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(data: Value) -> Value {
        json!({"id": "e1", "topic": "order.created", "time": "2024-01-01T00:00:00Z", "metadata": {"src": "crm"}, "data": data})
    }

    #[test]
    fn equality_and_nesting() {
        let e = ev(json!({"amount": 150, "customer": {"tier": "premium"}, "tags": ["a", "b"]}));
        assert!(matches(&e, &json!({})));
        assert!(matches(&e, &json!({"data": {"customer": {"tier": "premium"}}})));
        assert!(!matches(&e, &json!({"data": {"customer": {"tier": "basic"}}})));
        assert!(matches(&e, &json!({"data": {"amount": 150.0}})));
        assert!(matches(&e, &json!({"data": {"tags": "a"}})));
        assert!(matches(&e, &json!({"data": {"tags": ["b", "a"]}})));
        assert!(!matches(&e, &json!({"data": {"missing": 1}})));
        assert!(matches(
            &e,
            &json!({"topic": "order.created", "metadata": {"src": "crm"}})
        ));
    }

    #[test]
    fn operators() {
        let e = ev(json!({"amount": 150, "status": "paid", "name": "john doe", "tags": ["x"]}));
        assert!(matches(&e, &json!({"data": {"amount": {"$gte": 100}}})));
        assert!(!matches(&e, &json!({"data": {"amount": {"$lt": 100}}})));
        assert!(!matches(&e, &json!({"data": {"amount": {"$gt": "100"}}})));
        assert!(matches(&e, &json!({"data": {"status": {"$in": ["paid", "refunded"]}}})));
        assert!(matches(&e, &json!({"data": {"name": {"$in": "john"}}})));
        assert!(matches(&e, &json!({"data": {"tags": {"$in": "x"}}})));
        assert!(matches(&e, &json!({"data": {"status": {"$nin": ["void"]}}})));
        assert!(matches(&e, &json!({"data": {"status": {"$neq": "void"}}})));
        assert!(matches(&e, &json!({"data": {"name": {"$startsWith": ["x", "jo"]}}})));
        assert!(matches(&e, &json!({"data": {"name": {"$endsWith": "doe"}}})));
        assert!(matches(&e, &json!({"data": {"gone": {"$exist": false}}})));
        assert!(!matches(&e, &json!({"data": {"status": {"$exist": false}}})));
        assert!(matches(
            &e,
            &json!({"data": {"$or": [{"status": "x"}, {"amount": 150}]}})
        ));
        assert!(!matches(
            &e,
            &json!({"data": {"$and": [{"status": "x"}, {"amount": 150}]}})
        ));
        assert!(matches(&e, &json!({"data": {"$not": {"status": "void"}}})));
        assert!(matches(
            &e,
            &json!({"data": {"status": {"$not": {"$in": ["void", "x"]}}}})
        ));
        assert!(!matches(&e, &json!({"data": {"status": {"$not": {"$in": ["paid"]}}}})));
    }

    #[test]
    fn validation() {
        assert!(validate(&json!({"data": {"a": {"$gte": 1}}})).is_ok());
        assert!(validate(&json!({"data": {"a": {"$bogus": 1}}})).is_err());
        assert!(validate(&json!({"$or": {}})).is_err());
    }
}
