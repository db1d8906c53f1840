//! The ticker of a server stream whose client chooses the pace.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tonic::Status;

/// The ticker of a server stream that sends something every `every_ms`
/// milliseconds, as its client asked: `0` asks for `default`, more than
/// `max_ms` is refused `INVALID_ARGUMENT`. A tick missed while the stream
/// was not polled is delayed, not made up in a burst. Call it from a
/// handler (it needs the Tokio runtime); the first tick is at once.
pub fn watch_interval(every_ms: u32, default: Duration, max_ms: u32) -> Result<Interval, Status> {
    let every = match every_ms {
        0 => default,
        ms if ms > max_ms => {
            return Err(Status::invalid_argument(format!(
                "every_ms is {ms}; the limit is {max_ms}"
            )));
        }
        ms => Duration::from_millis(ms.into()),
    };
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::watch_interval;

    #[tokio::test]
    async fn zero_asks_for_the_default_and_the_limit_is_inclusive() {
        let default = Duration::from_millis(250);
        let cases = [
            (0, default),
            (7, Duration::from_millis(7)),
            (60, Duration::from_millis(60)),
        ];
        for (every_ms, period) in cases {
            let interval = watch_interval(every_ms, default, 60).unwrap();
            assert_eq!(interval.period(), period, "every_ms {every_ms}");
        }
        let err = watch_interval(61, default, 60).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "every_ms is 61; the limit is 60");
    }
}
