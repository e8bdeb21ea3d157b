//! Durations (`"1m30s"`) and sizes (`"512MiB"`) as written in unit files.
//!
//! Both parsers are strict (no spaces, no long unit names) so that one spelling means one value;
//! the `suggest_*` helpers turn near misses such as `"5 secs"` into a corrected spelling for hints.

use std::fmt::Write as _;
use std::time::Duration;

const NS_PER_MS: u128 = 1_000_000;
const NS_PER_S: u128 = 1_000_000_000;

/// Duration units from largest to smallest, in nanoseconds.
const DURATION_UNITS: [(&str, u128); 7] = [
    ("d", 86_400 * NS_PER_S),
    ("h", 3_600 * NS_PER_S),
    ("m", 60 * NS_PER_S),
    ("s", NS_PER_S),
    ("ms", NS_PER_MS),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses a duration such as `"250ms"`, `"5s"`, `"1m30s"`, `"2h"`, `"1.5s"` or `"0s"`.
///
/// A duration is one or more `<number><unit>` parts, summed; units are `ms`, `s`, `m`, `h` and `d`
/// (`us` and `ns` exist so that every [`Duration`] can be written back).
/// Numbers may have a decimal fraction; there are no spaces and no negative durations.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = |why: String| format!("invalid duration {s:?}: {why}");
    if s.is_empty() {
        return Err(err("empty string".into()));
    }
    if s.starts_with('-') {
        return Err(err("durations cannot be negative".into()));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        if num.is_empty() {
            return Err(err(expected_number(after)));
        }
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(err(if after.is_empty() {
                format!("missing unit after {num}")
            } else {
                unexpected(after)
            }));
        }
        let Some(&(_, scale)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(err(format!(
                "unknown unit {unit:?}; expected one of: ms, s, m, h, d"
            )));
        };
        let part = scaled(num, scale).map_err(err)?;
        total = total
            .checked_add(part)
            .ok_or_else(|| err("too large".into()))?;
        rest = after;
    }
    let secs = u64::try_from(total / NS_PER_S).map_err(|_| err("too large".into()))?;
    let nanos =
        u32::try_from(total % NS_PER_S).expect("remainder of a division by 1e9 fits in u32");
    Ok(Duration::new(secs, nanos))
}

/// Writes a duration in its canonical short form (`"250ms"`, `"5s"`, `"1m30s"`, `"2h"`, `"0s"`);
/// [`parse_duration`] reads it back exactly.
pub fn format_duration(d: Duration) -> String {
    let mut ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, scale) in DURATION_UNITS {
        let q = ns / scale;
        if q > 0 {
            let _ = write!(out, "{q}{unit}");
            ns %= scale;
        }
    }
    out
}

/// Parses a size such as `"512MiB"`, `"1G"`, `"10MB"` or `"4096"` (bytes).
///
/// Units are case-insensitive: `KiB`, `MiB`, `GiB`, `TiB` and PM2's `K`, `M`, `G`, `T` are 1024-based;
/// `KB`, `MB`, `GB`, `TB` are 1000-based; `B` or no unit means bytes.
/// A fraction (`"1.5G"`) is rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = |why: String| format!("invalid size {s:?}: {why}");
    if s.is_empty() {
        return Err(err("empty string".into()));
    }
    if s.starts_with('-') {
        return Err(err("sizes cannot be negative".into()));
    }
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(err(expected_number(unit)));
    }
    if let Some(c) = unit.chars().find(|c| !c.is_ascii_alphabetic()) {
        return Err(err(unexpected(&unit[unit.find(c).unwrap_or(0)..])));
    }
    const K: u128 = 1024;
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => K,
        "kb" => 1_000,
        "m" | "mib" => K * K,
        "mb" => 1_000_000,
        "g" | "gib" => K * K * K,
        "gb" => 1_000_000_000,
        "t" | "tib" => K * K * K * K,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(err(format!(
                "unknown unit {unit:?}; expected one of: B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB"
            )))
        }
    };
    let bytes = scaled_floor(num, scale).map_err(err)?;
    u64::try_from(bytes).map_err(|_| err("too large".into()))
}

/// Writes a size with the largest binary unit that divides it exactly (`"512MiB"`, `"1GiB"`, `"1500B"`).
pub fn format_size(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if n >= scale && n % scale == 0 {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}B")
}

