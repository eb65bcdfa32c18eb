//! Delivery: headers, signatures (verified independently), fan-out, filters,
//! topics, idempotency, disable/enable, retries, manual retry, SSRF guard.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn webhook_default_mode_headers_signature_and_key_order() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    let d = api
        .webhook(
            "t1",
            &rx.url("/hook?x=1"),
            json!({"delivery_metadata": {"app": "a1"}, "config": {"url": rx.url("/hook?x=1"), "custom_headers": "{\"X-Custom\":\"c\"}"}}),
        )
        .await;
    let secret = d["credentials"]["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let body = r#"{"tenant_id":"t1","topic":"user.created","metadata":{"source":"crm"},"data":{"zebra":1, "alpha":{"b":2,"a":1},"mango":"<&>"}}"#;
    let r = api.raw("POST", "/publish", body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["duplicate"], false);
    assert_eq!(r.body["destination_ids"], json!([d["id"]]));
    let event_id = r.body["id"].as_str().unwrap().to_string();

    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g.path, "/hook");
    // Key order and content preserved, whitespace compacted.
    assert_eq!(
        std::str::from_utf8(&g.body).unwrap(),
        r#"{"zebra":1,"alpha":{"b":2,"a":1},"mango":"<&>"}"#
    );
    assert_eq!(g.header("content-type").unwrap(), "application/json");
    assert_eq!(g.header("x-outpost-event-id").unwrap(), event_id);
    assert_eq!(g.header("x-outpost-topic").unwrap(), "user.created");
    assert_eq!(g.header("x-outpost-source").unwrap(), "crm");
    assert_eq!(g.header("x-outpost-app").unwrap(), "a1");
    assert_eq!(g.header("x-custom").unwrap(), "c");
    assert!(g.header("user-agent").unwrap().starts_with("Outrider/"));
    let ts = g.header("x-outpost-timestamp").unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(&ts).is_ok(), "{ts}");
    // Signature: v0=<hex HMAC-SHA256(secret bytes incl. whsec_, raw body)>.
    let expected = format!("v0={}", hmac_hex(secret.as_bytes(), &g.body));
    assert_eq!(g.header("x-outpost-signature").unwrap(), expected);

    let attempts = api
        .wait_attempts(&format!("event_id={event_id}&include=response_data"), WAIT, |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert_eq!(a["status"], "success");
    assert_eq!(a["code"], "200");
    assert_eq!(a["attempt_number"], 1);
    assert_eq!(a["manual"], false);
    assert_eq!(a["destination_id"], d["id"]);
    assert_eq!(a["response_data"], json!({"status": 200, "body": "ok"}));
    // The stored event keeps key order too.
    let e = api.get(&format!("/events/{event_id}")).await;
    assert_eq!(e.status, 200);
    assert!(
        e.text.contains(r#""data":{"zebra":1,"alpha":{"b":2,"a":1},"mango":"#),
        "{}",
        e.text
    );
    assert_eq!(e.body["matched_destination_ids"], json!([d["id"]]));
}

#[tokio::test]
async fn standard_webhooks_mode_signature() {
    let s = Server::start(&[("DESTINATIONS_WEBHOOK_MODE", "standard")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/sw"), json!({})).await;
    let secret = d["credentials"]["secret"].as_str().unwrap().to_string();
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "order.paid", "metadata": {"m": "1"}, "data": {"a": 1}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let g = &rx.wait_for(1, WAIT).await[0];
    let id = g.header("webhook-id").unwrap();
    let ts = g.header("webhook-timestamp").unwrap();
    assert_eq!(id, r.body["id"].as_str().unwrap());
    assert!(ts.parse::<i64>().is_ok());
    assert_eq!(g.header("webhook-topic").unwrap(), "order.paid");
    assert_eq!(g.header("m").unwrap(), "1");
    // The Standard Webhooks algorithm, written here from the spec:
    // key = base64-decode(secret without "whsec_"), content = "{id}.{ts}.{body}".
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(&g.body);
    let want = format!("v1,{}", hmac_b64(&key, &content));
    assert_eq!(g.header("webhook-signature").unwrap(), want);
}

/// The report: publish refused `host`, `user-agent` and `content-type`
/// metadata that Outpost accepts. It accepts them now, in both modes, and
/// the request still carries its own framing, content type and signature:
/// metadata that would replace one of them is not sent as a header.
#[tokio::test]
async fn metadata_outpost_accepts_is_accepted_and_never_replaces_our_headers() {
    let hostile = json!({"host": "evil.example", "user-agent": "evil", "content-type": "text/html",
        "content-length": "1", "transfer-encoding": "chunked", "signature": "v0=forged",
        "webhook-signature": "v1,forged", "webhook-id": "forged", "source": "crm"});
    for mode in ["default", "standard"] {
        let s = Server::start(&[("DESTINATIONS_WEBHOOK_MODE", mode)]).await;
        let api = Api::admin(&s);
        let rx = Receiver::start().await;
        api.tenant("t1").await;
        let d = api.webhook("t1", &rx.url("/m"), json!({})).await;
        let secret = d["credentials"]["secret"].as_str().unwrap().to_string();
        let r = api
            .publish(json!({"tenant_id": "t1", "topic": "x", "metadata": hostile, "data": {"a": 1}}))
            .await;
        assert_eq!(r.status, 202, "{mode}: {}", r.text);
        let id = r.body["id"].as_str().unwrap().to_string();
        let g = &rx.wait_for(1, WAIT).await[0];
        assert_eq!(g.header("host").unwrap(), rx.addr.to_string(), "{mode}");
        assert_eq!(g.header("content-type").unwrap(), "application/json", "{mode}");
        assert!(g.header("user-agent").unwrap().starts_with("Outrider/"), "{mode}");
        assert_eq!(g.header("content-length").unwrap(), g.body.len().to_string(), "{mode}");
        assert!(g.header("transfer-encoding").is_none(), "{mode}");
        for once in ["host", "content-type", "content-length", "user-agent"] {
            assert_eq!(g.headers.get_all(once).iter().count(), 1, "{mode}: {once}");
        }
        assert_eq!(&g.body[..], br#"{"a":1}"#, "{mode}");
        if mode == "default" {
            // Under the prefix: kept as metadata headers, ours untouched.
            assert_eq!(g.header("x-outpost-host").unwrap(), "evil.example");
            assert_eq!(g.header("x-outpost-content-type").unwrap(), "text/html");
            assert_eq!(g.header("x-outpost-user-agent").unwrap(), "evil");
            assert_eq!(g.header("x-outpost-source").unwrap(), "crm");
            let want = format!("v0={}", hmac_hex(secret.as_bytes(), &g.body));
            assert_eq!(g.header("x-outpost-signature").unwrap(), want);
        } else {
            assert_eq!(g.header("webhook-id").unwrap(), id);
            assert_eq!(g.header("source").unwrap(), "crm");
            let ts = g.header("webhook-timestamp").unwrap();
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.strip_prefix("whsec_").unwrap())
                .unwrap();
            let mut content = format!("{id}.{ts}.").into_bytes();
            content.extend_from_slice(&g.body);
            assert_eq!(
                g.header("webhook-signature").unwrap(),
                format!("v1,{}", hmac_b64(&key, &content))
            );
        }
        // The metadata is stored as published (the index may trail the delivery a little).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut e = api.get(&format!("/events/{id}")).await;
        while e.status == 404 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            e = api.get(&format!("/events/{id}")).await;
        }
        assert_eq!(e.body["metadata"]["host"], "evil.example", "{}", e.text);
    }
}

#[tokio::test]
async fn secret_rotation_signs_with_both_secrets() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/r"), json!({})).await;
    let old = d["credentials"]["secret"].as_str().unwrap().to_string();
    let id = d["id"].as_str().unwrap();
    let r = api
        .patch(
            &format!("/tenants/t1/destinations/{id}"),
            json!({"credentials": {"rotate_secret": "true"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let new = r.body["credentials"]["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(r.body["credentials"]["previous_secret"], old);
    assert!(r.body["credentials"]["previous_secret_invalid_at"].is_string());
    api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {"v": 1}}))
        .await;
    let g = &rx.wait_for(1, WAIT).await[0];
    let sig = g.header("x-outpost-signature").unwrap();
    let want = format!(
        "v0={},{}",
        hmac_hex(new.as_bytes(), &g.body),
        hmac_hex(old.as_bytes(), &g.body)
    );
    assert_eq!(sig, want);
}

#[tokio::test]
async fn fan_out_filters_topics_and_targeting() {
    let s = Server::start(&[("TOPICS_ALLOW_WILDCARDS", "true")]).await;
    let api = Api::admin(&s);
    let (a, b, c, f) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    api.tenant("t1").await;
    let da = api
        .webhook("t1", &a.url("/a"), json!({"topics": ["user.created"]}))
        .await;
    let db = api.webhook("t1", &b.url("/b"), json!({"topics": ["user.*"]})).await;
    let dc = api.webhook("t1", &c.url("/c"), json!({"topics": "*"})).await;
    let df = api
        .webhook(
            "t1",
            &f.url("/f"),
            json!({"topics": "*", "filter": {"data": {"amount": {"$gte": 100}}}}),
        )
        .await;

    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "user.created", "data": {"amount": 150}}))
        .await;
    let mut ids: Vec<String> = serde_json::from_value(r.body["destination_ids"].clone()).unwrap();
    ids.sort();
    let mut want: Vec<String> = [&da, &db, &dc, &df]
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(ids, want, "fan-out to all four");

    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "user.deleted", "data": {"amount": 50}}))
        .await;
    assert_eq!(
        r.body["destination_ids"].as_array().unwrap().len(),
        2,
        "b and c only: {}",
        r.text
    );
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "order.created", "data": {"amount": 200}}))
        .await;
    assert_eq!(
        r.body["destination_ids"].as_array().unwrap().len(),
        2,
        "c and f only: {}",
        r.text
    );
    // destination_id targets one destination, still subject to topic matching.
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "order.created", "destination_id": dc["id"], "data": {}}))
        .await;
    assert_eq!(r.body["destination_ids"], json!([dc["id"]]));
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "order.created", "destination_id": da["id"], "data": {}}))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["destination_ids"], json!([]));

    assert_eq!(a.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(b.wait_for(2, WAIT).await.len(), 2);
    assert_eq!(c.wait_for(4, WAIT).await.len(), 4);
    let fg = f.wait_for(2, WAIT).await;
    assert_eq!(fg.len(), 2);
    let amounts: Vec<i64> = fg.iter().map(|g| g.json()["amount"].as_i64().unwrap()).collect();
    assert!(amounts.contains(&150) && amounts.contains(&200), "{amounts:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.count(), 1);
    assert_eq!(f.count(), 2, "amount 50 filtered out");
}

#[tokio::test]
async fn publish_idempotency_on_event_id() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/i"), json!({})).await;
    let ev = json!({"id": "evt_fixed", "tenant_id": "t1", "topic": "x", "data": {"n": 1}});
    let r1 = api.publish(ev.clone()).await;
    let r2 = api.publish(ev.clone()).await;
    assert_eq!((r1.status, r2.status), (202, 202));
    assert_eq!(r1.body["duplicate"], false);
    assert_eq!(r2.body["duplicate"], true);
    assert_eq!(r2.body["id"], "evt_fixed");
    rx.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 1, "a duplicate is not delivered again");
}

