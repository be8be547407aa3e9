use herald_bus::bench::{run_bus_bench_on, BenchBackend, BusBenchOptions};

#[tokio::main]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let consumers: usize = std::env::args().nth(2).map(|c| c.parse().unwrap()).unwrap_or(4);
    let backend = if which == "embedded" {
        BenchBackend::Embedded
    } else {
        BenchBackend::Postgres { url: "postgres://postgres@127.0.0.1:5432/postgres".into() }
    };
    let report = run_bus_bench_on(&backend, BusBenchOptions { consumers, ..BusBenchOptions::default() }).await.unwrap();
    println!("{report}");
}
