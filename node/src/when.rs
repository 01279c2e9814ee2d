//! Chain times for people: a UTC date and how far it is from the chain's own now (on a devnet
//! whose clock was advanced, the wall clock says nothing about what the contracts allow).

/// `unix` seconds as `2026-12-08 03:22:58 UTC`.
pub fn utc(unix: u64) -> String {
    let (days, seconds) = (unix / 86_400, unix % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60
    )
}

/// `unix` as [`utc`] with how long from `now`: `… (in 6d 23h)`, `… (2h 5m ago)`.
pub fn at(unix: u64, now: u64) -> String {
    match unix.cmp(&now) {
        std::cmp::Ordering::Greater => format!("{} (in {})", utc(unix), span(unix - now)),
        std::cmp::Ordering::Less => format!("{} ({} ago)", utc(unix), span(now - unix)),
        std::cmp::Ordering::Equal => format!("{} (now)", utc(unix)),
    }
}

/// A duration in its two largest units: `6d 23h`, `2h 5m`, `45s`.
pub fn span(seconds: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(seconds, |left, &(size, unit)| {
            let n = *left / size;
            *left %= size;
            Some((n, unit))
        })
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() { "0s".to_owned() } else { parts.join(" ") }
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_spans_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // `date -u -d @1796625018`
        assert_eq!(utc(1_796_625_018), "2026-12-07 06:30:18 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(span(7 * 86_400 - 3_600), "6d 23h");
        assert_eq!(span(7_500), "2h 5m");
        assert_eq!(span(86_400 + 30), "1d");
        assert_eq!(span(45), "45s");
        assert_eq!(at(100, 40), format!("{} (in 1m)", utc(100)));
        assert_eq!(at(40, 100), format!("{} (1m ago)", utc(40)));
    }
}