#[tokio::test]
async fn disabled_destination_gets_nothing_until_enabled() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/d"), json!({})).await;
    let id = d["id"].as_str().unwrap();
    let r = api.put(&format!("/tenants/t1/destinations/{id}/disable")).await;
    assert_eq!(r.status, 200);
    assert!(r.body["disabled_at"].is_string());
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": 1}}))
        .await;
    assert_eq!(r.body["destination_ids"], json!([]));
    let r = api.put(&format!("/tenants/t1/destinations/{id}/enable")).await;
    assert!(r.body["disabled_at"].is_null());
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": 2}}))
        .await;
    assert_eq!(r.body["destination_ids"], json!([id]));
    let got = rx.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 1);
    assert_eq!(got[0].json()["n"], 2);
}

#[tokio::test]
async fn disabling_stops_scheduled_retries() {
    let s = Server::start(&[("RETRY_SCHEDULE", "1,1,1,1")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    *rx.state.always.lock().unwrap() = Some(500);
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/x"), json!({})).await;
    let id = d["id"].as_str().unwrap();
    api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {}})).await;
    rx.wait_for(1, WAIT).await;
    api.put(&format!("/tenants/t1/destinations/{id}/disable")).await;
    let before = rx.count();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.count(), before, "no attempt after disable");
}

