//! Calendar dates for the snapshot: ZIP entries carry MS-DOS dates, listings show UTC times.

use std::time::{SystemTime, UNIX_EPOCH};

/// The proleptic Gregorian year, month and day of `days` since 1970-01-01 (Howard Hinnant's
/// days-to-civil, in eras of 400 years).
pub fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `at` as `2026-12-06 17:45:31Z` (seconds resolution, UTC); times before 1970 read as 1970.
pub fn utc_text(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_date((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates_at_known_days() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_793), (2026, 12, 6));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }

    #[test]
    fn utc_text_is_date_and_time_of_day() {
        let at = UNIX_EPOCH + Duration::from_secs(20_793 * 86_400 + 17 * 3600 + 45 * 60 + 31);
        assert_eq!(utc_text(at), "2026-12-06 17:45:31Z");
    }
}
