//! The rules: the signals read off a tenant's snapshot, and the shape of its unregistered mail
//! (how much it looks like forwarding) that sets its allowance.

use relayward_core::TenantState;
use serde::{Deserialize, Serialize};

use crate::counters::{Snapshot, WindowStats, DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};

use super::Detector;

/// What [`Detector::shape`] reads off one window.
struct Traits {
    window: Window,
    messages: u64,
    known: f64,
    recipients: f64,
    distinct: f64,
    per_message: f64,
    dkim: f64,
    familiar: f64,
    judged: bool,
    likeness: f64,
}

/// One trait of [`Shape`]: what was observed and its score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Trait {
    pub observed: f64,
    /// 0 = spray-shaped, 1 = forwarding-shaped.
    pub score: f64,
}

/// What the running hour's unregistered mail looks like, and the allowance it earns (see
/// [`ForwardingRule`](super::ForwardingRule)). Kept in every transition's evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    /// The window the traits are computed over: the running hour, or the day when the hour
    /// holds fewer than `min_messages`.
    #[serde(default)]
    pub window: Window,
    /// Unregistered and null-sender messages of that window.
    pub messages: u64,
    /// Share of unregistered messages to a recipient seen in an earlier hour.
    pub recipients: Trait,
    /// Distinct recipient addresses ÷ recipients of unregistered mail.
    #[serde(default)]
    pub distinct_recipients: f64,
    /// Average recipients per unregistered message.
    pub recipients_per_message: f64,
    /// Share of messages with a DKIM signature verifying for their header From domain.
    pub dkim: Trait,
    pub dkim_checked: u64,
    /// Share of messages from domains the tenant sent from before.
    pub familiar: Trait,
    /// Age of the message's connector since it was created or changed, when known.
    pub connector_age_secs: Option<u64>,
    pub new_connector: bool,
    /// Whether enough traffic was seen to judge.
    pub judged: bool,
    pub likeness: f64,
    /// What the hourly floors are multiplied by.
    pub allowance: f64,
    /// What the burst budget is multiplied by: the lesser of the hour's allowance and the last
    /// minute's own.
    #[serde(default)]
    pub burst_allowance: f64,
}

