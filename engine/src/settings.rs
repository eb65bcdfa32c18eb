//! What a module that owns a group of settings reports when one of them
//! cannot be used; `config` turns it into its own error, naming the key.

/// A setting that cannot be used, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSetting {
    pub key: &'static str,
    pub message: String,
}

impl BadSetting {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}
