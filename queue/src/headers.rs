//! The AMQP headers exploder puts on job messages, besides the schema
//! version (`exploder_common::job::SCHEMA_HEADER`): the job's bookkeeping
//! while it moves between work queues, backoff tiers and the dead-letter
//! queue. Workers write them; `exploder dlq` reads them.

use lapin::types::{AMQPValue, FieldTable, LongString};

/// Transient failures so far (which backoff tier comes next).
pub const ATTEMPT: &str = "x-exploder-attempt";
/// Times an image job parked waiting for its layers.
pub const WAITS: &str = "x-exploder-waits";
/// Deliveries interrupted so far: the worker holding the job died or lost
/// the broker (see the worker's delivery limit).
pub const INTERRUPTED: &str = "x-exploder-interrupted";
/// Why the job failed (the last transient error, or the dead-letter reason).
pub const ERROR: &str = "x-exploder-error";
/// The work queue a dead-lettered job came from.
pub const QUEUE: &str = "x-exploder-queue";

/// A header of `headers`, if present.
pub fn get<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    headers.inner().get(name)
}

/// An integer header, whatever width the publisher chose.
pub fn int(headers: &FieldTable, name: &str) -> Option<i64> {
    get(headers, name).and_then(value_int)
}

/// A text header.
pub fn text(headers: &FieldTable, name: &str) -> Option<String> {
    get(headers, name).and_then(value_text)
}

pub fn value_int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

pub fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The bookkeeping a job carries on when it is published again (to a
/// backoff tier, back to its work queue, to the dead-letter queue): every
/// `x-exploder-*` header but the schema version, which the publisher sets.
/// The broker's own headers (`x-death`, `x-delivery-count`) stay behind.
pub fn carried(headers: Option<&FieldTable>) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in headers.map(|h| h.inner().iter()).into_iter().flatten() {
        if k.as_str().starts_with("x-exploder-")
            && k.as_str() != exploder_common::job::SCHEMA_HEADER
        {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Sets an integer header.
pub fn set_int(headers: &mut FieldTable, name: &str, value: i64) {
    headers.insert(name.into(), AMQPValue::LongLongInt(value));
}

/// Sets a text header.
pub fn set_text(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(
        name.into(),
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_is_carried_and_the_brokers_headers_are_not() {
        let mut h = FieldTable::default();
        set_int(&mut h, ATTEMPT, 2);
        set_text(&mut h, ERROR, "registry 503");
        set_int(&mut h, exploder_common::job::SCHEMA_HEADER, 1);
        set_int(&mut h, "x-delivery-count", 3);
        h.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let out = carried(Some(&h));
        assert_eq!(int(&out, ATTEMPT), Some(2));
        assert_eq!(text(&out, ERROR).as_deref(), Some("registry 503"));
        assert_eq!(out.inner().len(), 2);
        assert!(carried(None).inner().is_empty());
    }

    #[test]
    fn integers_of_any_width_read() {
        let mut h = FieldTable::default();
        h.insert(WAITS.into(), AMQPValue::ShortShortUInt(7));
        h.insert(ATTEMPT.into(), AMQPValue::LongInt(-1));
        assert_eq!(int(&h, WAITS), Some(7));
        assert_eq!(int(&h, ATTEMPT), Some(-1));
        assert_eq!(int(&h, INTERRUPTED), None);
    }
}
