//! Token fetches over the agent's socket: latency on one reused connection, then throughput with
//! several connections. Prints one JSON object; `bench/agent.sh` starts the agent and formats the table.

use anyhow::Context;
use sidecred_proto::client::Client;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
struct Args {
    /// The agent's socket.
    #[arg(long)]
    socket: PathBuf,
    /// Fetches timed one by one on a reused connection.
    #[arg(long, default_value_t = 100_000)]
    latency_fetches: usize,
    /// Connections used for the throughput run.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of the throughput run.
    #[arg(long, default_value = "5s", value_parser = humantime_parse)]
    duration: Duration,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration unit in {s}")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    // One thread, like the forwarder's calls: the agent, not the client, is what is measured.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket).await.context("connect")?;
    // Warm up the connection and the agent's allocator.
    for _ in 0..1000 {
        client.get_token().await.context("warm-up fetch")?;
    }
    let mut samples = Vec::with_capacity(args.latency_fetches);
    for _ in 0..args.latency_fetches {
        let t = Instant::now();
        client.get_token().await.context("fetch")?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();

    let deadline = Instant::now() + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let socket = args.socket.clone();
        tasks.spawn(async move {
            let mut c = Client::connect(&socket).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                for _ in 0..64 {
                    c.get_token().await?;
                }
                n += 64;
            }
            anyhow::Ok(n)
        });
    }
    let started = Instant::now();
    let mut total = 0u64;
    while let Some(joined) = tasks.join_next().await {
        total += joined??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{}",
        serde_json::json!({
            "latency_fetches": samples.len(),
            "p50_us": us(sidecred_bench::percentile(&samples, 0.50)),
            "p99_us": us(sidecred_bench::percentile(&samples, 0.99)),
            "p999_us": us(sidecred_bench::percentile(&samples, 0.999)),
            "connections": args.connections,
            "fetches": total,
            "fetches_per_s": total as f64 / elapsed,
        })
    );
    Ok(())
}