#[tokio::test]
async fn automatic_retries_follow_the_schedule_then_succeed() {
    let s = Server::start(&[("RETRY_SCHEDULE", "1,1,1")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    rx.state.script.lock().unwrap().extend([500, 503]);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/r"), json!({})).await;
    let r = api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {}})).await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}&dir=asc"), WAIT, |m| m.len() >= 3)
        .await;
    let nums: Vec<i64> = a.iter().map(|x| x["attempt_number"].as_i64().unwrap()).collect();
    let statuses: Vec<&str> = a.iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(nums, vec![1, 2, 3]);
    assert_eq!(statuses, vec!["failed", "failed", "success"]);
    assert_eq!(a[0]["code"], "500");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.count(), 3, "no retry after success");
}

/// The report: an endpoint answering 302 got `success`, so an endpoint
/// that moved lost every event. Every 3xx is a failed attempt, retried on
/// the schedule, with where it points kept in the response data.
#[tokio::test]
async fn a_redirect_is_a_failed_attempt_that_is_retried() {
    let s = Server::start(&[("RETRY_SCHEDULE", "1,1,1,1")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    rx.state.script.lock().unwrap().extend([302, 301, 307, 308]);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/r"), json!({})).await;
    let r = api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {}})).await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}&dir=asc&include=response_data"), WAIT, |m| {
            m.len() >= 5
        })
        .await;
    let got: Vec<(&str, &str)> = a
        .iter()
        .map(|x| (x["status"].as_str().unwrap(), x["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("failed", "302"),
            ("failed", "301"),
            ("failed", "307"),
            ("failed", "308"),
            ("success", "200")
        ]
    );
    assert_eq!(a[0]["response_data"]["location"], "/moved", "{}", a[0]);
    assert!(a[4]["response_data"].get("location").is_none(), "{}", a[4]);
    // Nothing was followed: every request went to the configured path.
    assert!(rx.got().iter().all(|r| r.path == "/r"));
}

