//! RFC 3339 / ISO 8601 date-times without a date library.
//!
//! Accepted forms (surrounding whitespace is ignored):
//! * `YYYY-MM-DD` — a date, taken as midnight UTC;
//! * `YYYY-MM-DDThh:mm` and `YYYY-MM-DDThh:mm:ss` — optionally followed by a
//!   fraction of 1–9 digits after the seconds (`.2931817`), then optionally by
//!   `Z` or an offset `±hh:mm` (or `±hhmm`, Salesforce's form); no offset
//!   means UTC. `T` may be a lower-case
//!   `t` or a single space, `Z` may be `z`.
//!
//! So Partner Center's `2019-02-23T02:05:23.2931817Z`, `2020-12-01T00:00:00Z`
//! `2017-11-16T16:19:06.3520276+00:00` and Salesforce's
//! `2026-11-21T19:40:01.000+0000` all parse. Everything else is
//! rejected: week or ordinal dates, basic format without separators, `24:00`,
//! leap seconds (`:60`), more than 9 fractional digits, hour-only offsets
//! (`+01`), impossible days (`2023-02-29`), and values whose UTC form
//! would leave years 0000–9999.

use std::fmt::{self, Write};

/// A calendar date and wall-clock time at a UTC offset.
///
/// Values produced by [`parse`] are always valid; the fields are public so a
/// value can also be built by hand, in which case the methods still never
/// panic but only give meaningful results for valid fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTime {
    /// Year, 0–9999 for parsed values.
    pub year: i32,
    /// Month, 1–12.
    pub month: u8,
    /// Day of the month, 1–28/29/30/31.
    pub day: u8,
    /// Hour, 0–23.
    pub hour: u8,
    /// Minute, 0–59.
    pub minute: u8,
    /// Second, 0–59.
    pub second: u8,
    /// Fraction of the second in nanoseconds, 0–999 999 999.
    pub nanos: u32,
    /// Offset from UTC in minutes (`+01:00` → 60, `Z` → 0); local time minus
    /// UTC.
    pub offset_minutes: i16,
}

/// Parses a date or date-time in one of the forms listed in the module docs;
/// `None` for anything else. Same as [`DateTime::parse`].
pub fn parse(s: &str) -> Option<DateTime> {
    DateTime::parse(s)
}

impl DateTime {
    /// Parses a date or date-time in one of the forms listed in the module
    /// docs; `None` for anything else.
    pub fn parse(s: &str) -> Option<DateTime> {
        let mut p = Cursor {
            rest: s.trim().as_bytes(),
        };
        let year = i32::from(p.digits::<4>()?);
        p.expect(b'-')?;
        let month = p.two_digits()?;
        p.expect(b'-')?;
        let day = p.two_digits()?;
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let mut dt = DateTime {
            year,
            month,
            day,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
            offset_minutes: 0,
        };
        if p.rest.is_empty() {
            return Some(dt);
        }
        match p.next()? {
            b'T' | b't' | b' ' => {}
            _ => return None,
        }
        dt.hour = p.two_digits()?;
        p.expect(b':')?;
        dt.minute = p.two_digits()?;
        if p.eat(b':') {
            dt.second = p.two_digits()?;
            if p.eat(b'.') {
                dt.nanos = p.fraction()?;
            }
        }
        if dt.hour > 23 || dt.minute > 59 || dt.second > 59 {
            return None;
        }
        match p.next() {
            None => {}
            Some(b'Z' | b'z') => {}
            Some(sign @ (b'+' | b'-')) => {
                let hours = p.two_digits()?;
                // `+01:00`, or `+0100` as Salesforce writes its datetimes
                // (`2026-11-21T19:40:01.000+0000`).
                p.eat(b':');
                let minutes = p.two_digits()?;
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let total = i16::from(hours) * 60 + i16::from(minutes);
                dt.offset_minutes = if sign == b'-' { -total } else { total };
            }
            Some(_) => return None,
        }
        if !p.rest.is_empty() {
            return None;
        }
        let utc = dt.to_utc();
        (0..=9999).contains(&utc.year).then_some(dt)
    }

