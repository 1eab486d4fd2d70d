//! The leader's decisions, as pure functions over decoded unit records
//! (spec/peer.md §3.3, with the fixes of §8 W3, W4, W9, W11, W12).

use crate::wire::{Grant, Intent, UnitRecord};

/// Why the current grant ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The holder recorded a result under this very grant.
    Executed,
    /// An old-format holder: idle, or `executed_at` after `granted_at` (holder only).
    ExecutedByReferenceRule,
    /// The holder is no longer on the relation.
    Vanished,
    /// The holder moved its queue to etcd (§8 W4).
    EtcdManaged,
    /// The holder did not finish within the policy's grant timeout.
    TimedOut,
    /// An operator released it.
    Forced,
}

impl ReleaseReason {
    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            ReleaseReason::Executed => "holder finished its turn",
            ReleaseReason::ExecutedByReferenceRule => "holder finished its turn (reference rule)",
            ReleaseReason::Vanished => "holder is no longer on the relation",
            ReleaseReason::EtcdManaged => "holder's queue moved to etcd",
            ReleaseReason::TimedOut => {
                "holder did not finish within the grant timeout; its generation is now stale"
            }
            ReleaseReason::Forced => "released by an operator; its generation is now stale",
        }
    }
}

/// Whether the grant held by `holder` (None: not on the relation) should end.
///
/// Only the holder is looked at, and a holder that echoes grant identities is judged by
/// its echo alone, so no clock is compared (§8 W3). Old holders, which do not echo, keep
/// the reference's release rules so a mixed relation still moves.
pub fn release_reason(holder: Option<&UnitRecord>, grant: &Grant) -> Option<ReleaseReason> {
    let Some(holder) = holder else {
        return Some(ReleaseReason::Vanished);
    };
    if !holder.peer_managed() {
        return Some(ReleaseReason::EtcdManaged);
    }
    if let Some(echo) = &holder.executed_grant {
        return (*echo == grant.identity()).then_some(ReleaseReason::Executed);
    }
    // Idle as the scheduler sees it (intent derived from the queue, §8 W12): an old holder
    // marked idle with work queued was granted as a requester and is about to run.
    let idle = match holder.schedulable() {
        Ok((_, intent)) => intent == Intent::Idle,
        Err(_) => matches!(holder.intent, Ok(Intent::Idle)),
    };
    let executed_after_grant = matches!(
        (holder.executed_at, grant.at),
        (Some(executed), Some(granted)) if executed > granted
    );
    (idle || executed_after_grant).then_some(ReleaseReason::ExecutedByReferenceRule)
}