impl Shape {
    pub fn describe(&self) -> String {
        if !self.judged {
            return format!(
                "shape not judged ({} unregistered messages), allowance x1",
                self.messages
            );
        }
        let age = match self.connector_age_secs {
            Some(s) => format!(
                ", connector changed {:.1} days ago{}",
                s as f64 / 86_400.0,
                if self.new_connector { " (new)" } else { "" }
            ),
            None => String::new(),
        };
        format!(
            "shape of {} messages ({:?}): known recipients {:.2} (distinct {:.2}, {:.1}/message) score {:.2}, \
             dkim pass {:.2} of {} checked score {:.2}, familiar domains {:.2} score {:.2}{age}; \
             likeness {:.2}, allowance x{:.1} (burst x{:.1})",
            self.messages,
            self.window,
            self.recipients.observed,
            self.distinct_recipients,
            self.recipients_per_message,
            self.recipients.score,
            self.dkim.observed,
            self.dkim_checked,
            self.dkim.score,
            self.familiar.observed,
            self.familiar.score,
            self.likeness,
            self.allowance,
            self.burst_allowance,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Signals and transitions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    UnregisteredVolume,
    UnregisteredBurst,
    UnregisteredDomains,
    UnregisteredShare,
    SpamRejections,
    HeaderMismatch,
    SpamVerdicts,
    /// Hard bounces per delivered or bounced recipient (the reputation module).
    BounceRate,
    /// Spam complaints per delivered or bounced recipient (the reputation module).
    ComplaintRate,
}

impl Rule {
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::UnregisteredVolume => "unregistered_volume",
            Rule::UnregisteredBurst => "unregistered_burst",
            Rule::UnregisteredDomains => "unregistered_domains",
            Rule::UnregisteredShare => "unregistered_share",
            Rule::SpamRejections => "spam_rejections",
            Rule::HeaderMismatch => "header_mismatch",
            Rule::SpamVerdicts => "spam_verdicts",
            Rule::BounceRate => "bounce_rate",
            Rule::ComplaintRate => "complaint_rate",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Minute,
    #[default]
    Hour,
    Day,
    Week,
}

impl Window {
    pub fn duration_ms(self) -> i64 {
        match self {
            Window::Minute => MINUTE_MS,
            Window::Hour => HOUR_MS,
            Window::Day => DAY_MS,
            Window::Week => 7 * DAY_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// At or below the warn level minus hysteresis, or not armed.
    Clear,
    /// Between the hysteresis line and the warn level: not enough to warn, too much to clear.
    Elevated,
    Warn,
    Block,
}

/// One rule's verdict with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub rule: Rule,
    pub window: Window,
    pub level: Level,
    pub observed: f64,
    pub warn_threshold: f64,
    pub block_threshold: f64,
    /// The count behind the observation (messages, domains, rejections, mismatches).
    pub events: u64,
    /// Whether the rule's precondition (floor, minimum events) held; unarmed rules are clear.
    pub armed: bool,
}

impl Signal {
    pub fn describe(&self) -> String {
        let (verb, threshold) = match self.level {
            Level::Block => ("above block level", self.block_threshold),
            Level::Warn => ("above warn level", self.warn_threshold),
            _ => ("below warn level", self.warn_threshold),
        };
        format!(
            "{} {:.3} {} {:.3} ({} events, {:?})",
            self.rule.as_str(),
            self.observed,
            verb,
            threshold,
            self.events,
            self.window
        )
    }
}

impl Detector {
    fn level(&self, observed: f64, warn: f64, block: f64, armed: bool) -> Level {
        if !armed {
            Level::Clear
        } else if observed > block {
            Level::Block
        } else if observed > warn {
            Level::Warn
        } else if observed > warn * (1.0 - self.cfg.hysteresis) {
            Level::Elevated
        } else {
            Level::Clear
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn signal(
        &self,
        rule: Rule,
        window: Window,
        observed: f64,
        warn: f64,
        block: f64,
        events: u64,
        armed: bool,
    ) -> Signal {
        Signal {
            rule,
            window,
            level: self.level(observed, warn, block, armed),
            observed,
            warn_threshold: warn,
            block_threshold: block,
            events,
            armed,
        }
    }

    /// The traits of one window's unregistered mail, before the connector's age counts.
    fn traits(&self, w: &WindowStats, window: Window) -> Traits {
        let r = &self.cfg.forwarding;
        let messages = w.not_registered();
        let unreg = w.unregistered_messages;
        let rcpts = w.unregistered_recipients;
        let per_message = if unreg > 0 {
            rcpts as f64 / unreg as f64
        } else {
            0.0
        };
        let distinct = if rcpts > 0 {
            (w.unregistered_recipient_addrs as f64 / rcpts as f64).min(1.0)
        } else {
            0.0
        };
        let known = if unreg > 0 {
            (w.unregistered_known_recipient as f64 / unreg as f64).min(1.0)
        } else {
            0.0
        };
        let recipients = if per_message > r.max_recipients_per_message {
            0.0
        } else {
            (known / r.known_recipients_full).min(1.0)
        };
        let share = |n: u64| {
            if messages > 0 {
                (n as f64 / messages as f64).min(1.0)
            } else {
                0.0
            }
        };
        let dkim = share(w.dkim_pass);
        let familiar = share(w.unregistered_familiar);
        let judged = r.enabled && messages >= r.min_messages;
        let scores = [recipients, dkim, familiar];
        let holding = scores.iter().filter(|&&x| x >= 0.5).count() as u32;
        let likeness = if judged && holding >= r.min_traits {
            scores.iter().sum::<f64>() / 3.0
        } else {
            0.0
        };
        Traits {
            window,
            messages,
            known,
            recipients,
            distinct,
            per_message,
            dkim,
            familiar,
            judged,
            likeness,
        }
    }

    /// The shape of the running hour's unregistered mail and the allowance it earns.
    pub fn shape(&self, snapshot: &Snapshot) -> Shape {
        let r = &self.cfg.forwarding;
        let hour = &snapshot.windows.hour;
        let connector_age_secs = snapshot
            .connector_changed_ms
            .map(|t| ((snapshot.at_ms - t).max(0) / SECOND_MS) as u64);
        let new_connector = connector_age_secs.is_some_and(|a| a < r.new_connector_secs);
        let age = if new_connector {
            r.new_connector_factor
        } else {
            1.0
        };
        let allowance = |likeness: f64| 1.0 + (r.max_allowance - 1.0) * likeness * age;
        // The running hour when it holds enough to judge; else the day, so that a quiet hour
        // of a forwarding tenant keeps the allowance its traffic earned.
        let mut h = self.traits(hour, Window::Hour);
        if !h.judged {
            let d = self.traits(&snapshot.windows.day, Window::Day);
            if d.judged {
                h = d;
            }
        }
        let hour_allowance = allowance(h.likeness);
        // A burst is judged by its own minute too, so that spray inside an hour of forwarding
        // does not inherit the hour's allowance.
        let m = self.traits(&snapshot.windows.minute, Window::Minute);
        let burst_allowance = if m.judged {
            hour_allowance.min(allowance(m.likeness))
        } else {
            hour_allowance
        };
        Shape {
            messages: h.messages,
            window: h.window,
            recipients: Trait {
                observed: h.known,
                score: h.recipients,
            },
            distinct_recipients: h.distinct,
            recipients_per_message: h.per_message,
            dkim: Trait {
                observed: h.dkim,
                score: h.dkim,
            },
            dkim_checked: hour.dkim_checked,
            familiar: Trait {
                observed: h.familiar,
                score: h.familiar,
            },
            connector_age_secs,
            new_connector,
            judged: h.judged,
            likeness: h.likeness * age,
            allowance: hour_allowance,
            burst_allowance,
        }
    }

    /// Every enabled rule's verdict on `snapshot` for a tenant in `state` (probation tightens
    /// the thresholds). Cheap: a few dozen float operations.
    pub fn assess(&self, snapshot: &Snapshot, state: TenantState) -> Vec<Signal> {
        self.assess_with(snapshot, state, &self.shape(snapshot))
    }

    pub(super) fn assess_with(
        &self,
        snapshot: &Snapshot,
        state: TenantState,
        shape: &Shape,
    ) -> Vec<Signal> {
        let cfg = &self.cfg;
        let f = if state == TenantState::Probation {
            cfg.probation_factor
        } else {
            1.0
        };
        let hour = &snapshot.windows.hour;
        let minute = &snapshot.windows.minute;
        let base = &snapshot.baseline;
        // Forwarding-shaped traffic earns a larger allowance on the floors and the budget; the
        // baseline-relative parts are the tenant's own history and need none.
        let a = shape.allowance;
        let floor = cfg.floor_unregistered_per_hour as f64 * f * a;
        let floor_domains = cfg.floor_unregistered_domains_per_hour as f64 * f * a;
        let hour_unreg = hour.not_registered();
        let past_floor = hour_unreg as f64 > floor;
        let mut out = Vec::with_capacity(6);

        let r = &cfg.unregistered_volume;
        if r.enabled {
            let warn = floor.max(r.warn_factor * base.unregistered_per_hour * f);
            out.push(self.signal(
                Rule::UnregisteredVolume,
                Window::Hour,
                hour_unreg as f64,
                warn,
                warn * r.block_over_warn,
                hour_unreg,
                true,
            ));
        }

        let r = &cfg.unregistered_burst;
        if r.enabled {
            let expected = base.unregistered_per_hour / 60.0;
            let budget = cfg.burst_budget as f64 * shape.burst_allowance.max(1.0);
            let minute_unreg = minute.not_registered();
            out.push(self.signal(
                Rule::UnregisteredBurst,
                Window::Minute,
                minute_unreg as f64,
                (expected + budget * r.warn_share_of_budget) * f,
                (expected + budget * r.block_share_of_budget) * f,
                minute_unreg,
                past_floor,
            ));
        }

        let r = &cfg.unregistered_domains;
        if r.enabled {
            let warn = floor_domains.max(r.warn_factor * base.unregistered_domains_per_hour * f);
            // A domain whose mail carried a DKIM signature that verified for it is a real
            // sender's (a forwarded original); snowshoe spam's domains are not.
            let domains = hour
                .unregistered_domains
                .saturating_sub(hour.dkim_pass_domains) as u64;
            out.push(self.signal(
                Rule::UnregisteredDomains,
                Window::Hour,
                domains as f64,
                warn,
                warn * r.block_over_warn,
                domains,
                true,
            ));
        }

        let r = &cfg.unregistered_share;
        if r.enabled {
            let share = if hour.messages > 0 {
                hour_unreg as f64 / hour.messages as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::UnregisteredShare,
                Window::Hour,
                share - base.unregistered_share(),
                r.warn_jump * f,
                r.block_jump * f,
                hour_unreg,
                past_floor,
            ));
        }

        let r = &cfg.spam_rejections;
        if r.enabled {
            let total = hour.remote_total();
            let rate = if total > 0 {
                hour.remote_spam as f64 / total as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::SpamRejections,
                Window::Hour,
                rate,
                r.warn_rate * f,
                r.block_rate * f,
                hour.remote_spam,
                hour.remote_spam >= r.min_events,
            ));
        }

        let r = &cfg.header_mismatch;
        if r.enabled {
            let registered = hour.registered_messages();
            let rate = if registered > 0 {
                hour.mismatches as f64 / registered as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::HeaderMismatch,
                Window::Hour,
                rate,
                r.warn_rate * f,
                r.block_rate * f,
                hour.mismatches,
                hour.mismatches >= r.min_events,
            ));
        }
        let r = &cfg.spam_verdicts;
        if r.enabled {
            let rate = if hour.scanned > 0 {
                hour.scan_spam as f64 / hour.scanned as f64
            } else {
                0.0
            };
            out.push(self.signal(
                Rule::SpamVerdicts,
                Window::Hour,
                rate,
                r.warn_rate * f,
                r.block_rate * f,
                hour.scan_spam,
                hour.scan_spam >= r.min_events,
            ));
        }
        out
    }
}
