//! Per-connection publish rate limits (`[limits]` `publish_*`): token
//! buckets for messages and payload bytes.

use crate::limits::{LimitsConfig, TokenBucket};

/// Token buckets of one connection.
pub struct Limiter {
    /// PUBLISH packets per second.
    pub messages: Option<TokenBucket>,
    /// Payload bytes per second.
    pub bytes: Option<TokenBucket>,
}

impl Limiter {
    /// The buckets `cfg` asks for; `None` when no publish limit is set.
    pub fn new(cfg: &LimitsConfig) -> Option<Box<Limiter>> {
        let messages = (cfg.publish_per_second > 0)
            .then(|| TokenBucket::new(cfg.publish_per_second as f64, cfg.publish_burst as f64));
        let bytes = (cfg.publish_bytes_per_second > 0).then(|| {
            TokenBucket::new(
                cfg.publish_bytes_per_second as f64,
                cfg.publish_burst_bytes as f64,
            )
        });
        (messages.is_some() || bytes.is_some()).then(|| Box::new(Limiter { messages, bytes }))
    }
}
