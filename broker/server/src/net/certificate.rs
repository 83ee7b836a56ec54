//! When an X.509 certificate stops being valid (`notAfter`), read from its DER bytes, so the
//! broker can say how long the certificate it serves has left (a log line at load, the
//! `iggy_tls_certificate_expiry_timestamp_seconds` gauge for alerts) before clients start
//! refusing it.
//!
//! Only the path to that one field is walked: Certificate → TBSCertificate → (optional
//! version), serialNumber, signature, issuer, validity → notBefore, notAfter. Each element is a
//! DER tag-length-value, and everything before the validity is skipped by its length, so no
//! ASN.1 library is needed for it. Anything malformed on the way gives `None`.

/// DER tags on the way to the validity.
const SEQUENCE: u8 = 0x30;
const EXPLICIT_VERSION: u8 = 0xA0;
const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Seconds since the Unix epoch at which the certificate in `der` expires.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (tag, certificate, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == EXPLICIT_VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for expected in [INTEGER, SEQUENCE, SEQUENCE] {
        let (tag, _, after) = element(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    match tag {
        UTC_TIME => {
            // YYMMDDHHMMSSZ; RFC 5280: YY below 50 is 20YY, else 19YY.
            let yy: i64 = text.get(0..2)?.parse().ok()?;
            let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
            unix_seconds(year, text.get(2..)?)
        }
        GENERALIZED_TIME => unix_seconds(text.get(0..4)?.parse().ok()?, text.get(4..)?),
        _ => None,
    }
}

/// One DER element at the start of `bytes`: its tag, its content, and what follows it.
fn element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits say how many length bytes follow (at most 4 here).
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

/// `MMDDHHMMSSZ` of `year` as seconds since the Unix epoch (UTC; the `Z` is required, as DER
/// requires it).
fn unix_seconds(year: i64, text: &str) -> Option<i64> {
    if text.len() != 11 || !text.ends_with('Z') {
        return None;
    }
    let field = |at: usize| -> Option<i64> { text.get(at..at + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn reads_not_after_in_both_time_encodings() {
        // Before 2050 X.509 writes UTCTime, from 2050 GeneralizedTime.
        assert_eq!(not_after(&issued_until(2027, 3, 1)), Some(1_803_859_200));
        assert_eq!(not_after(&issued_until(2049, 12, 31)), Some(2_524_521_600));
        assert_eq!(not_after(&issued_until(2050, 1, 1)), Some(2_524_608_000));
        assert_eq!(not_after(&issued_until(1999, 6, 15)), Some(929_404_800));
    }

    #[test]
    fn the_calendar_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn anything_malformed_gives_none_never_a_panic() {
        let der = issued_until(2030, 1, 1);
        for cut in 0..der.len() {
            let _ = not_after(&der[..cut]);
        }
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(not_after(b"not der at all"), None);
        let mut flipped = der.clone();
        flipped[0] = 0x31;
        assert_eq!(not_after(&flipped), None);
    }
}
