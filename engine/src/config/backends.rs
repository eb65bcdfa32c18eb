//! Back ends: Redis, the delivery queue (RabbitMQ, SQS or Pub/Sub) and the
//! publish queue a node may consume events from.

use std::path::PathBuf;

use super::sources::Sources;
use super::{invalid, ConfigError};
use crate::secret::Secret;

/// A delivery queue is only half of a split deployment: the nodes share
/// tenants, destinations and publish idempotency through Redis.
fn needs_redis(src: &Sources, queue_key: &'static str) -> Result<(), ConfigError> {
    match src.non_empty("REDIS_HOST") {
        Some(_) => Ok(()),
        None => Err(invalid(
            queue_key,
            "a delivery queue needs REDIS_HOST too: tenants, destinations and publish idempotency are shared through Redis",
        )),
    }
}

/// An AWS key pair: both or neither (`hint` says what neither means).
fn aws_keys(
    src: &Sources,
    id_key: &'static str,
    secret_key: &'static str,
    hint: &str,
) -> Result<Option<(String, Secret)>, ConfigError> {
    match (src.non_empty(id_key), src.non_empty(secret_key)) {
        (Some(k), Some(s)) => Ok(Some((k.to_string(), Secret::from(s)))),
        (None, None) => Ok(None),
        _ => Err(invalid(
            id_key,
            format!("set both {id_key} and {secret_key}, or neither{hint}"),
        )),
    }
}

pub(super) fn redis(src: &Sources) -> Result<Option<crate::store::redis::RedisConfig>, ConfigError> {
    Ok(match src.non_empty("REDIS_HOST") {
        None => None,
        Some(host) => {
            let cluster = src.bool("REDIS_CLUSTER_ENABLED", false)?;
            if cluster && src.non_empty("OUTRIDER_REDIS_TLS_CA_FILE").is_some() {
                return Err(invalid(
                    "OUTRIDER_REDIS_TLS_CA_FILE",
                    "a custom CA is not supported with REDIS_CLUSTER_ENABLED yet: use system roots or OUTRIDER_REDIS_TLS_INSECURE",
                ));
            }
            if cluster && src.num("REDIS_DATABASE", 0i64)? != 0 {
                return Err(invalid("REDIS_DATABASE", "a Redis Cluster has only database 0"));
            }
            Some(crate::store::redis::RedisConfig {
                host: host.to_string(),
                port: src.num("REDIS_PORT", 6379)?,
                username: src.non_empty("REDIS_USERNAME").map(String::from),
                password: src.non_empty("REDIS_PASSWORD").map(String::from),
                database: src.num("REDIS_DATABASE", 0)?,
                tls: if src.bool("REDIS_TLS_ENABLED", false)? {
                    Some(crate::store::redis::RedisTls {
                        ca_file: src.non_empty("OUTRIDER_REDIS_TLS_CA_FILE").map(PathBuf::from),
                        // Outpost's newer REDIS_TLS_VERIFY=false means the same.
                        insecure: src.bool("OUTRIDER_REDIS_TLS_INSECURE", false)?
                            || !src.bool("REDIS_TLS_VERIFY", true)?,
                    })
                } else {
                    None
                },
                cluster,
            })
        }
    })
}

pub(super) fn rabbitmq(src: &Sources) -> Result<Option<crate::queue::rabbitmq::RabbitConfig>, ConfigError> {
    Ok(match src.non_empty("RABBITMQ_SERVER_URL") {
        None => None,
        Some(url) => {
            needs_redis(src, "RABBITMQ_SERVER_URL")?;
            Some(crate::queue::rabbitmq::RabbitConfig {
                url: url.into(),
                exchange: src.non_empty("RABBITMQ_EXCHANGE").unwrap_or("outpost").to_string(),
                delivery_queue: src
                    .non_empty("RABBITMQ_DELIVERY_QUEUE")
                    .unwrap_or("outpost-delivery")
                    .to_string(),
                dlq: src.non_empty("RABBITMQ_DELIVERY_DLQ").map(String::from),
                auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
                ca_pem: rabbitmq_ca(src)?,
            })
        }
    })
}

pub(super) fn sqs(src: &Sources) -> Result<Option<crate::queue::sqs::SqsConfig>, ConfigError> {
    Ok(match src.non_empty("AWS_SQS_REGION") {
        None => None,
        Some(region) => {
            needs_redis(src, "AWS_SQS_REGION")?;
            let credentials = aws_keys(
                src,
                "AWS_SQS_ACCESS_KEY_ID",
                "AWS_SQS_SECRET_ACCESS_KEY",
                " (default credential chain)",
            )?;
            Some(crate::queue::sqs::SqsConfig {
                region: region.to_string(),
                endpoint: src.non_empty("AWS_SQS_ENDPOINT").map(String::from),
                credentials,
                delivery_queue: src
                    .non_empty("AWS_SQS_DELIVERY_QUEUE")
                    .unwrap_or("outpost-delivery")
                    .to_string(),
                dlq: src.non_empty("AWS_SQS_DELIVERY_DLQ").map(String::from),
                auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
            })
        }
    })
}

