//! What the broker and the operator read from the client port's X.509 certificate, from its DER
//! bytes: when it stops being valid (`notAfter`), so each can say how long it has left before
//! clients refuse it (the broker: a log line at load and the
//! `iggy_tls_certificate_expiry_timestamp_seconds` gauge; the operator: `status.tls` and the
//! `CertificateValid` condition); and the names it is for (subjectAltName), because a client
//! connecting by a name the certificate does not carry is refused with nothing on the broker's
//! side to say so.
//!
//! Only the path to those fields is walked: Certificate → TBSCertificate → its fields in order,
//! each a DER tag-length-value, everything else skipped by its length, so no ASN.1 library is
//! needed (this crate stays as light as its lightest user). Anything malformed on the way gives
//! `None` (or no names).

/// A certificate with less than this left is reported as expiring soon: by then a renewal
/// should have happened (cert-manager renews at a third of the lifetime left), so one that has
/// not is worth a warning while clients still accept the old one.
pub const EXPIRY_WARNING_SECONDS: i64 = 14 * 86_400;

/// DER tags of the TBSCertificate's fields.
const SEQUENCE: u8 = 0x30;
const EXPLICIT_VERSION: u8 = 0xA0;
const INTEGER: u8 = 0x02;
const EXPLICIT_EXTENSIONS: u8 = 0xA3;
const OBJECT_ID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// GeneralName choices of a subjectAltName: `[2] dNSName`, `[7] iPAddress` (implicit tags).
const DNS_NAME: u8 = 0x82;
const IP_ADDRESS: u8 = 0x87;
/// The subjectAltName extension's id, 2.5.29.17, DER-encoded.
const SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1D, 0x11];

/// The fields of a certificate's TBSCertificate this module reads.
struct Tbs<'a> {
    validity: &'a [u8],
    extensions: Option<&'a [u8]>,
}

/// Walks Certificate → TBSCertificate: (version), serialNumber, signature, issuer, validity,
/// subject, subjectPublicKeyInfo, (issuerUniqueID), (subjectUniqueID), (extensions).
fn tbs(der: &[u8]) -> Option<Tbs<'_>> {
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
    let mut fixed = [&[][..]; 6];
    for (field, expected) in fixed
        .iter_mut()
        .zip([INTEGER, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE])
    {
        let (tag, content, after) = element(rest)?;
        if tag != expected {
            return None;
        }
        *field = content;
        rest = after;
    }
    let mut extensions = None;
    while !rest.is_empty() {
        let (tag, content, after) = element(rest)?;
        if tag == EXPLICIT_EXTENSIONS {
            extensions = Some(content);
        }
        rest = after;
    }
    Some(Tbs {
        validity: fixed[3],
        extensions,
    })
}

/// Seconds since the Unix epoch at which the certificate in `der` expires.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let validity = tbs(der)?.validity;
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

/// The DNS names and IP addresses the certificate in `der` is for (its subjectAltName), as
/// text: what clients check the name they connect to against. Empty when it has none or when
/// `der` is malformed.
pub fn names(der: &[u8]) -> Vec<String> {
    subject_alt_names(der).unwrap_or_default()
}

fn subject_alt_names(der: &[u8]) -> Option<Vec<String>> {
    let (tag, mut list, _) = element(tbs(der)?.extensions?)?;
    if tag != SEQUENCE {
        return None;
    }
    while !list.is_empty() {
        let (_, extension, after) = element(list)?;
        list = after;
        let (tag, id, mut rest) = element(extension)?;
        if tag != OBJECT_ID || id != SUBJECT_ALT_NAME {
            continue;
        }
        let (tag, _, after_critical) = element(rest)?;
        if tag == BOOLEAN {
            rest = after_critical;
        }
        let (tag, value, _) = element(rest)?;
        let (sequence, mut general_names, _) = element(value)?;
        if tag != OCTET_STRING || sequence != SEQUENCE {
            return None;
        }
        let mut found = Vec::new();
        while !general_names.is_empty() {
            let (tag, name, after) = element(general_names)?;
            general_names = after;
            match (tag, name.len()) {
                (DNS_NAME, _) => found.push(String::from_utf8_lossy(name).into_owned()),
                (IP_ADDRESS, 4) => {
                    let octets: [u8; 4] = name.try_into().ok()?;
                    found.push(std::net::Ipv4Addr::from(octets).to_string());
                }
                (IP_ADDRESS, 16) => {
                    let octets: [u8; 16] = name.try_into().ok()?;
                    found.push(std::net::Ipv6Addr::from(octets).to_string());
                }
                _ => {}
            }
        }
        return Some(found);
    }
    None
}

/// Whether a certificate for `names` (its subjectAltName entries, as [`names`] gives them) is
/// valid for a client connecting to `host`, as TLS clients check it (RFC 6125): a DNS name
/// matches exactly, ignoring ASCII case and a trailing dot, and a wildcard `*.rest` matches
/// exactly one further label on the left (`*.replicas.svc` covers `a.replicas.svc`, not
/// `replicas.svc` nor `a.b.replicas.svc`). An IP address matches only itself.
pub fn covers(names: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    names.iter().any(|name| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            None => name == host,
            Some(rest) => host
                .split_once('.')
                .is_some_and(|(label, parent)| !label.is_empty() && parent == rest),
        }
    })
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
    fn reads_the_dns_names_and_addresses_a_certificate_is_for() {
        let key = rcgen::KeyPair::generate().expect("key");
        let names = vec![
            "events.default.svc".to_string(),
            "*.events-replicas.default.svc".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let der = rcgen::CertificateParams::new(names.clone())
            .expect("params")
            .self_signed(&key)
            .expect("sign")
            .der()
            .to_vec();
        assert_eq!(super::names(&der), names);
        // A certificate without the extension names nothing.
        let mut bare = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        bare.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let bare = bare.self_signed(&key).expect("sign").der().to_vec();
        assert!(super::names(&bare).is_empty());
        assert_eq!(not_after(&bare), Some(1_893_456_000));
    }

    #[test]
    fn a_name_covers_itself_and_a_wildcard_one_label() {
        let names: Vec<String> = [
            "events.default.svc",
            "*.events-replicas.default.svc",
            "10.0.0.7",
        ]
        .iter()
        .map(|n| n.to_string())
        .collect();
        assert!(covers(&names, "events.default.svc"));
        assert!(covers(&names, "Events.Default.SVC."));
        assert!(covers(&names, "events-1.events-replicas.default.svc"));
        assert!(covers(&names, "10.0.0.7"));
        assert!(!covers(&names, "events-replicas.default.svc"));
        assert!(!covers(&names, "a.events-1.events-replicas.default.svc"));
        assert!(!covers(&names, "events.default.svc.cluster.local"));
        assert!(!covers(&names, "events-primary.default.svc"));
        assert!(!covers(&names, "10.0.0.8"));
        assert!(!covers(&[], "events.default.svc"));
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
            let _ = names(&der[..cut]);
        }
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(not_after(b"not der at all"), None);
        let mut flipped = der.clone();
        flipped[0] = 0x31;
        assert_eq!(not_after(&flipped), None);
    }
}