#[tokio::test]
async fn retries_stop_when_exhausted_and_ineligible_events_are_not_retried() {
    let s = Server::start(&[("RETRY_SCHEDULE", "1,1")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    *rx.state.always.lock().unwrap() = Some(500);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/e"), json!({})).await;
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"k": "retry"}}))
        .await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    let r2 = api
        .publish(json!({"tenant_id": "t1", "topic": "x", "eligible_for_retry": false, "data": {"k": "once"}}))
        .await;
    let ev2 = r2.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}"), WAIT, |m| m.len() >= 3)
        .await;
    assert_eq!(a.len(), 3, "1 + 2 retries");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = api.get(&format!("/attempts?event_id={ev}")).await;
    assert_eq!(a.body["models"].as_array().unwrap().len(), 3, "exhausted");
    let a2 = api.get(&format!("/attempts?event_id={ev2}")).await;
    assert_eq!(a2.body["models"].as_array().unwrap().len(), 1, "not eligible for retry");
}

#[tokio::test]
async fn manual_retry() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    rx.state.script.lock().unwrap().push_back(500);
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/m"), json!({})).await;
    let did = d["id"].as_str().unwrap().to_string();
    // Raw text: `json!` would sort the keys before sending.
    let r = api
        .raw(
            "POST",
            "/publish",
            r#"{"tenant_id":"t1","topic":"x","eligible_for_retry":false,"data":{"zebra":1,"alpha":2}}"#,
        )
        .await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    api.wait_attempts(&format!("event_id={ev}"), WAIT, |m| m.len() == 1)
        .await;
    // Unknown event → 404; missing fields → 422.
    let r = api
        .post("/retry", json!({"event_id": "nope", "destination_id": did}))
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.body["message"], "event not found");
    let r = api.post("/retry", json!({"event_id": ev})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["data"], json!(["destination_id is required"]));
    let r = api.post("/retry", json!({"event_id": ev, "destination_id": did})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"success": true}));
    let a = api
        .wait_attempts(&format!("event_id={ev}&dir=asc"), WAIT, |m| m.len() == 2)
        .await;
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[1]["attempt_number"].as_i64(), a[1]["manual"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(a[1]["status"], "success");
    let got = rx.wait_for(2, WAIT).await;
    assert_eq!(std::str::from_utf8(&got[1].body).unwrap(), r#"{"zebra":1,"alpha":2}"#);
    // Disabled destination → 400 with the documented body.
    api.put(&format!("/tenants/t1/destinations/{did}/disable")).await;
    let r = api.post("/retry", json!({"event_id": ev, "destination_id": did})).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        json!({"status": 400, "message": "Destination is disabled", "data": {"error": "destination_disabled"}})
    );
}

