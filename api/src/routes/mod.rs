//! One module per resource.

pub mod destinations;
pub mod logs;
pub mod meta;
pub mod metrics;
pub mod publish;
pub mod tenants;