/// A corrected spelling of a duration the user probably meant (`"5 secs"` → `"5s"`), if there is one.
pub(crate) fn suggest_duration(s: &str) -> Option<String> {
    let mut out = String::new();
    for token in tokens(s) {
        match token {
            Token::Number(n) => out.push_str(n),
            Token::Word(w) => out.push_str(match w.to_ascii_lowercase().as_str() {
                "ms" | "msec" | "msecs" | "milli" | "millis" | "millisecond" | "milliseconds" => {
                    "ms"
                }
                "s" | "sec" | "secs" | "second" | "seconds" => "s",
                "m" | "min" | "mins" | "minute" | "minutes" => "m",
                "h" | "hr" | "hrs" | "hour" | "hours" => "h",
                "d" | "day" | "days" => "d",
                _ => return None,
            }),
        }
    }
    (out != s && parse_duration(&out).is_ok()).then_some(out)
}

/// A corrected spelling of a size the user probably meant (`"512 MB"` → `"512MB"`), if there is one.
pub(crate) fn suggest_size(s: &str) -> Option<String> {
    let out: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (out != s && parse_size(&out).is_ok()).then_some(out)
}

enum Token<'a> {
    Number(&'a str),
    Word(&'a str),
}

/// Splits `s` into numbers and words, dropping whitespace; `None` items never appear.
fn tokens(s: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        if !num.is_empty() {
            out.push(Token::Number(num));
            rest = after.trim_start();
            continue;
        }
        let len = rest
            .find(|c: char| c.is_whitespace() || c.is_ascii_digit())
            .unwrap_or(rest.len());
        out.push(Token::Word(&rest[..len]));
        rest = rest[len..].trim_start();
    }
    out
}

/// Splits a leading decimal number (`12`, `1.5`) off `s`.
fn split_number(s: &str) -> (&str, &str) {
    let len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s.split_at(len)
}

fn expected_number(rest: &str) -> String {
    match rest.chars().next() {
        Some(' ') => "unexpected space".into(),
        _ => format!("expected a number at {rest:?}"),
    }
}

fn unexpected(rest: &str) -> String {
    match rest.chars().next() {
        Some(' ') => "unexpected space".into(),
        Some(c) => format!("unexpected {c:?}"),
        None => "unexpected end".into(),
    }
}

/// `num * scale`, exactly; `num` is `digits[.digits]`.
fn scaled(num: &str, scale: u128) -> Result<u128, String> {
    let (value, exact) = scaled_inner(num, scale)?;
    if !exact {
        return Err("too precise: the smallest unit is 1ns".into());
    }
    Ok(value)
}

/// `num * scale`, rounded down.
fn scaled_floor(num: &str, scale: u128) -> Result<u128, String> {
    scaled_inner(num, scale).map(|(v, _)| v)
}

