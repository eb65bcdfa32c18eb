//! The load harness, run small against the real server: everything accepted
//! is delivered, signatures verify, the report adds up.

use std::path::PathBuf;

use loadtest::run::{run, Options};
use loadtest::scenario::{Scenario, SinkSpec};

#[test]
fn harness_small_scenario_delivers_everything() {
    let sc = Scenario {
        name: "smoke".into(),
        description: "CI smoke run".into(),
        tenants: 3,
        destinations_per_tenant: 2,
        payload_bytes: 512,
        rate: 0,
        duration_seconds: 2,
        max_events: 300,
        publish_concurrency: 8,
        provision_concurrency: 2,
        drain_seconds: 20,
        sink: SinkSpec {
            delay_ms: 0,
            fail_half_first_attempts: true,
        },
        server_env: [("RETRY_SCHEDULE".to_string(), "1".to_string())].into_iter().collect(),
        destination_type: String::new(),
    };
    let opts = Options {
        target: None,
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_outrider")),
        // Exercises the affinity path (`taskset`) the scale command uses.
        server_cores: Some("0".into()),
        baseline: true,
        baseline_seconds: 1,
        quiet: true,
    };
    let r = run(&sc, &opts).expect("harness run");
    assert_eq!(r.publish.accepted, 300, "{}", r.summary());
    assert_eq!(r.delivery.expected, 600);
    assert_eq!(r.delivery.delivered, 600, "{}", r.summary());
    assert_eq!(r.delivery.lost, 0);
    assert_eq!(r.delivery.bad_signatures, 0);
    assert!(
        r.delivery.failures_sent > 0,
        "the failing sink answered 500 to first attempts"
    );
    assert!(r.baseline.as_ref().is_some_and(|b| b.requests_per_s > 0.0));
    assert!(r.ratio.is_some());
    assert!(r.html().contains("<svg"));
}

/// Broker mode: the server delivers to a real broker, the broker's consumer
/// counts, the baseline is a raw client of the same broker.
#[test]
fn harness_broker_destinations_deliver_everything() {
    for kind in [
        "rabbitmq",
        "redis_stream",
        "nats",
        "kafka",
        "mqtt",
        "aws_sqs",
        "gcp_pubsub",
    ] {
        let sc = Scenario {
            name: format!("smoke-{kind}"),
            description: "CI smoke run, broker destination".into(),
            tenants: 2,
            destinations_per_tenant: 1,
            payload_bytes: 256,
            rate: 0,
            duration_seconds: 2,
            max_events: 200,
            publish_concurrency: 8,
            provision_concurrency: 2,
            drain_seconds: 20,
            sink: SinkSpec::default(),
            server_env: Default::default(),
            destination_type: kind.into(),
        };
        let opts = Options {
            target: None,
            server_bin: PathBuf::from(env!("CARGO_BIN_EXE_outrider")),
            server_cores: None,
            baseline: true,
            baseline_seconds: 1,
            quiet: true,
        };
        let r =
            run(&sc, &opts).unwrap_or_else(|e| panic!("{kind}: {e} (the broker must be running: scripts/services.sh)"));
        assert_eq!(r.publish.accepted, 200, "{kind}: {}", r.summary());
        assert_eq!(r.delivery.delivered, 200, "{kind}: {}", r.summary());
        assert_eq!(r.delivery.lost, 0, "{kind}");
        let b = r.baseline.as_ref().expect("a baseline");
        assert!(b.requests_per_s > 0.0 && b.client.contains(kind), "{kind}: {b:?}");
        // The raw broker client and the engine make different calls:
        // reported as a comparison, not as a ratio to a ceiling.
        assert!(
            r.ratio.is_none() && r.vs_raw_client.is_some(),
            "{kind}: {}",
            r.summary()
        );
    }
}
