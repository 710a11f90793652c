//! Running one operation from several concurrent clients, for the benchmarks.

use std::future::Future;
use std::time::{Duration, Instant};

/// `requests` calls of `op` (given the call's number) spread over `clients` concurrent
/// clients. Returns requests per second and every call's latency, sorted.
pub async fn load<F, Fut>(clients: usize, requests: usize, op: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (c..requests).step_by(clients) {
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = started.elapsed();
    lat.sort();
    (lat.len() as f64 / wall.as_secs_f64(), lat)
}