/// Which unit gets the lock next, if any (the lock must be free).
///
/// Priority: `retry-hold` > `request` (oldest head operation first) > `retry-release`
/// (least recently executed first). Within `request` and `retry-release`, a lower `rank`
/// goes first (the leader passes 0 for all under FIFO ordering). Ties go to the lowest
/// unit number, so the choice is deterministic (§8 W9). Units whose bags cannot be decoded
/// or that are etcd-managed are skipped, never fatal (§8 W11). `units` must be in unit order.
pub fn next_grant<'a>(
    units: impl IntoIterator<Item = &'a UnitRecord>,
    rank: impl Fn(&UnitRecord) -> i64,
) -> Option<&'a UnitRecord> {
    let mut hold: Option<&UnitRecord> = None;
    let mut request: Option<(&UnitRecord, (i64, i64))> = None;
    let mut retry: Option<(&UnitRecord, (i64, i64))> = None;
    for unit in units.into_iter().filter(|unit| unit.peer_managed()) {
        let Ok((queue, intent)) = unit.schedulable() else {
            continue;
        };
        match intent {
            Intent::RetryHold => {
                hold.get_or_insert(unit);
            }
            Intent::Request => {
                let head = (
                    rank(unit),
                    queue
                        .head()
                        .map(|op| op.requested_at.micros())
                        .unwrap_or(i64::MAX),
                );
                if request.is_none_or(|(_, best)| head < best) {
                    request = Some((unit, head));
                }
            }
            Intent::RetryRelease => {
                let last = (
                    rank(unit),
                    unit.executed_at.map(|t| t.micros()).unwrap_or(i64::MIN),
                );
                if retry.is_none_or(|(_, best)| last < best) {
                    retry = Some((unit, last));
                }
            }
            Intent::Idle => {}
        }
    }
    hold.or(request.map(|(unit, _)| unit))
        .or(retry.map(|(unit, _)| unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::*;

    fn unit(
        name: &str,
        state: &str,
        head_at: Option<&str>,
        executed_at: Option<&str>,
    ) -> UnitRecord {
        let mut bag = Bag::new();
        bag.insert(STATE.into(), state.into());
        if let Some(at) = head_at {
            bag.insert(
                OPERATIONS.into(),
                format!(r#"[{{"callback_id":"r","requested_at":"{at}"}}]"#),
            );
        }
        if let Some(at) = executed_at {
            bag.insert(EXECUTED_AT.into(), at.into());
        }
        UnitRecord::decode(name, &bag)
    }

    fn pick(units: &[UnitRecord]) -> Option<&str> {
        next_grant(units, |_| 0).map(|u| u.name.as_str())
    }

    #[test]
    fn s7_2_row40_retry_hold_first() {
        let units = [
            unit("c/1", "retry-release", Some("1"), Some("5")),
            unit("c/2", "request", Some("2"), None),
            unit("c/3", "retry-hold", Some("3"), Some("4")),
        ];
        assert_eq!(pick(&units), Some("c/3"));
    }

    #[test]
    fn s7_2_row41_oldest_head_request() {
        let units = [
            unit("c/1", "request", Some("20"), None),
            unit("c/2", "request", Some("10"), None),
        ];
        assert_eq!(pick(&units), Some("c/2"));
    }

    #[test]
    fn s7_2_row42_oldest_executed_retry_release() {
        let units = [
            unit("c/1", "retry-release", Some("1"), Some("50")),
            unit("c/2", "retry-release", Some("2"), Some("40")),
        ];
        assert_eq!(pick(&units), Some("c/2"));
    }

    #[test]
    fn s7_2_row43_request_beats_retry_release() {
        let units = [
            unit("c/1", "retry-release", Some("1"), Some("1")),
            unit("c/2", "request", Some("9"), None),
        ];
        assert_eq!(pick(&units), Some("c/2"));
    }

    #[test]
    fn s7_2_row44_all_idle_nobody() {
        let units = [unit("c/0", "idle", None, None), unit("c/1", "", None, None)];
        assert_eq!(pick(&units), None);
    }

    #[test]
    fn s7_5_row72_fixed_empty_request_does_not_block_retry_release() {
        // Reference: nobody is granted. Fixed (§8 W12): the empty request counts as idle.
        let units = [
            unit("c/1", "request", None, None),
            unit("c/2", "retry-release", Some("1"), Some("1")),
        ];
        assert_eq!(pick(&units), Some("c/2"));
    }

    #[test]
    fn w11_bad_bag_is_skipped_not_fatal() {
        let mut broken = unit("c/1", "request", Some("1"), None);
        broken.queue = Err(crate::op::DecodeError("bad".into()));
        let v0 = unit("c/2", "release", None, None);
        let units = [broken, v0, unit("c/3", "request", Some("5"), None)];
        assert_eq!(pick(&units), Some("c/3"));
    }

    #[test]
    fn ties_go_to_lowest_unit_number() {
        let units = [
            unit("c/1", "retry-hold", Some("1"), None),
            unit("c/2", "retry-hold", Some("1"), None),
        ];
        assert_eq!(pick(&units), Some("c/1"));
        let units = [
            unit("c/1", "request", Some("7"), None),
            unit("c/2", "request", Some("7"), None),
        ];
        assert_eq!(pick(&units), Some("c/1"));
    }

    fn grant(seq: Option<u64>, at: &str) -> Grant {
        Grant {
            unit: "c/1".into(),
            at_raw: at.into(),
            at: crate::timestamp::Timestamp::parse(at),
            seq,
        }
    }

    #[test]
    fn w3_echo_decides_without_clocks() {
        let mut holder = unit("c/1", "request", Some("1"), Some("999999999999"));
        let g = grant(Some(4), "100.0");
        // Its clock is far ahead, but it has not echoed this grant: not finished.
        holder.executed_grant = Some("3@90.0".into());
        assert_eq!(release_reason(Some(&holder), &g), None);
        holder.executed_grant = Some(g.identity());
        assert_eq!(
            release_reason(Some(&holder), &g),
            Some(ReleaseReason::Executed)
        );
    }

    #[test]
    fn old_holders_use_reference_rules() {
        let g = grant(None, "100.0");
        let done = unit("c/1", "request", Some("1"), Some("101.0"));
        assert_eq!(
            release_reason(Some(&done), &g),
            Some(ReleaseReason::ExecutedByReferenceRule)
        );
        let idle = unit("c/1", "idle", None, Some("50.0"));
        assert_eq!(
            release_reason(Some(&idle), &g),
            Some(ReleaseReason::ExecutedByReferenceRule)
        );
        let running = unit("c/1", "request", Some("1"), Some("99.0"));
        assert_eq!(release_reason(Some(&running), &g), None);
        // Marked idle but work queued: granted as a requester, so not finished (W12).
        let idle_with_work = unit("c/1", "idle", Some("1"), Some("99.0"));
        assert_eq!(release_reason(Some(&idle_with_work), &g), None);
        assert_eq!(release_reason(None, &g), Some(ReleaseReason::Vanished));
        let mut etcd = running.clone();
        etcd.backend = Ok(Backend::Etcd);
        assert_eq!(
            release_reason(Some(&etcd), &g),
            Some(ReleaseReason::EtcdManaged)
        );
    }
}