#[tokio::test]
async fn ssrf_guard_blocks_loopback_unless_allowed() {
    let s = Server::start(&[("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "false"), ("RETRY_SCHEDULE", "")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/s"), json!({})).await;
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "x", "eligible_for_retry": false, "data": {}}))
        .await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}&include=response_data"), WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(a[0]["status"], "failed");
    assert_eq!(a[0]["code"], "destination_blocked");
    let err = a[0]["response_data"]["error"].as_str().unwrap();
    assert!(err.contains("127.0.0.1") && err.contains("loopback"), "{err}");
    assert_eq!(rx.count(), 0, "nothing reached the loopback receiver");

    // The operator's allow list opens one internal network, and only it.
    let s = Server::start(&[
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "false"),
        ("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", "127.0.0.0/8, 10.1.0.0/16"),
        ("RETRY_SCHEDULE", ""),
    ])
    .await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/s"), json!({})).await;
    api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {}})).await;
    rx.wait_for(1, WAIT).await;
    let (code, err) = Server::run_once(&[
        ("API_KEY", "k"),
        ("API_JWT_SECRET", "j"),
        ("AES_ENCRYPTION_SECRET", "a"),
        ("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", "10.0.0.0/33"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("OUTRIDER_ALLOWED_PRIVATE_NETWORKS"), "{err}");
}

#[tokio::test]
async fn response_body_cap_and_connection_errors() {
    let s = Server::start(&[("DESTINATIONS_WEBHOOK_MAX_RESPONSE_BODY_BYTES", "100")]).await;
    let api = Api::admin(&s);
    let big = Receiver::start().await;
    *big.state.body.lock().unwrap() = "x".repeat(5000);
    api.tenant("t1").await;
    api.webhook("t1", &big.url("/big"), json!({"topics": ["big"]})).await;
    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    api.webhook("t1", &dead, json!({"topics": ["dead"]})).await;
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "big", "data": {}}))
        .await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}&include=response_data"), WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(
        a[0]["response_data"]["body"],
        "Response body exceeded 100 bytes and was not stored"
    );
    assert_eq!(a[0]["status"], "success");
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "dead", "eligible_for_retry": false, "data": {}}))
        .await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}"), WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(a[0]["code"], "connection_refused");
}

