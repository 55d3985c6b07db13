//! The restriction-state machine: transitions the detector makes on its own, and those a
//! tenant or an operator asks for.

use relayward_core::{TenantId, TenantState};
use serde::{Deserialize, Serialize};

use crate::counters::{Snapshot, SECOND_MS};

use super::rules::{Level, Shape, Signal};
use super::Detector;

/// Who or what caused a transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    Detector,
    Tenant { actor: String },
    Operator { actor: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub tenant: TenantId,
    pub at_ms: i64,
    pub from: TenantState,
    pub to: TenantState,
    pub cause: Cause,
    /// The signals that decided (for a return to active: all of them, all clear).
    pub signals: Vec<Signal>,
    /// Set when entering probation.
    pub probation_until_ms: Option<i64>,
    pub summary: String,
    /// The shape of the unregistered traffic when the detector decided.
    #[serde(default)]
    pub shape: Option<Shape>,
}

/// A tenant's restriction state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub state: TenantState,
    /// When the tenant entered `state` (for the dwell time).
    pub since_ms: i64,
    pub probation_until_ms: Option<i64>,
}

impl TenantStatus {
    pub fn active(since_ms: i64) -> Self {
        TenantStatus {
            state: TenantState::Active,
            since_ms,
            probation_until_ms: None,
        }
    }

