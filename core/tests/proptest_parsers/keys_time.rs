//! `sluice_core::keys` (key format, credentials, digests), `sluice_core::time` (RFC 3339,
//! budget durations and windows), and the small readers of other untrusted bytes (request
//! paths, route names, shared-data records, announcement messages).

use proptest::prelude::*;
use proptest::sample::Index;
use sluice_core::endpoint::{Endpoint, RouteSet};
use sluice_core::fleet::announced_names;
use sluice_core::keys::{KEY_LEN, KEY_PREFIX, KeyFormatError, KeyHash, bearer_token, check_format, key_from_random};
use sluice_core::limits::{STATE_LEN, ScopeState};
use sluice_core::time::{BudgetDuration, Timestamp, format_rfc3339_ms, parse_rfc3339};

use crate::common::{config, hostile_bytes, odd_string};

/// CSPRNG output as `sluice key new` feeds it (64 bytes), or shorter.
fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..80)
}

fn a_key() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 64).prop_filter_map("enough bytes below 248", |r| key_from_random(&r))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix milliseconds from 0000-01-01 to 9999-12-31 (what four-digit years can write).
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

proptest! {
    #![proptest_config(config(512))]

    // ---- keys -------------------------------------------------------------------------------

    /// Any presented credential: checked without panicking; accepted only in the key format.
    #[test]
    fn any_credential_is_checked_safely(bytes in hostile_bytes(), text in odd_string()) {
        for candidate in [bytes.as_slice(), text.as_bytes(), [KEY_PREFIX.as_bytes(), &bytes].concat().as_slice()] {
            if check_format(candidate).is_ok() {
                prop_assert_eq!(candidate.len(), KEY_LEN);
                prop_assert!(candidate.starts_with(KEY_PREFIX.as_bytes()));
                prop_assert!(candidate.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'));
            }
        }
    }

    /// Keys made from CSPRNG output always pass their own check.
    #[test]
    fn generated_keys_always_parse(random in random_bytes()) {
        let usable = random.iter().filter(|b| **b < 248).count();
        match key_from_random(&random) {
            Some(key) => {
                prop_assert!(usable >= 32);
                prop_assert_eq!(key.len(), KEY_LEN);
                prop_assert_eq!(check_format(key.as_bytes()), Ok(()));
            }
            None => prop_assert!(usable < 32),
        }
    }

    /// Changing, dropping or adding one character of a key is always refused (the checksum
    /// catches every single-character change).
    #[test]
    fn a_one_character_change_is_refused(key in a_key(), at in any::<Index>(), byte in any::<u8>(), edit in 0u8..3) {
        let mut bad = key.clone().into_bytes();
        let i = at.index(bad.len());
        match edit {
            0 => {
                prop_assume!(bad[i] != byte);
                bad[i] = byte;
            }
            1 => {
                bad.remove(i);
            }
            _ => bad.insert(i, byte),
        }
        let err = check_format(&bad);
        prop_assert!(err.is_err(), "{:?} accepted", String::from_utf8_lossy(&bad));
        if edit == 0 && i >= KEY_PREFIX.len() && byte.is_ascii_alphanumeric() {
            prop_assert_eq!(err, Err(KeyFormatError::BadChecksum));
        }
    }

    /// `Authorization` values: a token only after `Bearer ` (any case), trimmed, non-empty.
    #[test]
    fn bearer_tokens_are_extracted_safely(value in hostile_bytes(), scheme in prop::sample::select(&["Bearer ", "bearer ", "BEARER ", "Basic ", ""][..])) {
        let header = [scheme.as_bytes(), &value].concat();
        if let Some(token) = bearer_token(&header) {
            prop_assert!(header[..7].eq_ignore_ascii_case(b"bearer "));
            prop_assert!(!token.is_empty());
            prop_assert_eq!(token, header[7..].trim_ascii());
        }
    }

    /// Key digests: any text is read or refused; a digest's text reads back as itself.
    #[test]
    fn digests_round_trip(key in hostile_bytes(), text in odd_string()) {
        let _ = KeyHash::from_hex(&text);
        let hash = KeyHash::of(&key);
        prop_assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        prop_assert_eq!(KeyHash::from_hex(&format!("sha256:{}", hash.to_hex().to_uppercase())), Some(hash));
        let json = serde_json::to_string(&hash).unwrap();
        prop_assert_eq!(serde_json::from_str::<KeyHash>(&json).unwrap(), hash);
    }

    // ---- time -------------------------------------------------------------------------------

    /// Any text as a timestamp or a duration: read or refused, never a panic.
    #[test]
    fn any_text_as_time(text in prop_oneof![
        odd_string(),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?",
        "[0-9]{0,25}(s|m|h|d|w|mo|y|)",
    ]) {
        let _ = parse_rfc3339(&text);
        let _ = Timestamp::parse(&text);
        if let Some(d) = BudgetDuration::parse(&text) {
            // What the config says is what the config serialises to, and reads back.
            let json = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<BudgetDuration>(&json).ok(), Some(d), "{} -> {}", text, json);
        }
    }

    /// A valid RFC 3339 timestamp reads as the instant it names: offsets shift it, fractions
    /// are dropped, a bare date is its midnight, and formatting gives the same fields back.
    #[test]
    fn valid_timestamps_read_exactly(
        year in 0i64..=9999, month in 1u32..=12, day in any::<Index>(),
        hour in 0i64..24, minute in 0i64..60, second in 0i64..60,
        frac in "(\\.[0-9]{1,12})?", off_h in 0i64..24, off_m in 0i64..60, plus in any::<bool>(),
    ) {
        let day = day.index(days_in_month(year, month) as usize) as u32 + 1;
        let date = format!("{year:04}-{month:02}-{day:02}");
        let time = format!("{hour:02}:{minute:02}:{second:02}");
        let utc = parse_rfc3339(&format!("{date}T{time}{frac}Z")).unwrap();
        let midnight = parse_rfc3339(&date).unwrap();
        prop_assert_eq!(utc, midnight + hour * 3600 + minute * 60 + second);
        prop_assert_eq!(parse_rfc3339(&format!("{date}t{time}z")), Some(utc));
        let sign = if plus { '+' } else { '-' };
        let offset = (off_h * 3600 + off_m * 60) * if plus { 1 } else { -1 };
        prop_assert_eq!(parse_rfc3339(&format!(" {date} {time}{sign}{off_h:02}:{off_m:02} ")), Some(utc - offset));
        prop_assert_eq!(format_rfc3339_ms(utc * 1000), format!("{date}T{time}.000Z"));
    }

    /// Impossible dates and times are refused.
    #[test]
    fn impossible_dates_are_refused(year in 0i64..=9999, month in 0u32..=99, day in 0u32..=99, hour in 0u32..=99) {
        let date = format!("{year:04}-{month:02}-{day:02}");
        let valid_date = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
        prop_assert_eq!(parse_rfc3339(&date).is_some(), valid_date);
        let stamp = format!("{date}T{hour:02}:00:00Z");
        prop_assert_eq!(parse_rfc3339(&stamp).is_some(), valid_date && hour < 24);
    }

    /// Formatting any instant never panics; within four-digit years it reads back (to the second).
    #[test]
    fn format_then_parse_round_trips(ms in prop_oneof![any::<i64>(), MIN_MS..=MAX_MS]) {
        let text = format_rfc3339_ms(ms);
        if (MIN_MS..=MAX_MS).contains(&ms) {
            prop_assert_eq!(parse_rfc3339(&text), Some(ms.div_euclid(1000)), "{}", text);
        }
    }

    /// Durations: `N` and a unit is N units; the serialised form reads back the same; budget
    /// windows always contain the instant they are asked about.
    #[test]
    fn durations_and_windows(n in prop_oneof![1u64..1000, any::<u32>().prop_map(u64::from), 1u64..=(u64::from(u32::MAX) * 604_800), 1u64..],
                             unit in prop::sample::select(&[("s", 1u64), ("m", 60), ("h", 3600), ("d", 86_400), ("w", 604_800)][..]),
                             now_ms in any::<u64>()) {
        let parsed = BudgetDuration::parse(&format!("{n}{}", unit.0));
        let longest = u64::from(u32::MAX) * 7 * 86_400;
        // `30d` is LiteLLM's month; thirty days in any other unit are seconds.
        let expected = if (n, unit.0) == (30, "d") {
            Some(BudgetDuration::CalendarMonth)
        } else {
            n.checked_mul(unit.1).filter(|s| *s <= longest).map(BudgetDuration::Seconds)
        };
        prop_assert_eq!(parsed, expected);
        for d in parsed.into_iter().chain([BudgetDuration::CalendarMonth]) {
            let json = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<BudgetDuration>(&json).ok(), Some(d), "{:?} -> {}", d, json);
            let (start, end) = (d.period_start_secs(now_ms), d.period_end_secs(now_ms));
            let now = now_ms / 1000;
            prop_assert!(start <= now && now < end, "{:?} at {}: [{}, {})", d, now_ms, start, end);
        }
    }

    // ---- other untrusted bytes ----------------------------------------------------------------

    /// Request paths and `allowed_routes` names: any bytes are recognised or refused.
    #[test]
    fn paths_and_route_names(path in hostile_bytes(), names in prop::collection::vec(odd_string(), 0..4), query in "(\\?[ -~]{0,10})?") {
        let _ = Endpoint::from_path(&path);
        let _ = RouteSet::from_names(&names);
        for e in Endpoint::ALL {
            prop_assert_eq!(Endpoint::from_path(format!("{}{query}", e.route()).as_bytes()), Some(e));
        }
    }

    /// Shared-data counter records: anything decodes (to a fresh state if it is not a record);
    /// a record decodes to what was encoded.
    #[test]
    fn scope_state_records(bytes in prop::collection::vec(any::<u8>(), 0..120), fields in any::<[u64; 12]>()) {
        let _ = ScopeState::decode(&bytes);
        let [window, requests, tokens, period, spend_nanos, reserved_nanos, remote_window, remote_requests, remote_tokens,
             parallel_epoch, parallel_current, parallel_previous] = fields;
        let s = ScopeState {
            window, requests, tokens, period, spend_nanos, reserved_nanos, remote_window, remote_requests, remote_tokens,
            parallel_epoch, parallel_current, parallel_previous,
        };
        let encoded = s.encode();
        prop_assert_eq!(encoded.len(), STATE_LEN);
        prop_assert_eq!(ScopeState::decode(&encoded), s);
    }

    /// Announcement messages: non-empty lines of UTF-8, garbage skipped.
    #[test]
    fn announcements(bytes in hostile_bytes()) {
        for name in announced_names(&bytes) {
            prop_assert!(!name.is_empty() && !name.contains('\n'));
        }
    }
}