/// `Retry-After` on a 429 or 503 is the least wait before the next retry,
/// capped by the schedule's longest delay; on a 500 it is not a request to
/// wait. A name that does not resolve is retried like a 5xx.
#[tokio::test]
async fn retry_after_is_honoured_up_to_the_schedule_and_dns_errors_are_retried() {
    let s = Server::start(&[("RETRY_SCHEDULE", "1,4")]).await;
    let api = Api::admin(&s);
    let mut cases = Vec::new();
    for (i, (status, retry_after)) in [(429, "3"), (503, "3600"), (500, "3")].into_iter().enumerate() {
        let tenant = format!("t{i}");
        api.tenant(&tenant).await;
        let rx = Receiver::start().await;
        rx.state.script.lock().unwrap().push_back(status);
        *rx.state.retry_after.lock().unwrap() = Some(retry_after.into());
        api.webhook(&tenant, &rx.url("/r"), json!({})).await;
        let r = api
            .publish(json!({"tenant_id": tenant, "topic": "a", "data": {}}))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        cases.push((status, retry_after, rx));
    }
    for (status, retry_after, rx) in cases {
        let got = rx.wait_for(2, Duration::from_secs(15)).await;
        let gap = (got[1].at - got[0].at).as_secs_f64();
        let (least, most) = match (status, retry_after) {
            (429, _) => (2.8, 3.9), // honoured
            (503, _) => (3.8, 5.5), // 3600 s capped at the schedule's 4 s
            _ => (0.8, 2.5),        // the schedule's 1 s
        };
        assert!(
            (least..most).contains(&gap),
            "{status} with Retry-After {retry_after}: retried after {gap:.2} s"
        );
    }

    api.tenant("dns").await;
    api.webhook("dns", "http://no-such-host.invalid/hook", json!({})).await;
    let r = api.publish(json!({"tenant_id": "dns", "topic": "a", "data": {}})).await;
    let ev = r.body["id"].as_str().unwrap().to_string();
    let a = api
        .wait_attempts(&format!("event_id={ev}"), Duration::from_secs(15), |m| m.len() >= 2)
        .await;
    assert!(a.iter().all(|x| x["status"] == "failed"), "{a:?}");
}

/// What the egress-proxy fixture answers to `CONNECT`.
#[derive(Clone)]
enum ProxyMode {
    /// `200`, then relays bytes to the address asked for.
    Tunnel,
    /// This status with these headers, then closes.
    Answer(u16, &'static str),
}

/// A forward proxy that answers `CONNECT` as told and records each request
/// line with its `proxy-authorization`. A mode change cuts the open tunnels,
/// so the next delivery asks again.
struct ConnectProxy {
    port: u16,
    mode: std::sync::Arc<std::sync::Mutex<ProxyMode>>,
    asked: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    tunnels: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl ConnectProxy {
    async fn start() -> Self {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(ProxyMode::Tunnel));
        let asked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let tunnels: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (m, a, t) = (mode.clone(), asked.clone(), tunnels.clone());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let (m, a) = (m.clone(), a.clone());
                let task = tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut b = [0u8; 1];
                        if c.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let line = head.lines().next().unwrap_or("").to_string();
                    let auth = head
                        .lines()
                        .find_map(|l| l.strip_prefix("proxy-authorization: "))
                        .unwrap_or("")
                        .to_string();
                    a.lock().unwrap().push((line.clone(), auth));
                    let mode = m.lock().unwrap().clone();
                    match mode {
                        ProxyMode::Answer(status, headers) => {
                            let _ = c
                                .write_all(
                                    format!("HTTP/1.1 {status} No\r\n{headers}content-length: 0\r\n\r\n").as_bytes(),
                                )
                                .await;
                        }
                        ProxyMode::Tunnel => {
                            let to = line.split(' ').nth(1).unwrap_or("").to_string();
                            match tokio::net::TcpStream::connect(&to).await {
                                Ok(mut up) => {
                                    let _ = c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                                }
                                Err(_) => {
                                    let _ = c
                                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                                        .await;
                                }
                            }
                        }
                    }
                });
                t.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            mode,
            asked,
            tunnels,
        }
    }

    fn set(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
        for t in self.tunnels.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn asked(&self) -> Vec<(String, String)> {
        self.asked.lock().unwrap().clone()
    }
}

