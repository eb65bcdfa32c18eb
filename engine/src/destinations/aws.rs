//! What the AWS types share: static keys (and an optional session token) or,
//! where the operator allows it, the server's own AWS identity; the region, an
//! endpoint override that passes the SSRF guard (checked before the client is
//! made, and again by the SDK's resolver on every lookup), one SDK
//! configuration per (region, endpoint, keys) on a shard, and error codes.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use super::fields::Field;
use super::{clients, fields, Actor, PublishResult, Violations};
use crate::model::{Destination, StringMap};

/// Static keys and an optional session token, as Outpost lists them for
/// Kinesis and S3 (SQS lists the first two).
pub const CREDENTIALS: &[Field] = &[
    Field::text("key", "Access Key ID", "AWS Access Key ID")
        .required()
        .sensitive(),
    Field::text("secret", "Secret Access Key", "AWS Secret Access Key")
        .required()
        .sensitive(),
    Field::text(
        "session",
        "Session Token",
        "AWS session token, for temporary credentials",
    )
    .sensitive(),
];

/// The listed region pattern (`us-east-1`).
pub const REGION_PATTERN: &str = "^[a-z]{2}-[a-z]+-[0-9]+$";

pub fn region_ok(v: &str) -> bool {
    let mut parts = v.split('-');
    let (Some(a), Some(b), Some(c), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    a.len() == 2
        && a.bytes().all(|c| c.is_ascii_lowercase())
        && !b.is_empty()
        && b.bytes().all(|c| c.is_ascii_lowercase())
        && !c.is_empty()
        && c.bytes().all(|c| c.is_ascii_digit())
}

/// `config.endpoint`, when given, must be an http(s) URL with a host.
pub fn check_endpoint(config: &StringMap, errs: &mut Vec<String>) {
    if let Some(e) = config.get("endpoint").filter(|e| !e.is_empty()) {
        if !fields::http_url(e) || clients::url_host_port(e).is_none() {
            errs.push("config.endpoint failed pattern validation".into());
        }
    }
}

/// Whether a destination may leave out `key` and `secret` and call AWS as
/// the server itself: the SDK's default chain (environment, web identity
/// token, ECS task role, EC2 instance profile, profile files; SSO is not
/// built in). Off unless the operator sets
/// `OUTRIDER_DESTINATIONS_AWS_DEFAULT_CREDENTIALS`, and even then only an
/// admin may save such a destination: a tenant's destination acting with the
/// operator's IAM role could write wherever that role may.
#[derive(Debug, Clone, Copy, Default)]
pub struct CredentialPolicy {
    pub server_identity: bool,
}

const KEYS_REQUIRED: [&str; 2] = ["credentials.key is required", "credentials.secret is required"];

fn keyless(d: &Destination) -> bool {
    ["key", "secret"]
        .iter()
        .all(|k| d.credentials.get(k).is_none_or(|v| v.is_empty()))
}

impl CredentialPolicy {
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            server_identity: config.destinations_aws_default_credentials,
        }
    }

    /// Drops "key/secret is required" when both are absent and allowed.
    pub fn relax(&self, d: &Destination, errs: &mut Violations) {
        if self.server_identity && keyless(d) {
            errs.retain(|e| !KEYS_REQUIRED.contains(&e.as_str()));
        }
    }

    /// A tenant may not make a destination use the server's identity; an
    /// admin-made one stays usable by its tenant while its target is unchanged.
    pub fn check_actor(&self, d: &Destination, previous: Option<&Destination>, actor: Actor) -> Result<(), Violations> {
        if actor == Actor::Admin || !keyless(d) {
            return Ok(());
        }
        let unchanged = previous.is_some_and(|p| keyless(p) && p.config == d.config);
        if unchanged {
            return Ok(());
        }
        Err(KEYS_REQUIRED.iter().map(|e| e.to_string()).collect())
    }
}

/// As whom a destination calls AWS.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Identity {
    Keys {
        key: String,
        secret: String,
        session: Option<String>,
    },
    /// The server's default credential chain.
    Server,
}

/// Where and as whom a destination calls AWS; equal keys share a client on a shard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AwsKey {
    pub region: String,
    pub endpoint: Option<String>,
    identity: Identity,
}

