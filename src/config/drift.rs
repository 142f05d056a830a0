//! A workspace's drift settings: how drift checks plan ([`DriftMode`]), when
//! they run ([`DriftSchedule`], a cron expression parsed once at load) and
//! where drift is reported besides the API ([`DriftNotify`]). The checks
//! themselves and their reports are `drift`'s.

use serde::{Deserialize, Serialize};

/// How a drift check plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftMode {
    /// Changes made outside Terraform only.
    RefreshOnly,
    /// Also configuration that was never applied.
    Plan,
}

impl DriftMode {
    pub fn parse(s: &str) -> Option<DriftMode> {
        match s {
            "refresh_only" => Some(DriftMode::RefreshOnly),
            "plan" => Some(DriftMode::Plan),
            _ => None,
        }
    }
}

/// Where drift is reported besides the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftNotify {
    /// One issue per workspace in its repository: opened on drift, updated on
    /// later detections, closed when a check finds no drift.
    Issue,
    /// A JSON report POSTed to this URL (with a Slack-compatible `text`).
    Webhook(String),
}

/// A cron schedule for drift checks, parsed once at config load. Standard
/// five-field expressions (`0 */6 * * *`, UTC) and `@hourly`/`@daily`/… work.
#[derive(Debug, Clone)]
pub struct DriftSchedule {
    pub expr: String,
    schedule: cron::Schedule,
}

impl PartialEq for DriftSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

/// Jitter is at most this share of the interval between ticks…
const JITTER_SHARE: f64 = 0.05;
/// …and never more than this.
pub const MAX_JITTER: std::time::Duration = std::time::Duration::from_secs(600);

impl DriftSchedule {
    pub fn parse(expr: &str) -> Result<DriftSchedule, String> {
        let trimmed = expr.trim();
        // The cron crate wants a seconds field; five fields are the usual form.
        let full = if !trimmed.starts_with('@') && trimmed.split_whitespace().count() == 5 {
            format!("0 {trimmed}")
        } else {
            trimmed.to_string()
        };
        let schedule: cron::Schedule = full
            .parse()
            .map_err(|e| format!("`{expr}` is not a cron schedule: {e}"))?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(format!("`{expr}` never fires"));
        }
        Ok(DriftSchedule {
            expr: expr.to_string(),
            schedule,
        })
    }

    /// The latest tick at or before `now`.
    fn latest_tick(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let after = now + chrono::Duration::milliseconds(1);
        self.schedule.after(&after).next_back()
    }

    /// The spread of a workspace's checks after each tick: a fixed offset per
    /// workspace, up to 5 % of the interval and at most 10 minutes, so a
    /// thousand workspaces on `@hourly` don't start in the same second.
    pub fn jitter(&self, workspace: &str, tick: chrono::DateTime<chrono::Utc>) -> chrono::Duration {
        self.jitter_within(workspace, tick, MAX_JITTER)
    }

    /// [`DriftSchedule::jitter`] with another cap (`drift_jitter`; zero disables it).
    pub fn jitter_within(
        &self,
        workspace: &str,
        tick: chrono::DateTime<chrono::Utc>,
        max: std::time::Duration,
    ) -> chrono::Duration {
        let next = self.schedule.after(&tick).next().unwrap_or(tick);
        let interval_ms = (next - tick).num_milliseconds().max(0) as f64;
        let window_ms = (interval_ms * JITTER_SHARE).min(max.as_millis() as f64);
        // FNV-1a: stable across processes and versions.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in workspace.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        chrono::Duration::milliseconds((window_ms * ((h % 10_000) as f64 / 10_000.0)) as i64)
    }

    /// The tick whose check is due at `now` for `workspace`: the latest tick
    /// whose jittered start has passed and that is newer than `last` (the last
    /// tick handled) and not older than `since` (when the schedule started to
    /// apply). Ticks missed while gantry was down come back as one.
    pub fn due(
        &self,
        workspace: &str,
        last: Option<chrono::DateTime<chrono::Utc>>,
        since: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.due_within(workspace, last, since, now, MAX_JITTER)
    }

    /// [`DriftSchedule::due`] with a jitter cap of `max_jitter`.
    pub fn due_within(
        &self,
        workspace: &str,
        last: Option<chrono::DateTime<chrono::Utc>>,
        since: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
        max_jitter: std::time::Duration,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let mut tick = self.latest_tick(now)?;
        if tick + self.jitter_within(workspace, tick, max_jitter) > now {
            // Not started yet: the one before it may still be owed.
            tick = self.latest_tick(tick - chrono::Duration::milliseconds(1))?;
        }
        let floor = last.unwrap_or(since - chrono::Duration::milliseconds(1));
        (tick > floor && (last.is_some() || tick >= since)).then_some(tick)
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(h: u32, m: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
    }

    #[test]
    fn parses_five_fields_and_aliases_and_rejects_nonsense() {
        assert!(DriftSchedule::parse("0 */6 * * *").is_ok());
        assert!(DriftSchedule::parse("@hourly").is_ok());
        assert!(DriftSchedule::parse("@daily").is_ok());
        assert!(DriftSchedule::parse("every tuesday")
            .unwrap_err()
            .starts_with("`every tuesday` is not a cron schedule"));
        assert!(DriftSchedule::parse("61 * * * *").is_err());
    }

    #[test]
    fn jitter_spreads_workspaces_within_five_percent_and_ten_minutes() {
        let hourly = DriftSchedule::parse("@hourly").unwrap();
        let offsets: Vec<i64> = (0..1000)
            .map(|i| hourly.jitter(&format!("ws-{i}"), at(6, 0)).num_seconds())
            .collect();
        assert!(
            offsets.iter().all(|o| (0..=180).contains(o)),
            "5 % of an hour is 3 minutes"
        );
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert!(
            distinct.len() > 100,
            "spread, not one second: {}",
            distinct.len()
        );
        let daily = DriftSchedule::parse("@daily").unwrap();
        assert!((0..1000)
            .all(|i| daily.jitter(&format!("ws-{i}"), at(0, 0)) <= chrono::Duration::minutes(10)));
        assert_eq!(
            hourly.jitter("dns", at(6, 0)),
            hourly.jitter("dns", at(6, 0)),
            "stable per workspace"
        );
    }

    #[test]
    fn due_ticks_run_once_and_missed_ticks_come_back_as_one() {
        let s = DriftSchedule::parse("0 */6 * * *").unwrap();
        let ws = "dns";
        let j = s.jitter(ws, at(6, 0));
        let started = at(5, 0);
        // Before the first tick after start: nothing.
        assert_eq!(s.due(ws, None, started, at(5, 59)), None);
        // The 06:00 tick, once its jitter has passed.
        assert_eq!(
            s.due(
                ws,
                None,
                started,
                at(6, 0) + j + chrono::Duration::seconds(1)
            ),
            Some(at(6, 0))
        );
        // Handled: not again.
        assert_eq!(s.due(ws, Some(at(6, 0)), started, at(8, 0)), None);
        // Down from 07:00 until 20:00: 12:00 and 18:00 were missed; one check, for 18:00.
        assert_eq!(
            s.due(ws, Some(at(6, 0)), started, at(20, 0)),
            Some(at(18, 0))
        );
        // A brand-new schedule does not backfill ticks from before it applied.
        assert_eq!(s.due(ws, None, at(19, 0), at(20, 0)), None);
    }
}
