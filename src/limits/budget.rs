//! Spend budgets: UTC calendar days and months. A request reserves its estimated cost at
//! admission (see [`Budget::reserve`]) and settles it to what it cost when it ends, so that
//! requests admitted together cannot spend past the budget between them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::store::{Full, SpendCounter};

/// A budget: at most `limit` micro-dollars per period.
#[derive(Debug)]
pub struct Budget {
    pub period: Period,
    /// In this process (with a shared store: this instance's share, for `on_error: local`).
    pub limit: u64,
    pub spent: Arc<SpendCounter>,
    /// With a shared store: the budget's key there (its period is added) and its limit.
    pub shared: Option<Arc<str>>,
    pub shared_limit: u64,
}

impl Budget {
    /// Reserves `micros` of the current period, or says it does not fit.
    pub fn reserve(&self, micros: u64, unix_secs: u64) -> Result<Reservation, Full> {
        let (index, _) = self.period.at(unix_secs);
        self.spent.reserve(index, self.limit, micros)?;
        Ok(Reservation {
            counter: self.spent.clone(),
            period: self.period,
            index,
            micros,
        })
    }
}

/// What a request holds of a budget until it ends; given back on drop if never settled.
#[derive(Debug)]
pub struct Reservation {
    counter: Arc<SpendCounter>,
    period: Period,
    /// The period it was taken in.
    index: u64,
    micros: u64,
}

impl Reservation {
    /// Replaces the reservation by what the request cost.
    pub fn settle(&mut self, spent: u64, unix_secs: u64) {
        let (now, _) = self.period.at(unix_secs);
        let reserved = std::mem::take(&mut self.micros);
        self.counter.settle(self.index, reserved, now, spent);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.micros > 0 {
            self.counter.settle(self.index, self.micros, self.index, 0);
        }
    }
}

/// A budget period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

const DAY_SECS: u64 = 86_400;

/// (year, month 1..=12) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month)
}

/// Days since 1970-01-01 of the first day of (year, month) (days_from_civil).
fn first_day(year: u64, month: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

impl Period {
    /// The index of the period holding `unix_secs`, and the seconds left in it.
    pub fn at(self, unix_secs: u64) -> (u64, u64) {
        let days = unix_secs / DAY_SECS;
        match self {
            Self::Day => (days, (days + 1) * DAY_SECS - unix_secs),
            Self::Month => {
                let (y, m) = civil(days);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (y * 12 + m, first_day(ny, nm) * DAY_SECS - unix_secs)
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: u64 = 1_795_266_000;

    fn budget(limit: u64) -> Budget {
        Budget {
            period: Period::Day,
            limit,
            spent: Arc::default(),
            shared: None,
            shared_limit: limit,
        }
    }

    #[test]
    fn reservations_admitted_together_fit_the_budget_and_settle_to_the_cost() {
        let b = budget(100);
        let mut first = b.reserve(60, NOON).unwrap();
        // 60 + 50 would pass the limit while the first is in flight; alone it would fit.
        assert_eq!(b.reserve(50, NOON).unwrap_err(), Full { held: true });
        let second = b.reserve(40, NOON).unwrap();
        first.settle(30, NOON);
        assert_eq!(b.spent.spent(Period::Day.at(NOON).0), 30);
        // 30 spent, 40 held: 30 more fit, 31 do not.
        assert_eq!(b.reserve(31, NOON).unwrap_err(), Full { held: true });
        drop(second);
        // Given back unsettled: spends nothing.
        assert_eq!(b.spent.spent(Period::Day.at(NOON).0), 30);
        let _third = b.reserve(70, NOON).unwrap();
        // More than what is left even with nothing in flight.
        assert_eq!(b.reserve(71, NOON).unwrap_err(), Full { held: false });
    }

    #[test]
    fn a_spent_budget_refuses_even_a_free_request_until_the_next_period() {
        let b = budget(100);
        b.reserve(100, NOON).unwrap().settle(120, NOON);
        assert_eq!(b.reserve(0, NOON).unwrap_err(), Full { held: false });
        let tomorrow = NOON + 86_400;
        let _r = b.reserve(100, tomorrow).unwrap();
        // A request that began yesterday costs today's budget when it ends.
        let c = budget(100);
        let mut late = c.reserve(100, NOON).unwrap();
        late.settle(5, tomorrow);
        assert_eq!(c.spent.spent(Period::Day.at(NOON).0), 0);
        assert_eq!(c.spent.spent(Period::Day.at(tomorrow).0), 5);
        assert!(c.reserve(95, tomorrow).is_ok());
    }

    #[test]
    fn days_and_months_end_at_utc_midnight() {
        // 2026-11-21T13:00:00Z
        let t = 1_795_266_000;
        let (day, left) = Period::Day.at(t);
        assert_eq!(day, t / 86_400);
        assert_eq!(left, 11 * 3600);
        let (month, left) = Period::Month.at(t);
        assert_eq!(month, 2026 * 12 + 11);
        // Until 2026-12-01T00:00:00Z: the rest of the 21st and 9 more days.
        assert_eq!(left, 11 * 3600 + 9 * 86_400);
        // Year end and a leap February.
        assert_eq!(Period::Month.at(1_798_761_599), (2026 * 12 + 12, 1));
        assert_eq!(
            Period::Month.at(1_709_164_800).0,
            2024 * 12 + 2,
            "2024-02-29"
        );
        assert_eq!(
            Period::Month.at(1_709_251_200).0,
            2024 * 12 + 3,
            "2024-03-01"
        );
    }
}