/// `DESTINATIONS_WEBHOOK_PROXY_URL`: webhooks are tunnelled through the
/// proxy, with its basic auth, to the address the SSRF guard checked (the
/// proxy is never handed the name to resolve again); the proxy refusing our
/// credentials records no attempt and the delivery waits for it; a proxy
/// that cannot reach the destination is a failed attempt with the code its
/// Envoy response flag names.
#[tokio::test]
async fn webhooks_go_through_the_egress_proxy_to_the_checked_address() {
    let proxy = ConnectProxy::start().await;
    let proxy_url = format!("http://us%40er:p%3Ass@127.0.0.1:{}", proxy.port);
    let s = Server::start(&[
        ("DESTINATIONS_WEBHOOK_PROXY_URL", proxy_url.as_str()),
        ("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "false"),
        ("OUTRIDER_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1,::1"),
        ("RETRY_SCHEDULE", "30,30"),
    ])
    .await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    let port = rx.addr.port();
    api.webhook("t1", &format!("http://localhost:{port}/hook"), json!({}))
        .await;
    let publish = |n: u32| {
        let api = &api;
        async move {
            let r = api
                .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": n}}))
                .await;
            assert_eq!(r.status, 202, "{}", r.text);
            r.body["id"].as_str().unwrap().to_string()
        }
    };

    // Through the tunnel, to an address, never the name.
    let e1 = publish(1).await;
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("host").as_deref(),
        Some(format!("localhost:{port}").as_str())
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
    let asked = proxy.asked();
    assert!(!asked.is_empty());
    for (line, auth) in &asked {
        assert!(
            line == &format!("CONNECT 127.0.0.1:{port} HTTP/1.1") || line == &format!("CONNECT [::1]:{port} HTTP/1.1"),
            "{line}"
        );
        assert_eq!(auth, &format!("Basic {basic}"));
    }
    let a = api
        .wait_attempts(&format!("event_id={e1}"), WAIT, |m| !m.is_empty())
        .await;
    assert_eq!((a.len(), a[0]["status"].as_str()), (1, Some("success")));

    // The proxy refuses our credentials: not the destination's failure, so
    // no attempt is recorded; once it lets us through, attempt 1 succeeds.
    proxy.set(ProxyMode::Answer(407, "proxy-authenticate: Basic\r\n"));
    let asked_before = proxy.asked().len();
    let e2 = publish(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(proxy.asked().len() > asked_before, "the delivery asked the proxy");
    let r = api.get(&format!("/attempts?event_id={e2}")).await;
    assert_eq!(r.body["models"].as_array().map(Vec::len), Some(0), "{}", r.text);
    assert_eq!(rx.count(), 1);
    proxy.set(ProxyMode::Tunnel);
    let a = api
        .wait_attempts(&format!("event_id={e2}"), Duration::from_secs(15), |m| !m.is_empty())
        .await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0]["status"].as_str(), a[0]["attempt_number"].as_i64()),
        (Some("success"), Some(1))
    );
    assert_eq!(rx.count(), 2);

    // The proxy could not resolve the destination (Envoy's DF flag): the
    // destination's failure, recorded with the code a direct lookup gives.
    proxy.set(ProxyMode::Answer(503, "x-envoy-response-flags: DF\r\n"));
    let e3 = publish(3).await;
    let a = api
        .wait_attempts(&format!("event_id={e3}&include=response_data"), WAIT, |m| !m.is_empty())
        .await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0]["status"].as_str(), a[0]["code"].as_str()),
        (Some("failed"), Some("dns_error"))
    );
    assert_eq!(
        a[0]["response_data"]["error"], "dns_error connecting to localhost",
        "{}",
        a[0]
    );
    assert_eq!(rx.count(), 2);
}
