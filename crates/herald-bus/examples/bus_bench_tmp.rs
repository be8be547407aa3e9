#[tokio::main]
async fn main() {
    let mut opts = herald_bus::bench::BusBenchOptions::default();
    if let Some(n) = std::env::args().nth(1) { opts.messages = n.parse().unwrap(); }
    if let Some(k) = std::env::args().nth(2) { opts.consumers = k.parse().unwrap(); }
    let report = herald_bus::bench::run_bus_bench(opts).await.unwrap();
    println!("{report}");
}