    /// The status after `t`.
    pub fn apply(&self, t: &Transition) -> TenantStatus {
        TenantStatus {
            state: t.to,
            since_ms: t.at_ms,
            probation_until_ms: t.probation_until_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BlockScope {
    /// `blocked_all`: every message refused (5.7.705).
    All,
    /// `blocked_unregistered`: unregistered and null senders refused (5.7.750).
    Unregistered,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{action} is not possible for a tenant in state {from} (only from {allowed})")]
    NotAllowed {
        action: &'static str,
        from: TenantState,
        allowed: &'static str,
    },
}

impl Detector {
    #[allow(clippy::too_many_arguments)]
    fn transition(
        &self,
        now_ms: i64,
        tenant: TenantId,
        from: TenantState,
        to: TenantState,
        cause: Cause,
        signals: Vec<Signal>,
        summary: String,
    ) -> Transition {
        let probation_until_ms = (to == TenantState::Probation)
            .then(|| now_ms + self.cfg.probation_secs as i64 * SECOND_MS);
        Transition {
            tenant,
            at_ms: now_ms,
            from,
            to,
            cause,
            signals,
            probation_until_ms,
            summary,
            shape: None,
        }
    }

    /// The detector's move, if any, for a tenant in `status` given `snapshot`. Only
    /// `active`, `warned` and `probation` move on their own; the blocked states and
    /// `under_review` leave only through [`Detector::request_unblock`],
    /// [`Detector::operator_unblock`] and [`Detector::operator_block`].
    pub fn evaluate(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        snapshot: &Snapshot,
    ) -> Option<Transition> {
        use TenantState::*;
        let from = status.state;
        if !matches!(from, Active | Warned | Probation) {
            return None;
        }
        if !matches!(
            status.state,
            TenantState::Active | TenantState::Warned | TenantState::Probation
        ) {
            return None;
        }
        let shape = self.shape(snapshot);
        let mut t = self.decide(now_ms, tenant, status, snapshot, &shape)?;
        if shape.judged {
            t.summary = format!("{}; {}", t.summary, shape.describe());
        }
        t.shape = Some(shape);
        Some(t)
    }

    fn decide(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        snapshot: &Snapshot,
        shape: &Shape,
    ) -> Option<Transition> {
        use TenantState::*;
        let from = status.state;
        let mut signals = self.assess_with(snapshot, from, shape);
        if from == Probation {
            // A window that began before the operator's unblock still holds the traffic that
            // was judged and acted on: it cannot block again. Probation's tighter thresholds
            // apply to what comes after (a minute after the unblock, the minute window is all
            // new traffic; an hour after, the hour window).
            let elapsed = now_ms - status.since_ms;
            for s in &mut signals {
                if s.window.duration_ms() > elapsed {
                    s.level = Level::Clear;
                }
            }
        }
        let firing: Vec<Signal> = signals
            .iter()
            .filter(|s| s.level >= Level::Warn)
            .cloned()
            .collect();
        let blocks = firing.iter().filter(|s| s.level == Level::Block).count();
        let describe = |s: &[Signal]| {
            s.iter()
                .map(Signal::describe)
                .collect::<Vec<_>>()
                .join("; ")
        };
        if blocks > 0 || firing.len() >= 2 {
            let why = if blocks > 0 {
                "block-level signal"
            } else {
                "two warn-level signals"
            };
            let summary = format!("{why}: {}", describe(&firing));
            return Some(self.transition(
                now_ms,
                tenant,
                from,
                BlockedUnregistered,
                Cause::Detector,
                firing,
                summary,
            ));
        }
        let clear = signals.iter().all(|s| s.level == Level::Clear);
        let dwelt = now_ms - status.since_ms >= self.cfg.dwell_secs as i64 * SECOND_MS;
        match from {
            Active if firing.len() == 1 => {
                let summary = format!("warn-level signal: {}", describe(&firing));
                Some(self.transition(
                    now_ms,
                    tenant,
                    from,
                    Warned,
                    Cause::Detector,
                    firing,
                    summary,
                ))
            }
            Warned if clear && dwelt => Some(self.transition(
                now_ms,
                tenant,
                from,
                Active,
                Cause::Detector,
                signals,
                "all signals clear for the dwell time".into(),
            )),
            Probation => {
                let until = status
                    .probation_until_ms
                    .unwrap_or(status.since_ms + self.cfg.probation_secs as i64 * SECOND_MS);
                (clear && dwelt && now_ms >= until).then(|| {
                    self.transition(
                        now_ms,
                        tenant,
                        from,
                        Active,
                        Cause::Detector,
                        signals,
                        "probation over, all signals clear".into(),
                    )
                })
            }
            _ => None,
        }
    }

    /// The tenant admin attests that the cause is fixed: `blocked_unregistered` →
    /// `under_review` (unregistered senders stay refused until an operator decides).
    pub fn request_unblock(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        actor: &str,
    ) -> Result<Transition, TransitionError> {
        if status.state != TenantState::BlockedUnregistered {
            return Err(TransitionError::NotAllowed {
                action: "request_unblock",
                from: status.state,
                allowed: "blocked_unregistered",
            });
        }
        Ok(self.transition(
            now_ms,
            tenant,
            status.state,
            TenantState::UnderReview,
            Cause::Tenant {
                actor: actor.to_string(),
            },
            Vec::new(),
            "tenant admin requested unblock".into(),
        ))
    }

    /// An operator lifts a block: `under_review`, `blocked_unregistered` or `blocked_all` →
    /// `probation` for `probation_secs`.
    pub fn operator_unblock(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        actor: &str,
    ) -> Result<Transition, TransitionError> {
        use TenantState::*;
        if !matches!(status.state, UnderReview | BlockedUnregistered | BlockedAll) {
            return Err(TransitionError::NotAllowed {
                action: "operator_unblock",
                from: status.state,
                allowed: "under_review, blocked_unregistered, blocked_all",
            });
        }
        Ok(self.transition(
            now_ms,
            tenant,
            status.state,
            Probation,
            Cause::Operator {
                actor: actor.to_string(),
            },
            Vec::new(),
            "operator unblocked; probation with tightened thresholds".into(),
        ))
    }

    /// An operator blocks by hand: to `blocked_all` from any other state, or to
    /// `blocked_unregistered` from any state but itself (from `blocked_all` this lets
    /// registered mail flow again).
    pub fn operator_block(
        &self,
        now_ms: i64,
        tenant: TenantId,
        status: &TenantStatus,
        scope: BlockScope,
        actor: &str,
    ) -> Result<Transition, TransitionError> {
        let (to, action, allowed) = match scope {
            BlockScope::All => (
                TenantState::BlockedAll,
                "operator_block(all)",
                "any state but blocked_all",
            ),
            BlockScope::Unregistered => (
                TenantState::BlockedUnregistered,
                "operator_block(unregistered)",
                "any state but blocked_unregistered",
            ),
        };
        if status.state == to {
            return Err(TransitionError::NotAllowed {
                action,
                from: status.state,
                allowed,
            });
        }
        Ok(self.transition(
            now_ms,
            tenant,
            status.state,
            to,
            Cause::Operator {
                actor: actor.to_string(),
            },
            Vec::new(),
            format!("operator blocked ({})", to.as_str()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::counters::{HOUR_MS, MINUTE_MS};
    use crate::detector::{DetectorConfig, Window};

    /// 2026-01-01T00:00:00Z, a Thursday.
    const T0: i64 = 1_767_225_600_000;
    const DAY: i64 = 24 * HOUR_MS;

    #[test]
    fn manual_transitions_are_validated() {
        use TenantState::*;
        let d = Detector::new(DetectorConfig::default());
        let at = |state| TenantStatus {
            state,
            since_ms: T0,
            probation_until_ms: None,
        };
        let now = T0 + HOUR_MS;
        for s in TenantState::ALL {
            let r = d.request_unblock(now, TenantId(1), &at(*s), "admin");
            if *s == BlockedUnregistered {
                let t = r.unwrap();
                assert_eq!((t.from, t.to), (BlockedUnregistered, UnderReview));
            } else {
                let e = r.unwrap_err();
                assert!(
                    e.to_string().contains("only from blocked_unregistered"),
                    "{e}"
                );
            }
            let r = d.operator_unblock(now, TenantId(1), &at(*s), "noc");
            if matches!(s, UnderReview | BlockedUnregistered | BlockedAll) {
                let t = r.unwrap();
                assert_eq!(t.to, Probation);
                assert_eq!(t.probation_until_ms, Some(now + 7 * DAY));
            } else {
                assert!(r.is_err(), "{s}");
            }
            let r = d.operator_block(now, TenantId(1), &at(*s), BlockScope::All, "noc");
            assert_eq!(r.is_ok(), *s != BlockedAll, "{s}");
            let r = d.operator_block(now, TenantId(1), &at(*s), BlockScope::Unregistered, "noc");
            assert_eq!(r.is_ok(), *s != BlockedUnregistered, "{s}");
        }
        assert_eq!(
            d.request_unblock(now, TenantId(1), &at(Active), "admin").unwrap_err().to_string(),
            "request_unblock is not possible for a tenant in state active (only from blocked_unregistered)"
        );
        // Blocked states and review never move on their own, whatever the counters say.
        let mut snap = crate::counters::Snapshot::default();
        snap.windows.hour.unregistered_messages = 100_000;
        snap.windows.hour.messages = 100_000;
        for s in [BlockedUnregistered, UnderReview, BlockedAll] {
            assert_eq!(d.evaluate(now + 30 * DAY, TenantId(1), &at(s), &snap), None);
        }
        // Right after the operator's unblock the burst that caused the block is still in the
        // hour window: it does not block again. New traffic does, once its window holds only
        // what came after the unblock.
        let probation = TenantStatus {
            state: Probation,
            since_ms: now,
            probation_until_ms: Some(now + 7 * DAY),
        };
        assert_eq!(
            d.evaluate(now + 1_000, TenantId(1), &probation, &snap),
            None
        );
        assert_eq!(
            d.evaluate(now + 30 * MINUTE_MS, TenantId(1), &probation, &snap),
            None
        );
        let t = d
            .evaluate(now + HOUR_MS + 1_000, TenantId(1), &probation, &snap)
            .expect("a new hour of the same traffic blocks");
        assert_eq!(t.to, BlockedUnregistered);
        let mut burst = crate::counters::Snapshot::default();
        burst.windows.minute.unregistered_messages = 10_000;
        burst.windows.minute.messages = 10_000;
        burst.windows.hour = burst.windows.minute;
        assert_eq!(
            d.evaluate(now + 30_000, TenantId(1), &probation, &burst),
            None
        );
        let t = d
            .evaluate(now + 2 * MINUTE_MS, TenantId(1), &probation, &burst)
            .expect("a new burst after the unblock blocks");
        assert_eq!(t.to, BlockedUnregistered);
        assert!(
            t.signals.iter().all(|s| s.window == Window::Minute),
            "{:?}",
            t.signals
        );
    }
}