fn scaled_inner(num: &str, scale: u128) -> Result<(u128, bool), String> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let bad = || format!("invalid number {num:?}");
    if int.is_empty() || frac.is_some_and(|f| f.is_empty() || f.contains('.')) {
        return Err(bad());
    }
    let too_large = || "too large".to_string();
    let mut value: u128 = 0;
    for c in int.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(c - b'0')))
            .ok_or_else(too_large)?;
    }
    let mut total = value.checked_mul(scale).ok_or_else(too_large)?;
    let mut exact = true;
    if let Some(frac) = frac {
        let frac = frac.trim_end_matches('0');
        // 18 digits keep `digits * scale` (scale <= 8.64e13 ns) far below u128::MAX.
        let (kept, dropped) = frac.split_at(frac.len().min(18));
        exact = dropped.is_empty();
        let mut f: u128 = 0;
        for c in kept.bytes() {
            f = f * 10 + u128::from(c - b'0');
        }
        let denom = 10u128.pow(u32::try_from(kept.len()).expect("at most 18 digits"));
        let part = f * scale;
        exact &= part % denom == 0;
        total = total.checked_add(part / denom).ok_or_else(too_large)?;
    }
    Ok((total, exact))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid durations parse to the expected value and print back in canonical form.
    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Duration, &str)] = &[
            ("250ms", ms(250), "250ms"),
            ("5s", ms(5_000), "5s"),
            ("1m30s", ms(90_000), "1m30s"),
            ("90s", ms(90_000), "1m30s"),
            ("2h", ms(7_200_000), "2h"),
            ("1.5s", ms(1_500), "1s500ms"),
            ("0.5s", ms(500), "500ms"),
            ("0s", ms(0), "0s"),
            ("0ms", ms(0), "0s"),
            ("1d", ms(86_400_000), "1d"),
            ("1.5h", ms(5_400_000), "1h30m"),
            ("1h1m1s1ms", ms(3_661_001), "1h1m1s1ms"),
            ("1.0000s", ms(1_000), "1s"),
            ("1.5ms", Duration::from_micros(1_500), "1ms500us"),
            ("7ns", Duration::from_nanos(7), "7ns"),
        ];
        for &(input, want, canonical) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
            assert_eq!(format_duration(want), canonical, "{input}");
            assert_eq!(parse_duration(canonical), Ok(want), "{canonical}");
        }
    }

    /// Invalid durations are rejected with a message naming the problem.
    #[test]
    fn bad_durations() {
        let cases: &[(&str, &str)] = &[
            ("", "empty string"),
            ("5", "missing unit after 5"),
            ("5 secs", "unexpected space"),
            (
                "5secs",
                "unknown unit \"secs\"; expected one of: ms, s, m, h, d",
            ),
            ("5S", "unknown unit \"S\""),
            ("-5s", "durations cannot be negative"),
            ("s", "expected a number at \"s\""),
            ("fast", "expected a number at \"fast\""),
            ("5s 3m", "unexpected space"),
            ("1.s", "invalid number \"1.\""),
            (".5s", "invalid number \".5\""),
            ("1.2.3s", "invalid number \"1.2.3\""),
            ("5s!", "expected a number at \"!\""),
            ("0.0000000001s", "too precise"),
            ("99999999999999999999999999999999999999999d", "too large"),
            ("999999999999999d", "too large"),
        ];
        for &(input, want) in cases {
            let got = parse_duration(input).unwrap_err();
            assert!(
                got.starts_with(&format!("invalid duration {input:?}: {want}")),
                "{input}: {got}"
            );
        }
    }

    /// Round trip: every duration prints to a string that parses back to it.
    #[test]
    fn duration_round_trip() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = Duration::new(x % 10_000_000, (x >> 40) as u32 % 1_000_000_000);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(
            parse_duration(&format_duration(Duration::MAX)),
            Ok(Duration::MAX)
        );
    }

    /// Sizes accept PM2's 1024-based single letters, IEC and SI units, in any case.
    #[test]
    fn sizes() {
        let cases: &[(&str, u64, &str)] = &[
            ("512MiB", 512 << 20, "512MiB"),
            ("1G", 1 << 30, "1GiB"),
            ("1g", 1 << 30, "1GiB"),
            ("1GiB", 1 << 30, "1GiB"),
            ("10MB", 10_000_000, "10000000B"),
            ("100KB", 100_000, "100000B"),
            ("100kb", 100_000, "100000B"),
            ("4096", 4096, "4KiB"),
            ("1500", 1500, "1500B"),
            ("1500B", 1500, "1500B"),
            ("0", 0, "0B"),
            ("1.5K", 1536, "1536B"),
            ("2T", 2 << 40, "2TiB"),
            ("1TB", 1_000_000_000_000, "976562500KiB"),
            ("300M", 300 << 20, "300MiB"),
        ];
        for &(input, want, canonical) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input}");
            assert_eq!(format_size(want), canonical, "{input}");
            assert_eq!(parse_size(canonical), Ok(want), "{canonical}");
        }
    }

    /// Invalid sizes are rejected with a message naming the problem.
    #[test]
    fn bad_sizes() {
        let cases: &[(&str, &str)] = &[
            ("", "empty string"),
            ("1 G", "unexpected space"),
            ("1Gb!", "unexpected '!'"),
            ("1X", "unknown unit \"X\""),
            ("G", "expected a number at \"G\""),
            ("-1G", "sizes cannot be negative"),
            ("99999999T", "too large"),
        ];
        for &(input, want) in cases {
            let got = parse_size(input).unwrap_err();
            assert!(
                got.starts_with(&format!("invalid size {input:?}: {want}")),
                "{input}: {got}"
            );
        }
    }

    /// Near misses get a corrected spelling; hopeless input gets none.
    #[test]
    fn suggestions() {
        assert_eq!(suggest_duration("5 secs").as_deref(), Some("5s"));
        assert_eq!(
            suggest_duration("1 minute 30 seconds").as_deref(),
            Some("1m30s")
        );
        assert_eq!(suggest_duration("250 MS").as_deref(), Some("250ms"));
        assert_eq!(suggest_duration("5s"), None);
        assert_eq!(suggest_duration("5 fortnights"), None);
        assert_eq!(suggest_duration("5"), None);
        assert_eq!(suggest_size("512 MiB").as_deref(), Some("512MiB"));
        assert_eq!(suggest_size("512 potatoes"), None);
    }
}