    /// The UTC date-time `seconds` (plus `nanos`) after 1970-01-01T00:00:00Z.
    ///
    /// Used by the sandbox to stamp records from the system clock, so it
    /// produces the same wire format as parsed Partner Center values.
    pub fn from_unix(seconds: i64, nanos: u32) -> DateTime {
        let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
        let second_of_day = seconds.rem_euclid(86_400);
        DateTime {
            year,
            month,
            day,
            hour: u8::try_from(second_of_day / 3_600).unwrap_or(0),
            minute: u8::try_from(second_of_day % 3_600 / 60).unwrap_or(0),
            second: u8::try_from(second_of_day % 60).unwrap_or(0),
            nanos: nanos.min(999_999_999),
            offset_minutes: 0,
        }
    }

    /// The same instant expressed in UTC (offset 0), carrying across day,
    /// month and year boundaries: `2019-12-31T23:30:00-01:00` →
    /// `2020-01-01T00:30:00Z`.
    pub fn to_utc(&self) -> DateTime {
        if self.offset_minutes == 0 {
            return *self;
        }
        let minutes =
            i64::from(self.hour) * 60 + i64::from(self.minute) - i64::from(self.offset_minutes);
        let days = days_from_civil(self.year, self.month, self.day) + minutes.div_euclid(1440);
        let minute_of_day = minutes.rem_euclid(1440);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: u8::try_from(minute_of_day / 60).unwrap_or(0),
            minute: u8::try_from(minute_of_day % 60).unwrap_or(0),
            second: self.second,
            nanos: self.nanos,
            offset_minutes: 0,
        }
    }

    /// `YYYY-MM-DD` of the UTC date.
    ///
    /// This is what date-only targets receive: Partner Center's
    /// `closingDateTime` `2018-11-14T00:00:00Z` becomes `2018-11-14`. A value
    /// with an offset is converted to UTC first, so `2018-11-14T23:00:00-05:00`
    /// becomes `2018-11-15` (the local calendar date is not kept).
    pub fn date_string(&self) -> String {
        let mut out = String::with_capacity(10);
        let _ = self.write_date(&mut out);
        out
    }

    /// RFC 3339 in UTC, `YYYY-MM-DDThh:mm:ssZ`; a non-zero fraction is kept
    /// with trailing zeros trimmed (`2019-02-23T02:05:23.2931817Z`).
    pub fn utc_string(&self) -> String {
        let mut out = String::with_capacity(30);
        let _ = self.write_utc(&mut out);
        out
    }

    /// Seconds since 1970-01-01T00:00:00Z (the fraction is dropped; negative
    /// before 1970).
    pub fn unix_seconds(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.offset_minutes) * 60
    }

    /// True when `s` is exactly [`date_string`](Self::date_string), checked
    /// without allocating.
    pub(crate) fn date_string_is(&self, s: &str) -> bool {
        let mut m = Matcher { rest: s, ok: true };
        self.write_date(&mut m).is_ok() && m.ok && m.rest.is_empty()
    }

    /// True when `s` is exactly [`utc_string`](Self::utc_string), checked
    /// without allocating.
    pub(crate) fn utc_string_is(&self, s: &str) -> bool {
        let mut m = Matcher { rest: s, ok: true };
        self.write_utc(&mut m).is_ok() && m.ok && m.rest.is_empty()
    }

    fn write_date(&self, out: &mut impl Write) -> fmt::Result {
        let utc = self.to_utc();
        match utc.digits() {
            Some(d) => out.write_str(ascii(&d[..10])?),
            None => write!(out, "{:04}-{:02}-{:02}", utc.year, utc.month, utc.day),
        }
    }

    fn write_utc(&self, out: &mut impl Write) -> fmt::Result {
        let u = self.to_utc();
        match u.digits() {
            Some(d) => out.write_str(ascii(&d)?)?,
            None => write!(
                out,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                u.year, u.month, u.day, u.hour, u.minute, u.second
            )?,
        }
        if u.nanos != 0 {
            let mut nanos = u.nanos;
            let mut width: usize = 9;
            while nanos.is_multiple_of(10) {
                nanos /= 10;
                width = width.saturating_sub(1);
            }
            write!(out, ".{nanos:0width$}")?;
        }
        out.write_char('Z')
    }
}

