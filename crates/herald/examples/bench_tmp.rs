// Temporary driver for the brand-alert benchmarks (removed after measuring).
use herald::bench::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    match args.get(1).map(String::as_str) {
        Some("--phase") => {
            if let Ok(keep) = std::env::var("HERALD_KEEP_DB") {
                std::fs::copy(get("--db").unwrap(), &keep)?;
                eprintln!("alert {}", get("--alert").unwrap());
            }
            let m = run_build_phase(&BuildPhaseOptions {
                db: get("--db").unwrap().into(),
                alert_id: get("--alert").unwrap(),
                batch_size: get("--batch-size").unwrap().parse()?,
            })
            .await?;
            println!("{}", serde_json::to_string(&m)?);
        }
        Some("audience") => {
            let mut o = AudienceBenchOptions::default();
            if let Some(m) = get("--members") {
                o.members = m.parse()?;
            }
            if let Some(m) = get("--batch-size") {
                o.batch_size = m.parse()?;
            }
            if get("--in-process").is_none() {
                o.build_process = BuildProcess::Child {
                    program: std::env::current_exe()?,
                    args: vec!["--phase".into(), "build".into()],
                };
            }
            println!("{}", run_audience_bench(o).await?);
        }
        Some("delivery") => {
            let mut o = DeliveryBenchOptions::default();
            if let Some(m) = get("--messages") {
                o.messages = m.parse()?;
            }
            if let Some(m) = get("--sessions") {
                o.sessions = m.parse()?;
            }
            if let Some(m) = get("--concurrency") {
                o.concurrency = Some(m.parse()?);
            }
            if let Some(m) = get("--receive-batch") {
                o.receive_batch = m.parse()?;
            }
            println!("{}", run_delivery_bench(o).await?);
        }
        _ => anyhow::bail!("audience|delivery"),
    }
    Ok(())
}
