//! A tag's history: `images/<namespace>/<image>/<tag>/history`, one line
//! per change of its link, oldest first.
//!
//! ```text
//! 2026-11-24T14:00:03Z sha256:<hex> decided=2026-11-24T14:00:01.250Z registry=reg.lab:5000 repository=team/app by=webhook/registry
//! 2026-11-24T15:30:00Z unlinked decided=2026-11-24T15:30:00.004Z by=cli/rm
//! 2026-11-23T10:00:00Z sha256:<hex> decided=2026-11-23T09:59:58Z  (older: whole seconds, no origin)
//! 2026-11-22T09:00:00Z sha256:<hex>                      (older lines: no decision time)
//! ```
//!
//! The first field is when the line was written; `decided=` is when the
//! change was *decided*: the producer's look at the registry that enqueued
//! the image, or that found the tag gone. `registry=`, `repository=` and
//! `by=` say where the image came from and who decided the change, and
//! `reason=` why when there is more to say (a block) (the [`Origin`]); values are percent-encoded where they hold a space or a
//! `%`, and fields this version does not know are skipped. Jobs finish out of order, so the
//! decision time, not the write time, says which change is newest (see
//! [`crate::store::StoreLayout::link`]). Decision times have milliseconds:
//! a push and its delete within the same second are still ordered.
//! Retention reads the history to know a tag's last digests. A line torn
//! by a crash is skipped.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::job::JobSource;

/// One change of a tag's link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When the line was written (Unix seconds).
    pub at: i64,
    pub change: Change,
    /// When the change was decided (Unix milliseconds), if recorded.
    pub decided: Option<i64>,
    pub origin: Origin,
}

/// Where a change came from: the image's source, and who decided it.
/// Every part is optional: older lines have none. (Also what a digest
/// directory's `image.json` says of its source, without `by`.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The registry the image came from: `host[:port]`, `file://<root>`
    /// for a registry's storage directory, `oci:<path>` for a layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `cli/explode`, `cli/enqueue`, `cli/rm`, `webhook/<endpoint>`,
    /// `poll`, `imagestream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why, when the decision has a reason beyond the registry's word
    /// (`blocked: <the administrator's reason>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Origin {
    /// Decided by `by`, with no image (an unlink).
    pub fn by(by: &str) -> Origin {
        Origin {
            by: Some(by.to_string()),
            ..Origin::default()
        }
    }

    /// An image from `source`, decided by `by`.
    pub fn of(source: &JobSource, by: &str) -> Origin {
        Origin {
            registry: Some(source.registry_key()),
            repository: Some(source.repository().to_string()),
            by: (!by.is_empty()).then(|| by.to_string()),
            reason: None,
        }
    }

    /// Only where the image came from (what a digest directory records).
    pub fn image_source(&self) -> Origin {
        Origin {
            by: None,
            reason: None,
            ..self.clone()
        }
    }

    /// `registry/repository`, as people write it (`-` if unknown).
    pub fn source(&self) -> String {
        match (&self.registry, &self.repository) {
            (Some(r), Some(p)) => format!("{r}/{p}"),
            (Some(r), None) => r.clone(),
            _ => "-".to_string(),
        }
    }

    fn fields(&self) -> String {
        let mut out = String::new();
        for (key, value) in [
            ("registry", &self.registry),
            ("repository", &self.repository),
            ("by", &self.by),
            ("reason", &self.reason),
        ] {
            if let Some(v) = value {
                out.push_str(&format!(" {key}={}", encode_value(v)));
            }
        }
        out
    }
}

/// A field value without spaces: `%` and whitespace percent-encoded.
fn encode_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn decode_value(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Linked(Digest),
    Unlinked,
}

impl Record {
    pub fn line(&self) -> String {
        let change = match &self.change {
            Change::Linked(d) => d.to_string(),
            Change::Unlinked => "unlinked".to_string(),
        };
        let decided = self
            .decided
            .map(|d| format!(" decided={}", rfc3339_millis(d)))
            .unwrap_or_default();
        format!(
            "{} {change}{decided}{}",
            rfc3339(self.at),
            self.origin.fields()
        )
    }

    pub fn parse(line: &str) -> Option<Record> {
        let mut fields = line.split_whitespace();
        let at = parse_rfc3339(fields.next()?)?;
        let change = match fields.next()? {
            "unlinked" => Change::Unlinked,
            d => Change::Linked(d.parse().ok()?),
        };
        let (mut decided, mut origin) = (None, Origin::default());
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "decided" => decided = Some(parse_rfc3339_millis(value)?),
                "registry" => origin.registry = Some(decode_value(value)?),
                "repository" => origin.repository = Some(decode_value(value)?),
                "by" => origin.by = Some(decode_value(value)?),
                "reason" => origin.reason = Some(decode_value(value)?),
                _ => {}
            }
        }
        Some(Record {
            at,
            change,
            decided,
            origin,
        })
    }

    /// The time that orders this change against others (Unix
    /// milliseconds): when it was decided, or (older lines) when it was
    /// written.
    pub fn decided_or_written(&self) -> i64 {
        self.decided.unwrap_or(self.at * 1000)
    }
}

