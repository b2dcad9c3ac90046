//! Calendar dates for epoch seconds: the one piece of date arithmetic that
//! formats needing a civil date (kbuild's timestamp, FAT directory entries)
//! share. No clock is read anywhere: the epoch is always given.

/// Howard Hinnant's `civil_from_days`: (year, month 1-12, day 1-31) of a
/// count of days since 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(1_700_000_000 / 86_400), (2023, 11, 14));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