pub(super) fn pubsub(src: &Sources) -> Result<Option<crate::queue::pubsub::PubSubConfig>, ConfigError> {
    Ok(match src.non_empty("GCP_PUBSUB_PROJECT") {
        None => None,
        Some(project) => {
            needs_redis(src, "GCP_PUBSUB_PROJECT")?;
            let topic = src
                .non_empty("GCP_PUBSUB_DELIVERY_TOPIC")
                .unwrap_or("outpost-delivery")
                .to_string();
            Some(crate::queue::pubsub::PubSubConfig {
                credentials: gcp_credentials(
                    "GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
                    src.non_empty("GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS"),
                )?
                .map(Secret::from),
                project: project.to_string(),
                subscription: src
                    .non_empty("GCP_PUBSUB_DELIVERY_SUBSCRIPTION")
                    .map(String::from)
                    .unwrap_or_else(|| format!("{topic}-sub")),
                topic,
                dlq_topic: src.non_empty("GCP_PUBSUB_DELIVERY_DLQ_TOPIC").map(String::from),
                dlq_subscription: src.non_empty("GCP_PUBSUB_DELIVERY_DLQ_SUBSCRIPTION").map(String::from),
                auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
            })
        }
    })
}

pub(super) fn publish_sqs(src: &Sources) -> Result<Option<crate::queue::sqs::SqsConfig>, ConfigError> {
    Ok(match src.non_empty("PUBLISH_AWS_SQS_REGION") {
        None => None,
        Some(region) => Some(crate::queue::sqs::SqsConfig {
            region: region.to_string(),
            endpoint: src.non_empty("PUBLISH_AWS_SQS_ENDPOINT").map(String::from),
            credentials: aws_keys(
                src,
                "PUBLISH_AWS_SQS_ACCESS_KEY_ID",
                "PUBLISH_AWS_SQS_SECRET_ACCESS_KEY",
                "",
            )?,
            delivery_queue: src
                .non_empty("PUBLISH_AWS_SQS_QUEUE")
                .ok_or(ConfigError::Missing {
                    key: "PUBLISH_AWS_SQS_QUEUE",
                })?
                .to_string(),
            dlq: None,
            auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
        }),
    })
}

pub(super) fn publish_pubsub(src: &Sources) -> Result<Option<crate::queue::pubsub::PubSubConfig>, ConfigError> {
    Ok(match src.non_empty("PUBLISH_GCP_PUBSUB_PROJECT") {
        None => None,
        Some(project) => {
            let topic = src
                .non_empty("PUBLISH_GCP_PUBSUB_TOPIC")
                .ok_or(ConfigError::Missing {
                    key: "PUBLISH_GCP_PUBSUB_TOPIC",
                })?
                .to_string();
            Some(crate::queue::pubsub::PubSubConfig {
                credentials: gcp_credentials(
                    "PUBLISH_GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS",
                    src.non_empty("PUBLISH_GCP_PUBSUB_SERVICE_ACCOUNT_CREDENTIALS"),
                )?
                .map(Secret::from),
                project: project.to_string(),
                subscription: src
                    .non_empty("PUBLISH_GCP_PUBSUB_SUBSCRIPTION")
                    .map(String::from)
                    .unwrap_or_else(|| format!("{topic}-sub")),
                topic,
                dlq_topic: None,
                dlq_subscription: None,
                auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
            })
        }
    })
}

pub(super) fn publish_rabbitmq(src: &Sources) -> Result<Option<crate::queue::rabbitmq::RabbitConfig>, ConfigError> {
    Ok(match src.non_empty("PUBLISH_RABBITMQ_SERVER_URL") {
        None => None,
        Some(url) => Some(crate::queue::rabbitmq::RabbitConfig {
            url: url.into(),
            exchange: src.non_empty("PUBLISH_RABBITMQ_EXCHANGE").unwrap_or("").to_string(),
            delivery_queue: src
                .non_empty("PUBLISH_RABBITMQ_QUEUE")
                .ok_or(ConfigError::Missing {
                    key: "PUBLISH_RABBITMQ_QUEUE",
                })?
                .to_string(),
            dlq: None,
            auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
            ca_pem: rabbitmq_ca(src)?,
        }),
    })
}

/// `OUTRIDER_RABBITMQ_TLS_CA_FILE`'s certificates, read once at start.
fn rabbitmq_ca(src: &Sources) -> Result<Option<String>, ConfigError> {
    let Some(path) = src.non_empty("OUTRIDER_RABBITMQ_TLS_CA_FILE") else {
        return Ok(None);
    };
    let pem =
        std::fs::read_to_string(path).map_err(|e| invalid("OUTRIDER_RABBITMQ_TLS_CA_FILE", format!("{path}: {e}")))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(
            "OUTRIDER_RABBITMQ_TLS_CA_FILE",
            format!("{path}: no PEM certificate in the file"),
        ));
    }
    Ok(Some(pem))
}

/// A service-account key given inline: it must be a JSON object with a
/// `type` (checked here so a bad value stops the start, naming the key but
/// never echoing the secret).
pub(super) fn gcp_credentials(key: &'static str, value: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let ok = serde_json::from_str::<serde_json::Value>(v)
        .ok()
        .is_some_and(|j| j.get("type").and_then(|t| t.as_str()).is_some());
    if !ok {
        return Err(invalid(
            key,
            "must be the JSON of a service-account key (an object with a \"type\" field)",
        ));
    }
    Ok(Some(v.to_string()))
}
