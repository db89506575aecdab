//! Waiting for something to happen: a probe polled against a deadline,
//! never a bare sleep. One loop, [`poll_until`]; the rest are its shapes.

use std::future::Future;
use std::time::Duration;

use super::PATIENCE;

/// How often a probe is asked again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `probe` until it gives `Ok(value)` and returns the value; `Err`
/// describes the state so far. Panics after `limit` naming `what` and the
/// last `Err`.
pub async fn poll_until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last: {last}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until `cond` holds; panics naming `what` after `limit`.
pub async fn eventually_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    poll_until(what, limit, || std::future::ready(yes_or_not_yet(cond()))).await
}

/// [`eventually_within`] the test's [`PATIENCE`].
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, PATIENCE, cond).await
}

/// Waits until the async `probe` says yes; panics naming `what` after
/// [`PATIENCE`].
pub async fn eventually_async<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(what, PATIENCE, || {
        let answer = probe();
        async move { yes_or_not_yet(answer.await) }
    })
    .await
}

fn yes_or_not_yet(yes: bool) -> Result<(), String> {
    if yes {
        Ok(())
    } else {
        Err("not yet".to_owned())
    }
}
