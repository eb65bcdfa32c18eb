//! What the AWS types share: static keys (and an optional session token),
//! the region, an endpoint override that passes the SSRF guard, one SDK
//! configuration per (region, endpoint, keys) on a shard, and error codes.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::fields::Field;
use super::{clients, fields, PublishResult};
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

/// Where and as whom a destination calls AWS; equal keys share a client on a shard.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AwsKey {
    pub region: String,
    pub endpoint: Option<String>,
    key: String,
    secret: String,
    session: Option<String>,
}

impl AwsKey {
    pub fn new(d: &Destination, region: String, endpoint: Option<String>) -> Result<Self, String> {
        let cred = |k: &str| d.credentials.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(Self {
            region,
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            key: cred("key").ok_or("credentials.key is required")?,
            secret: cred("secret").ok_or("credentials.secret is required")?,
            session: cred("session"),
        })
    }

    /// The SDK configuration, once the host it will call (the endpoint, else
    /// `default_host`) passed the SSRF guard.
    pub async fn sdk_config(&self, default_host: &str, guard: bool) -> Result<SdkConfig, PublishResult> {
        let (host, port) = match &self.endpoint {
            Some(e) => clients::url_host_port(e)
                .ok_or_else(|| PublishResult::failed("ERR", format!("invalid endpoint {e}")))?,
            None => (default_host.to_string(), 443),
        };
        clients::checked_target(&host, port, guard).await?;
        let creds = Credentials::new(
            &self.key,
            &self.secret,
            self.session.clone(),
            None,
            "outrider-destination",
        );
        let mut b = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(SharedCredentialsProvider::new(creds))
            // The delivery schedule retries; an SDK retry inside one attempt
            // would only hide the failure from the attempt log.
            .retry_config(RetryConfig::disabled());
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(b.build())
    }
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
