//! The PostgreSQL log store end to end: logs shipped from the embedded
//! outbox, queried through the API, surviving a database outage; migrations;
//! a clear refusal to start when the database is unreachable.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

pub(crate) fn pg_url() -> String {
    std::env::var("OUTRIDER_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema; the returned URL points at it. Fails clearly without PostgreSQL.
pub(crate) async fn fresh_schema(base: &str) -> (String, tokio_postgres::Client) {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required and not reachable at {base}: {e} (scripts/services.sh up)"));
    tokio::spawn(conn);
    let schema = format!("outrider_e2e_{}", &uuid_like());
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    client
        .batch_execute(&format!("SET search_path = {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    (format!("{base}{sep}options=-c%20search_path%3D{schema}"), client)
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

pub(crate) async fn count(c: &tokio_postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn logs_are_shipped_to_postgres_and_queried_there() {
    let (url, pg) = fresh_schema(&pg_url()).await;
    let s = Server::start(&[("POSTGRES_URL", &url)]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/pg"), json!({})).await;
    for i in 0..3 {
        let r = api
            .raw(
                "POST",
                "/publish",
                &format!(r#"{{"tenant_id":"t1","topic":"x","data":{{"zebra":{i},"alpha":1}}}}"#),
            )
            .await;
        assert_eq!(r.status, 202);
    }
    let a = api.wait_attempts("", Duration::from_secs(10), |m| m.len() >= 3).await;
    assert_eq!(a.len(), 3, "attempts served from PostgreSQL");
    assert_eq!(count(&pg, "events").await, 3);
    assert_eq!(count(&pg, "attempts").await, 3);
    let data: String = pg
        .query_one("SELECT data FROM events LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(data.starts_with(r#"{"zebra":"#), "key order kept: {data}");
    let e = api.get("/events?limit=2").await;
    assert_eq!(e.body["models"].as_array().unwrap().len(), 2);
    assert!(e.body["pagination"]["next"].is_string());
    // A page of attempts with their events: looked up in one query.
    let a = api.get("/attempts?include=event.data").await;
    let models = a.body["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{}", a.text);
    for m in models {
        assert_eq!(m["event"]["id"], m["event_id"], "{m}");
        assert_eq!(m["event"]["data"]["alpha"], 1, "{m}");
    }
}

/// The report: with `TOPICS` unset, one event with a NUL in its topic was
/// accepted and PostgreSQL refused it, so no log record shipped after it,
/// ever. Now the refused records (the event and its attempt) are kept in
/// `log_dead_letters` with PostgreSQL's error, and the rest ship.
#[tokio::test]
async fn a_record_postgres_refuses_is_quarantined_and_shipping_goes_on() {
    let (url, pg) = fresh_schema(&pg_url()).await;
    let s = Server::start(&[("POSTGRES_URL", &url), ("LOG_BATCH_SIZE", "64")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/pg"), json!({})).await;
    let publish = |topic: &str, i: usize| json!({"tenant_id": "t1", "topic": topic, "data": {"i": i}});
    for i in 0..10 {
        assert_eq!(api.publish(publish("x", i)).await.status, 202);
    }
    let r = api.publish(publish("a\u{0}b", 10)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let bad = r.body["id"].as_str().unwrap().to_string();
    for i in 11..40 {
        assert_eq!(api.publish(publish("x", i)).await.status, 202);
    }
    rx.wait_for(40, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&pg, "attempts").await < 39 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&pg, "events").await, 39, "every other event shipped");
    assert_eq!(count(&pg, "attempts").await, 39, "every other attempt shipped");
    let rows = pg
        .query(
            "SELECT kind, record_id, tenant_id, error, record FROM log_dead_letters ORDER BY kind",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "the event and its attempt");
    let (kind, id, tenant, error, record): (String, String, String, String, String) = (
        rows[1].get(0),
        rows[1].get(1),
        rows[1].get(2),
        rows[1].get(3),
        rows[1].get(4),
    );
    assert_eq!(
        (kind.as_str(), id.as_str(), tenant.as_str()),
        ("event", bad.as_str(), "t1")
    );
    assert!(error.contains("SQLSTATE 22"), "PostgreSQL's own error: {error}");
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["topic"], "a\u{0}b", "the record is kept whole");
    assert_eq!(rows[0].get::<_, String>(0), "attempt");
    let h = api.get("/healthz").await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.body["workers"]["log-pipeline"]["quarantined"], 2, "{}", h.text);
    assert_eq!(h.body["workers"]["log-pipeline"]["status"], "healthy", "{}", h.text);
    // Later records still ship.
    assert_eq!(api.publish(publish("x", 40)).await.status, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&pg, "attempts").await < 40 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&pg, "attempts").await, 40);
}

#[tokio::test]
async fn postgres_outage_records_wait_and_arrive() {
    let (url, pg) = fresh_schema(&pg_url()).await;
    let addr: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(addr).await;
    let proxied = url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(proxied, url, "test URL must point at 127.0.0.1:5432");
    let s = Server::start(&[("POSTGRES_URL", &proxied)]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/o"), json!({})).await;
    api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": 0}}))
        .await;
    api.wait_attempts("", Duration::from_secs(10), |m| m.len() == 1).await;

    proxy.down();
    for n in 1..=5 {
        let r = api
            .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": n}}))
            .await;
        assert_eq!(r.status, 202, "publishing does not depend on the log store");
    }
    // Delivery goes on while the log store is away.
    assert_eq!(rx.wait_for(6, Duration::from_secs(10)).await.len(), 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&pg, "events").await,
        1,
        "nothing could be shipped during the outage"
    );

    proxy.up();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(&pg, "attempts").await < 6 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(&pg, "events").await,
        6,
        "events written when the database returned"
    );
    assert_eq!(
        count(&pg, "attempts").await,
        6,
        "attempts written when the database returned"
    );
}

#[tokio::test]
async fn migrate_command_applies_once() {
    let (url, pg) = fresh_schema(&pg_url()).await;
    let env = [
        ("POSTGRES_URL", url.as_str()),
        ("AES_ENCRYPTION_SECRET", "x"),
        ("API_KEY", "k"),
    ];
    let (code, out, err) = Server::run_args(&["migrate", "--plan"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pending: 0001_logs"), "{out}");
    assert!(out.contains("pending: 0002_log_dead_letters"), "{out}");
    let (code, out, err) = Server::run_args(&["migrate"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied: 0001_logs"), "{out}");
    assert!(out.contains("applied: 0002_log_dead_letters"), "{out}");
    let (_, out, _) = Server::run_args(&["migrate"], &env);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(count(&pg, "events").await, 0, "tables exist");
}

#[test]
fn unreachable_postgres_refuses_start_without_leaking_the_password() {
    let (code, err) = Server::run_once(&[
        ("API_KEY", "k"),
        ("AES_ENCRYPTION_SECRET", "x"),
        ("POSTGRES_URL", "postgres://app:s3cretpw@127.0.0.1:1/db"),
        ("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", "1"),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("POSTGRES_URL") && err.contains("cannot reach PostgreSQL"),
        "{err}"
    );
    assert!(!err.contains("s3cretpw"), "the password must not be printed: {err}");
}

/// Whether PostgreSQL sees a TLS connection from `application_name`.
async fn tls_in_use(pg: &tokio_postgres::Client, app: &str) -> Option<bool> {
    pg.query_opt(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1 LIMIT 1",
        &[&app],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// `POSTGRES_URL` with `sslmode=verify-full` and `sslrootcert` (an
/// openssl-made CA that scripts/services.sh installs in the test
/// PostgreSQL): the log store is reached over TLS and logs arrive; a CA that
/// did not sign the server's certificate stops the start naming the
/// certificate problem; `verify-ca` accepts the right CA whatever the host
/// name; `sslmode=disable` connects in the clear.
#[tokio::test]
async fn postgres_tls_is_verified_against_the_configured_ca() {
    let ca = std::env::var("OUTRIDER_TEST_POSTGRES_CA").unwrap_or_else(|_| {
        panic!("OUTRIDER_TEST_POSTGRES_CA is not set: run through scripts/test.sh (services.sh makes it)")
    });
    let (url, pg) = fresh_schema(&pg_url()).await;
    let app = format!("outrider-tls-{}", std::process::id());
    let tls_url = format!("{url}&application_name={app}&sslmode=verify-full&sslrootcert={ca}");
    let s = Server::start(&[("POSTGRES_URL", tls_url.as_str())]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/tls"), json!({})).await;
    for n in 0..3 {
        assert_eq!(
            api.publish(json!({"tenant_id": "t1", "topic": "x", "data": {"n": n}}))
                .await
                .status,
            202
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while count(&pg, "attempts").await < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&pg, "attempts").await, 3);
    assert_eq!(
        tls_in_use(&pg, &app).await,
        Some(true),
        "the log store's connection is TLS"
    );
    drop(s);

    // A CA that did not sign the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    crate::redis::make_certs(dir.path());
    let other = dir.path().join("ca.crt");
    let wrong = format!("{url}&sslmode=verify-full&sslrootcert={}", other.display());
    let (code, err) = Server::run_once(&[
        ("AES_ENCRYPTION_SECRET", "x"),
        ("API_KEY", "k"),
        ("POSTGRES_URL", wrong.as_str()),
        ("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", "2"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("POSTGRES_URL") && err.contains("certificate"), "{err}");

    // verify-ca: the right CA, a host name the certificate does not carry
    // (`hostaddr` reaches the server); verify-full refuses that name.
    let schema = url.rsplit("search_path%3D").next().unwrap().to_string();
    let app2 = format!("{app}-ca");
    let kv = |mode: &str, app: &str| {
        format!(
            "host=pg.outrider.invalid hostaddr=127.0.0.1 port=5432 user=postgres dbname=test \
             options=--search_path={schema} application_name={app} sslmode={mode} sslrootcert={ca}"
        )
    };
    let ca_only = kv("verify-ca", &app2);
    let s = Server::start(&[("POSTGRES_URL", ca_only.as_str())]).await;
    assert_eq!(tls_in_use(&pg, &app2).await, Some(true));
    drop(s);
    let full = kv("verify-full", &app2);
    let (code, err) = Server::run_once(&[
        ("AES_ENCRYPTION_SECRET", "x"),
        ("API_KEY", "k"),
        ("POSTGRES_URL", full.as_str()),
        ("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", "2"),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("certificate") && err.contains("pg.outrider.invalid"),
        "{err}"
    );

    // SCRAM over TLS with channel binding required (SCRAM-SHA-256-PLUS, as
    // managed PostgreSQL services use): the role may only log in that way.
    // A schema of its own, so the role creates (and owns) its tables.
    let (url2, _) = fresh_schema(&pg_url()).await;
    let schema2 = url2.rsplit("search_path%3D").next().unwrap().to_string();
    pg.batch_execute(&format!("GRANT ALL ON SCHEMA {schema2} TO outrider_scram"))
        .await
        .unwrap();
    let app4 = format!("{app}-scram");
    let scram = url2.replace("postgres://postgres@", "postgres://outrider_scram:scram-pw@");
    assert_ne!(scram, url2);
    let scram = format!("{scram}&application_name={app4}&sslmode=verify-full&sslrootcert={ca}&channel_binding=require");
    let s = Server::start(&[("POSTGRES_URL", scram.as_str())]).await;
    assert_eq!(tls_in_use(&pg, &app4).await, Some(true));
    drop(s);

    let app3 = format!("{app}-clear");
    let clear = format!("{url}&application_name={app3}&sslmode=disable");
    let _s = Server::start(&[("POSTGRES_URL", clear.as_str())]).await;
    assert_eq!(tls_in_use(&pg, &app3).await, Some(false));
}