impl AwsKey {
    pub fn new(
        d: &Destination,
        region: String,
        endpoint: Option<String>,
        policy: CredentialPolicy,
    ) -> Result<Self, super::PublisherError> {
        let cred = |k: &str| d.credentials.get(k).filter(|v| !v.is_empty()).cloned();
        let identity = if policy.server_identity && keyless(d) {
            Identity::Server
        } else {
            Identity::Keys {
                key: cred("key").ok_or(super::PublisherError::Missing("credentials.key"))?,
                secret: cred("secret").ok_or(super::PublisherError::Missing("credentials.secret"))?,
                session: cred("session"),
            }
        };
        Ok(Self {
            region,
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            identity,
        })
    }

    /// The SDK configuration, once the host it will call (the endpoint, else
    /// `default_host`) passed the SSRF guard.
    pub async fn sdk_config(&self, default_host: &str, guard: &crate::ssrf::Guard) -> Result<SdkConfig, PublishResult> {
        let (host, port) = match &self.endpoint {
            Some(e) => clients::url_host_port(e)
                .ok_or_else(|| PublishResult::failed("ERR", format!("invalid endpoint {e}")))?,
            None => (default_host.to_string(), 443),
        };
        clients::checked_target(&host, port, guard).await?;
        let region = Region::new(self.region.clone());
        let provider = match &self.identity {
            Identity::Keys { key, secret, session } => SharedCredentialsProvider::new(Credentials::new(
                key,
                secret,
                session.clone(),
                None,
                "outrider-destination",
            )),
            Identity::Server => SharedCredentialsProvider::new(
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(region.clone())
                    .build()
                    .await,
            ),
        };
        let mut b = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(guarded_https_client(guard))
            .region(region)
            .credentials_provider(provider)
            // The delivery schedule retries; an SDK retry inside one attempt
            // would only hide the failure from the attempt log.
            .retry_config(RetryConfig::disabled());
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(b.build())
    }
}

/// Resolves names for the SDK's HTTP client through the SSRF guard, so the
/// connection goes to an address that was checked: a check before the SDK
/// made its own lookup would leave a second lookup (DNS rebinding) free to
/// answer differently. IP-literal endpoints never reach a resolver; the
/// check in [`AwsKey::sdk_config`] covers them.
#[derive(Debug, Clone)]
struct GuardedDns(crate::ssrf::Guard);

impl ResolveDns for GuardedDns {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            // The port is not part of the answer; any will do.
            crate::ssrf::resolve(name, 443, &self.0)
                .await
                .map(|addrs| addrs.into_iter().map(|a| a.ip()).collect())
                .map_err(ResolveDnsError::new)
        })
    }
}

/// The SDK's default HTTPS client (rustls, aws-lc), with [`GuardedDns`].
fn guarded_https_client(guard: &crate::ssrf::Guard) -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .build_with_resolver(GuardedDns(guard.clone()))
}

/// An SDK error as an attempt: network codes, `auth_failed` and
/// `access_denied` (permanent), `not_found` for the service's missing
/// resource, else `ERR` with the service's code and message.
pub fn classify<E, R>(e: &SdkError<E, R>, not_found: &'static str) -> PublishResult
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = DisplayErrorContext(e).to_string();
    match e {
        SdkError::TimeoutError(_) => PublishResult::failed("timeout", text),
        SdkError::DispatchFailure(d) if d.is_timeout() => PublishResult::failed("timeout", text),
        SdkError::DispatchFailure(_) => PublishResult::failed(clients::network_code(&text), text),
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            let message = s.err().message().unwrap_or("");
            let detail = if message.is_empty() {
                code.to_string()
            } else {
                format!("{code}: {message}")
            };
            let ours = service_code(code, not_found);
            PublishResult::error(ours, detail)
        }
        _ => PublishResult::failed("ERR", text),
    }
}