impl DateTime {
    /// `YYYY-MM-DDThh:mm:ss`, written digit by digit: the `date`/`datetime` transforms run
    /// for every record, and padded `write!` formatting was most of their cost. `None` when
    /// a field does not fit its width (only for hand-built values); callers then format
    /// with `write!`, which gives the same text where both apply.
    fn digits(&self) -> Option<[u8; 19]> {
        let year = u16::try_from(self.year).ok().filter(|y| *y <= 9999)?;
        let two = [self.month, self.day, self.hour, self.minute, self.second];
        if two.iter().any(|v| *v > 99) {
            return None;
        }
        let mut b = *b"0000-00-00T00:00:00";
        for (i, div) in [1000u16, 100, 10, 1].into_iter().enumerate() {
            b[i] = b'0' + u8::try_from(year / div % 10).ok()?;
        }
        for (v, at) in two.into_iter().zip([5, 8, 11, 14, 17]) {
            b[at] = b'0' + v / 10;
            b[at + 1] = b'0' + v % 10;
        }
        Some(b)
    }
}

/// The text of [`DateTime::digits`] (always ASCII).
fn ascii(bytes: &[u8]) -> Result<&str, fmt::Error> {
    std::str::from_utf8(bytes).map_err(|_| fmt::Error)
}

/// Compares formatted output against a string piece by piece.
struct Matcher<'a> {
    rest: &'a str,
    ok: bool,
}

impl Write for Matcher<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.rest.strip_prefix(s) {
            Some(rest) if self.ok => self.rest = rest,
            _ => self.ok = false,
        }
        Ok(())
    }
}

/// A byte cursor for the parser.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn eat(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Exactly `N` ASCII digits (N ≤ 4) as a number.
    fn digits<const N: usize>(&mut self) -> Option<u16> {
        let mut value = 0u16;
        for _ in 0..N {
            let b = self.next()?;
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u16::from(b - b'0');
        }
        Some(value)
    }

    fn two_digits(&mut self) -> Option<u8> {
        u8::try_from(self.digits::<2>()?).ok()
    }

    /// 1–9 fraction digits as nanoseconds.
    fn fraction(&mut self) -> Option<u32> {
        let mut nanos = 0u32;
        let mut count = 0;
        while let Some((&b, rest)) = self.rest.split_first() {
            if !b.is_ascii_digit() {
                break;
            }
            if count == 9 {
                return None;
            }
            nanos = nanos * 10 + u32::from(b - b'0');
            count += 1;
            self.rest = rest;
        }
        if count == 0 {
            return None;
        }
        Some(nanos * 10u32.pow(9 - count))
    }
}

