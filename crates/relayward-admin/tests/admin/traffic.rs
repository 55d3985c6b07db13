//! Traffic per hour from the message trace: a tenant's hours with its transitions, and every
//! tenant's totals for the operator.

use relayward_core::{SenderClass, TenantId, TenantState, TraceEvent, TraceKind};
use relayward_store::{NewTransition, Store};
use serde_json::Value;

use crate::common::Api;

const HOUR_MS: i64 = 3_600_000;

fn event(
    at_ms: i64,
    kind: TraceKind,
    tenant: i64,
    queue_id: &str,
    class: SenderClass,
) -> TraceEvent {
    let mut e = TraceEvent::new(kind);
    e.at_ms = at_ms;
    e.tenant_id = Some(TenantId(tenant));
    e.queue_id = (!queue_id.is_empty()).then(|| queue_id.to_string());
    e.sender_class = Some(class);
    e
}

/// The hour starting at `start_ms` in a traffic answer.
fn hour(v: &Value, start_ms: i64) -> Value {
    v["hours"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["start_ms"] == start_ms)
        .unwrap_or_else(|| panic!("no hour {start_ms} in {v}"))
        .clone()
}

fn counts(h: &Value) -> [u64; 4] {
    ["registered", "unregistered", "null_sender", "refused"].map(|k| h[k].as_u64().unwrap())
}

#[tokio::test]
async fn hours_of_a_tenant_with_its_transitions_and_the_operators_totals() {
    // The hours are the server's clock hours: keep clear of a boundary between here and there.
    let into_hour = (relayward_core::now().0 * 1000).rem_euclid(HOUR_MS);
    if into_hour > HOUR_MS - 10_000 {
        tokio::time::sleep(std::time::Duration::from_millis(
            (HOUR_MS - into_hour + 100) as u64,
        ))
        .await;
    }
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    let now_ms = relayward_core::now().0 * 1000;
    let this_hour = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let three_ago = this_hour - 3 * HOUR_MS;
    let day_and_half = this_hour - 30 * HOUR_MS;
    use SenderClass::*;
    use TraceKind::*;
    api.store
        .record_trace(&[
            // One registered message to two recipients, its delivery, two unregistered ones,
            // a bounce and three refusals, three hours ago.
            event(three_ago + 10, Received, a.0, "A1", Registered),
            event(three_ago + 10, Received, a.0, "A1", Registered),
            event(three_ago + 20, Delivered, a.0, "A1", Registered),
            event(three_ago + 30, Received, a.0, "A2", Unregistered),
            event(three_ago + 40, Received, a.0, "A3", Unregistered),
            event(three_ago + 50, Received, a.0, "A4", Null),
            event(three_ago + 60, Refused, a.0, "", Unregistered),
            event(three_ago + 61, Refused, a.0, "", Unregistered),
            event(three_ago + 62, Refused, a.0, "", Null),
            // This hour: one of each accepted class.
            event(this_hour + 1, Received, a.0, "A5", Registered),
            // A day and a half ago: only in the week.
            event(day_and_half + 5, Received, a.0, "A6", Unregistered),
            // Two weeks ago: in neither.
            event(
                this_hour - 14 * 24 * HOUR_MS,
                Received,
                a.0,
                "A7",
                Registered,
            ),
            // Tenant b.
            event(this_hour + 2, Received, b.0, "B1", Registered),
            event(this_hour + 3, Refused, b.0, "", Unregistered),
        ])
        .await
        .unwrap();
    // A block two hours ago; and one from before the week, which no chart shows.
    let transition = |at_ms, from, to, summary: &str| NewTransition {
        tenant_id: a,
        at_ms,
        from,
        to,
        cause: "detector".into(),
        summary: summary.into(),
        probation_until_ms: None,
        evidence: "{}".into(),
        attestation: None,
    };
    api.store
        .record_transition(
            &transition(
                this_hour - 9 * 24 * HOUR_MS,
                TenantState::Active,
                TenantState::Warned,
                "old",
            ),
            "detector",
        )
        .await
        .unwrap();
    api.store
        .record_transition(
            &transition(
                three_ago + HOUR_MS + 5,
                TenantState::Warned,
                TenantState::BlockedUnregistered,
                "unregistered_burst",
            ),
            "detector",
        )
        .await
        .unwrap();

    let path = format!("/v1/tenants/{a}/traffic");
    let day = api.get(&path, &api.a_admin.token).await;
    assert_eq!(day.status, 200, "{}", day.text);
    let day = day.body;
    assert_eq!(day["tenant_id"], a.0);
    assert_eq!(day["until_ms"], this_hour + HOUR_MS);
    assert_eq!(day["from_ms"], this_hour + HOUR_MS - 24 * HOUR_MS);
    let hours = day["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    for (i, h) in hours.iter().enumerate() {
        assert_eq!(
            h["start_ms"],
            day["from_ms"].as_i64().unwrap() + i as i64 * HOUR_MS
        );
    }
    assert_eq!(counts(&hour(&day, three_ago)), [1, 2, 1, 3]);
    assert_eq!(counts(&hour(&day, this_hour)), [1, 0, 0, 0]);
    assert_eq!(counts(&day["totals"]), [2, 2, 1, 3]);
    let marks = day["transitions"].as_array().unwrap();
    assert_eq!(marks.len(), 1, "{day}");
    assert_eq!(marks[0]["to"], "blocked_unregistered");
    assert_eq!(marks[0]["from"], "warned");
    assert_eq!(marks[0]["at_ms"], three_ago + HOUR_MS + 5);
    assert_eq!(marks[0]["actor"], "detector");

    let week = api.get(&format!("{path}?hours=168"), &api.op.token).await;
    assert_eq!(week.status, 200, "{}", week.text);
    let week = week.body;
    assert_eq!(week["hours"].as_array().unwrap().len(), 168);
    assert_eq!(counts(&hour(&week, day_and_half)), [0, 1, 0, 0]);
    assert_eq!(counts(&week["totals"]), [2, 3, 1, 3]);
    assert_eq!(week["transitions"].as_array().unwrap().len(), 1);

    for bad in ["0", "169", "x"] {
        let r = api
            .get(&format!("{path}?hours={bad}"), &api.a_admin.token)
            .await;
        assert_eq!(r.assert_problem(400).as_deref(), Some("hours"), "{bad}");
    }
    api.get(&format!("{path}?days=1"), &api.a_admin.token)
        .await
        .assert_problem(400);
    // Another tenant's traffic is not there for a tenant admin.
    api.get(&format!("/v1/tenants/{b}/traffic"), &api.a_admin.token)
        .await
        .assert_problem(404);

    // The operator's overview: each tenant's totals.
    let all = api.get("/v1/traffic", &api.op.token).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let tenants = all.body["tenants"].as_array().unwrap().clone();
    assert_eq!(tenants.len(), 2, "{}", all.text);
    assert_eq!(tenants[0]["tenant_id"], a.0);
    assert_eq!(counts(&tenants[0]), [2, 2, 1, 3]);
    assert_eq!(tenants[1]["tenant_id"], b.0);
    assert_eq!(counts(&tenants[1]), [1, 0, 0, 1]);
    let week = api.get("/v1/traffic?hours=168", &api.op.token).await;
    assert_eq!(counts(&week.body["tenants"][0]), [2, 3, 1, 3]);
    api.get("/v1/traffic", &api.a_admin.token)
        .await
        .assert_problem(403);
    api.stop().await;
}