/// Our code for an AWS error code, from a whole call or from one entry of a
/// batch call (`auth_failed` and `access_denied` are permanent).
pub fn service_code(code: &str, not_found: &'static str) -> &'static str {
    match code {
        "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "InvalidSecurity"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidAccessKeyId"
        | "InvalidSignatureException" => "auth_failed",
        "AccessDenied" | "AccessDeniedException" | "KMS.AccessDeniedException" | "KMSAccessDeniedException" => {
            "access_denied"
        }
        "AWS.SimpleQueueService.NonExistentQueue"
        | "QueueDoesNotExist"
        | "ResourceNotFoundException"
        | "NoSuchBucket" => not_found,
        _ => "ERR",
    }
}

/// A failed entry of a batch call: our code, and the service's code and message.
pub fn entry_failure(code: &str, message: Option<&str>, not_found: &'static str) -> PublishResult {
    let detail = match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("{code}: {m}"),
        None => code.to_string(),
    };
    PublishResult::error(service_code(code, not_found), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK looks names up through the guard: with it on, a name that
    /// resolves to loopback never gets a connection, whatever a check before
    /// it said; with it off the same call connects.
    #[tokio::test]
    async fn the_sdk_resolves_names_through_the_guard() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let call = |guard: crate::ssrf::Guard| async move {
            let cfg = SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                    "k", "s", None, None, "t",
                )))
                .retry_config(RetryConfig::disabled())
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_timeout(std::time::Duration::from_secs(2))
                        .build(),
                )
                .http_client(guarded_https_client(&guard))
                .endpoint_url(format!("http://localhost:{port}"))
                .build();
            let client = aws_sdk_sqs::Client::new(&cfg);
            client
                .list_queues()
                .send()
                .await
                .map(|_| ())
                .map_err(|e| DisplayErrorContext(e).to_string())
        };
        let refused = call(crate::ssrf::Guard::on(vec![])).await.unwrap_err();
        assert!(refused.contains("not allowed"), "{refused}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        let _ = call(crate::ssrf::Guard::off()).await;
        assert!(
            accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "the unguarded call connected"
        );
    }

    #[test]
    fn regions() {
        assert!(region_ok("us-east-1"));
        assert!(region_ok("ap-southeast-2"));
        assert!(!region_ok("us-east"));
        assert!(!region_ok("US-east-1"));
        assert!(!region_ok("us-east-1a"));
        assert!(!region_ok("use-east-1"));
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use crate::destinations::test_destination;

    #[test]
    fn the_server_identity_is_opt_in_and_admin_only() {
        let keyless = test_destination("aws_sqs", &[("queue_url", "https://q")], &[]);
        let keyed = test_destination(
            "aws_sqs",
            &[("queue_url", "https://q")],
            &[("key", "k"), ("secret", "s")],
        );
        let off = CredentialPolicy::default();
        let on = CredentialPolicy { server_identity: true };
        let required = || vec![KEYS_REQUIRED[0].to_string(), KEYS_REQUIRED[1].to_string()];

        let mut errs = required();
        off.relax(&keyless, &mut errs);
        assert_eq!(errs, required(), "off: the keys stay required");
        on.relax(&keyless, &mut errs);
        assert!(errs.is_empty());
        let half = test_destination("aws_sqs", &[], &[("key", "k")]);
        let mut errs = vec![KEYS_REQUIRED[1].to_string()];
        on.relax(&half, &mut errs);
        assert_eq!(errs.len(), 1, "a key without its secret is still an error");

        assert!(on.check_actor(&keyless, None, Actor::Admin).is_ok());
        assert!(on.check_actor(&keyless, None, Actor::Tenant).is_err());
        assert!(on.check_actor(&keyed, None, Actor::Tenant).is_ok());
        assert!(
            on.check_actor(&keyless, Some(&keyless), Actor::Tenant).is_ok(),
            "unchanged target"
        );
        let mut moved = keyless.clone();
        moved.config.insert("queue_url".into(), "https://elsewhere".into());
        assert!(
            on.check_actor(&moved, Some(&keyless), Actor::Tenant).is_err(),
            "new target"
        );

        assert!(AwsKey::new(&keyless, "us-east-1".into(), None, off).is_err());
        let k = AwsKey::new(&keyless, "us-east-1".into(), None, on).unwrap();
        assert!(k.identity == Identity::Server);
        let k = AwsKey::new(&keyed, "us-east-1".into(), None, on).unwrap();
        assert!(matches!(k.identity, Identity::Keys { .. }));
    }
}
