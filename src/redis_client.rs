//! How every adtrack connection to Redis is made: one reconnecting
//! `ConnectionManager` configuration, shared by the app, the workers, the
//! pusher and the commands.

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A Redis connection that reconnects by itself; `response` bounds every
/// command (a blocking reservation must fit inside it).
pub async fn redis_connection(url: &str, response: Duration) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("REDIS_URL is not a valid redis URL")?;
    ConnectionManager::new_with_config(client, redis_manager_config(response))
        .await
        .context("connecting to Redis")
}

/// How every adtrack connection to Redis connects and reconnects.
pub fn redis_manager_config(response: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(response)
        .set_number_of_retries(2)
        .set_max_delay(1000)
}