fn is_leap_year(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i32, month: u8, day: u8) -> i64 {
    let month = i64::from(month);
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(if year < 0 { i32::MIN } else { i32::MAX }),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_digits_match_padded_formatting() {
        let mut seconds = -62_167_219_200i64; // 0000-01-01T00:00:00Z
        while seconds < 253_402_300_800 {
            // 10000-01-01T00:00:00Z
            let d = DateTime::from_unix(seconds, 0);
            let padded = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                d.year, d.month, d.day, d.hour, d.minute, d.second
            );
            assert_eq!(d.utc_string(), padded);
            assert_eq!(d.date_string(), padded[..10]);
            assert!(d.utc_string_is(&padded) && d.date_string_is(&padded[..10]));
            seconds += 7_777_777;
        }
        // Out of the four-digit range (hand-built): the padded formatting still applies.
        let odd = DateTime {
            year: 12345,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
            nanos: 0,
            offset_minutes: 0,
        };
        assert_eq!(odd.utc_string(), "12345-01-02T03:04:05Z");
        assert_eq!(DateTime { year: -1, ..odd }.date_string(), "-001-01-02");
    }

    fn utc(s: &str) -> Option<String> {
        parse(s).map(|d| d.utc_string())
    }

    fn date(s: &str) -> Option<String> {
        parse(s).map(|d| d.date_string())
    }

    #[test]
    fn partner_center_formats() {
        let d = parse("2019-02-23T02:05:23.2931817Z").unwrap();
        assert_eq!(
            d,
            DateTime {
                year: 2019,
                month: 2,
                day: 23,
                hour: 2,
                minute: 5,
                second: 23,
                nanos: 293_181_700,
                offset_minutes: 0
            }
        );
        assert_eq!(d.utc_string(), "2019-02-23T02:05:23.2931817Z");
        assert_eq!(d.date_string(), "2019-02-23");
        assert_eq!(
            utc("2020-12-01T00:00:00Z").as_deref(),
            Some("2020-12-01T00:00:00Z")
        );
        assert_eq!(
            utc("2017-11-16T16:19:06.3520276+00:00").as_deref(),
            Some("2017-11-16T16:19:06.3520276Z")
        );
        assert_eq!(date("2018-11-14T00:00:00Z").as_deref(), Some("2018-11-14"));
    }

    #[test]
    fn accepted_shapes() {
        for (input, expected) in [
            ("2020-01-02", "2020-01-02T00:00:00Z"),
            ("2020-01-02T03:04", "2020-01-02T03:04:00Z"),
            ("2020-01-02T03:04:05", "2020-01-02T03:04:05Z"),
            ("2020-01-02 03:04:05", "2020-01-02T03:04:05Z"),
            ("2020-01-02t03:04:05z", "2020-01-02T03:04:05Z"),
            ("2020-01-02T03:04Z", "2020-01-02T03:04:00Z"),
            ("2020-01-02T03:04+01:00", "2020-01-02T02:04:00Z"),
            ("2020-01-02T03:04:05+0100", "2020-01-02T02:04:05Z"),
            ("2026-11-21T19:40:01.000+0000", "2026-11-21T19:40:01Z"),
            ("2020-01-02T03:04:05.5", "2020-01-02T03:04:05.5Z"),
            ("2020-01-02T03:04:05.000Z", "2020-01-02T03:04:05Z"),
            ("2020-01-02T03:04:05.120Z", "2020-01-02T03:04:05.12Z"),
            (
                "2020-01-02T03:04:05.123456789Z",
                "2020-01-02T03:04:05.123456789Z",
            ),
            (
                "2020-01-02T03:04:05.000000001Z",
                "2020-01-02T03:04:05.000000001Z",
            ),
            ("2020-01-02T03:04:05-00:00", "2020-01-02T03:04:05Z"),
            ("  2020-01-02T03:04:05Z \n", "2020-01-02T03:04:05Z"),
            ("0000-01-01", "0000-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(utc(input).as_deref(), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn offsets_cross_day_month_and_year_boundaries() {
        for (input, expected) in [
            ("2019-12-31T23:30:00-01:00", "2020-01-01T00:30:00Z"),
            ("2020-01-01T00:30:00+01:00", "2019-12-31T23:30:00Z"),
            ("2024-02-28T23:00:00-02:00", "2024-02-29T01:00:00Z"),
            ("2023-02-28T23:00:00-02:00", "2023-03-01T01:00:00Z"),
            ("2024-03-01T01:00:00+05:30", "2024-02-29T19:30:00Z"),
            ("2021-04-30T20:00:00-23:59", "2021-05-01T19:59:00Z"),
            ("2021-05-01T00:00:00.25+14:00", "2021-04-30T10:00:00.25Z"),
            ("2000-03-01T00:00:00+00:01", "2000-02-29T23:59:00Z"),
            ("1900-03-01T00:00:00+00:01", "1900-02-28T23:59:00Z"),
        ] {
            assert_eq!(utc(input).as_deref(), Some(expected), "{input:?}");
        }
        let d = parse("2019-12-31T23:30:00-01:00").unwrap();
        assert_eq!(d.offset_minutes, -60);
        assert_eq!(d.date_string(), "2020-01-01");
        assert_eq!(d.to_utc().offset_minutes, 0);
        assert_eq!(d.to_utc().unix_seconds(), d.unix_seconds());
        assert_eq!(
            date("2018-11-14T23:00:00-05:00").as_deref(),
            Some("2018-11-15")
        );
    }

    #[test]
    fn leap_years() {
        assert!(parse("2024-02-29").is_some());
        assert!(parse("2000-02-29").is_some());
        assert!(parse("2023-02-29").is_none());
        assert!(parse("1900-02-29").is_none());
        assert!(parse("2100-02-29T00:00:00Z").is_none());
    }

    #[test]
    fn rejects_invalid_values_and_shapes() {
        for input in [
            "",
            " ",
            "2020",
            "2020-01",
            "20200102",
            "2020-1-02",
            "2020-01-2",
            "2020-00-10",
            "2020-13-01",
            "2020-01-00",
            "2020-01-32",
            "2020-04-31",
            "2020-06-31",
            "2020-01-02T",
            "2020-01-02T3:04",
            "2020-01-02T03",
            "2020-01-02T0304",
            "2020-01-02T24:00:00Z",
            "2020-01-02T23:60:00Z",
            "2020-01-02T23:59:60Z",
            "2020-01-02T03:04:05.Z",
            "2020-01-02T03:04:05.1234567891Z",
            "2020-01-02T03:04:05,5Z",
            "2020-01-02T03:04:05+01",
            "2020-01-02T03:04:05+010",
            "2020-01-02T03:04:05+24:00",
            "2020-01-02T03:04:05+01:60",
            "2020-01-02T03:04:05ZZ",
            "2020-01-02T03:04:05Z trailing",
            "2020-01-02X03:04:05",
            "2020-01-02  03:04:05",
            "2020-01-02T03:04.5",
            "+2020-01-02",
            "-2020-01-02",
            "2020-W01-1",
            "2020-002",
            "02/01/2020",
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
            "２０２０-01-02",
            "2020-01-02T03:04:05Z\u{0}",
        ] {
            assert_eq!(parse(input), None, "{input:?}");
        }
    }

    #[test]
    fn unix_seconds() {
        assert_eq!(parse("1970-01-01").unwrap().unix_seconds(), 0);
        assert_eq!(
            parse("2020-12-01T00:00:00Z").unwrap().unix_seconds(),
            1_606_780_800
        );
        assert_eq!(
            parse("2019-02-23T02:05:23.9Z").unwrap().unix_seconds(),
            1_550_887_523
        );
        assert_eq!(
            parse("2020-12-01T01:00:00+01:00").unwrap().unix_seconds(),
            1_606_780_800
        );
        assert_eq!(parse("1969-12-31T23:59:59Z").unwrap().unix_seconds(), -1);
        assert_eq!(parse("0000-03-01").unwrap().unix_seconds(), -62_162_035_200);
    }

    #[test]
    fn civil_day_conversion_round_trips() {
        let mut days = days_from_civil(1600, 1, 1);
        for year in 1600..2500 {
            for month in 1..=12u8 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(year, month, day), days);
                    assert_eq!(civil_from_days(days), (year, month, day));
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn hand_built_values_never_panic() {
        let odd = DateTime {
            year: i32::MAX,
            month: 255,
            day: 255,
            hour: 255,
            minute: 255,
            second: 255,
            nanos: u32::MAX,
            offset_minutes: i16::MIN,
        };
        let _ = odd.to_utc();
        let _ = odd.utc_string();
        let _ = odd.date_string();
        let _ = odd.unix_seconds();
        let low = DateTime {
            year: i32::MIN,
            month: 0,
            day: 0,
            offset_minutes: i16::MAX,
            ..odd
        };
        let _ = low.utc_string();
        let _ = low.unix_seconds();
    }

    #[test]
    fn canonical_matchers() {
        let d = parse("2019-02-23T03:05:23.2931817+01:00").unwrap();
        assert!(d.utc_string_is("2019-02-23T02:05:23.2931817Z"));
        assert!(!d.utc_string_is("2019-02-23T02:05:23.29318170Z"));
        assert!(!d.utc_string_is("2019-02-23T02:05:23.2931817"));
        assert!(!d.utc_string_is("2019-02-23T02:05:23.2931817Zx"));
        assert!(d.date_string_is("2019-02-23"));
        assert!(!d.date_string_is("2019-02-2"));
        assert!(!d.date_string_is(""));
    }
}