/// Parses a history file's text; torn or foreign lines are skipped.
pub fn parse(text: &str) -> Vec<Record> {
    text.lines().filter_map(Record::parse).collect()
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The current time in Unix milliseconds: decision times.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds
/// (`2026-11-22T15:04:05.250Z`).
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = rfc3339(ms.div_euclid(1000));
    format!(
        "{}.{:03}Z",
        secs.strip_suffix('Z').expect("rfc3339 ends in Z"),
        ms.rem_euclid(1000)
    )
}

/// Parses RFC 3339 UTC, with or without a fraction, into Unix
/// milliseconds (digits past the milliseconds are dropped).
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let secs = parse_rfc3339(s)?;
    let fraction = s.strip_suffix('Z')?.split_once('.').map_or("", |(_, f)| f);
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis = format!("{fraction:0<3}")[..3].parse::<i64>().ok()?;
    Some(secs * 1000 + millis)
}

/// The current time as RFC 3339 UTC with seconds (`2026-11-22T15:04:05Z`).
pub fn rfc3339_now() -> String {
    rfc3339(now())
}

/// Formats Unix seconds as RFC 3339 UTC (civil-from-days, Howard Hinnant).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses the UTC form [`rfc3339`] writes (`YYYY-MM-DDTHH:MM:SS[.frac]Z`;
/// the fraction is dropped) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let s = s.split_once('.').map_or(s, |(whole, _)| whole);
    let (date, time) = s.split_once('T')?;
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let mut t = time.splitn(3, ':');
    let (hh, mm, ss) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // days-from-civil (Howard Hinnant), the inverse of `rfc3339`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rfc3339_parses_what_it_formats() {
        for t in [0, 951_782_400, 1_700_000_000, 1_795_000_123] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.5Z"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("2023-13-14T22:13:20Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn milliseconds_round_trip_and_whole_seconds_still_parse() {
        for ms in [0, 1_700_000_000_250, 1_700_000_000_004, 1_700_000_000_999] {
            assert_eq!(parse_rfc3339_millis(&rfc3339_millis(ms)), Some(ms));
        }
        assert_eq!(
            rfc3339_millis(1_700_000_000_250),
            "2023-11-14T22:13:20.250Z"
        );
        assert_eq!(
            parse_rfc3339_millis("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_millis("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            parse_rfc3339_millis("2023-11-14T22:13:20.123456Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339_millis("2023-11-14T22:13:20.x1Z"), None);
    }

    #[test]
    fn history_lines_round_trip_and_old_lines_still_parse() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let linked = Record {
            at: 1_700_000_010,
            change: Change::Linked(d.clone()),
            decided: Some(1_700_000_000_250),
            origin: Origin {
                registry: Some("file:///srv/my registry".into()),
                repository: Some("team/app".into()),
                by: Some("webhook/100% real".into()),
                reason: None,
            },
        };
        let unlinked = Record {
            at: 1_700_000_020,
            change: Change::Unlinked,
            decided: Some(1_700_000_020_000),
            origin: Origin::by("cli/rm"),
        };
        assert!(
            linked.line().ends_with(
                "registry=file:///srv/my%20registry repository=team/app by=webhook/100%25%20real"
            ),
            "{}",
            linked.line()
        );
        let old = format!("2023-11-14T22:13:20Z {d}");
        let seconds = format!("2023-11-14T22:13:25Z {d} decided=2023-11-14T22:13:21Z");
        let text = format!(
            "{}\n{}\n{old}\n{seconds}\ntorn 2023-",
            linked.line(),
            unlinked.line()
        );
        let records = parse(&text);
        assert_eq!(records.len(), 4);
        assert_eq!(records[0], linked);
        assert_eq!(records[1], unlinked);
        assert_eq!(records[2].decided, None);
        assert_eq!(records[2].decided_or_written(), 1_700_000_000_000);
        assert_eq!(records[3].decided, Some(1_700_000_001_000));
        assert_eq!(records[3].origin, Origin::default());
        // A field of a later version is skipped, not fatal.
        let later = format!("2023-11-14T22:13:25Z {d} by=poll mood=sunny");
        assert_eq!(
            Record::parse(&later).unwrap().origin.by.as_deref(),
            Some("poll")
        );
    }
}
