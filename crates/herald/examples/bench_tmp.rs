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
        Some("probe") => {
            use herald_core::Clock;
            let db = herald_store::SqliteDb::open(get("--db").unwrap()).await?;
            let store = herald_store::Store::from_sqlite(db.clone(), std::sync::Arc::new(herald_core::SystemClock));
            let bus = herald_bus::EmbeddedBus::new(db.clone());
            use herald_bus::Bus;
            let alert = store.brand_alerts().get(&get("--alert").unwrap()).await?.unwrap();
            let cadence = store.members().cadence_policy().await?;
            let brands: Vec<String> = vec!["b01".into(), "b02".into(), "b03".into()];
            let now = herald_core::SystemClock.now();
            let t = std::time::Instant::now();
            let mut after: Option<String> = None;
            let mut pages = Vec::new();
            loop {
                let page = store.brand_alerts().audience_page(&alert, &brands, &cadence, after.as_deref(), 1000, now).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.member_id.clone());
                pages.push(page);
            }
            eprintln!("read {} pages in {:?}", pages.len(), t.elapsed());
            let t = std::time::Instant::now();
            let mut after = String::new();
            let mut rows = 0usize;
            let sql = "SELECT json_group_array(json_array(member_id, brand_ids, unsubscribed, suppressed, recent_sends)) AS page, max(member_id) AS last FROM (SELECT a.member_id AS member_id, json_group_array(a.brand_id) AS brand_ids, \
EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.member_id = a.member_id AND s.email_type = ?1 AND s.subscribed = 0) AS unsubscribed, \
EXISTS (SELECT 1 FROM suppressions AS p WHERE p.address = m.email_normalized) AS suppressed, \
(SELECT count(*) FROM send_log AS l WHERE l.member_id = a.member_id AND l.claimed_at > ?2 AND l.alert_id <> ?3 AND l.state IN ('claimed', 'released', 'sent')) AS recent_sends \
FROM affinities AS a CROSS JOIN members AS m \
WHERE a.member_id > ?4 AND +a.brand_id IN (SELECT value FROM json_each(?5)) AND +a.score >= ?6 AND m.id = a.member_id AND m.status = 'active' \
GROUP BY a.member_id ORDER BY a.member_id LIMIT ?7)";
            loop {
                let (page, last): (String, Option<String>) = sqlx::query_as(sql)
                    .bind("brand_alerts").bind(cadence.window_start(now).0).bind(&alert.id).bind(&after)
                    .bind(r#"["b01","b02","b03"]"#).bind(alert.affinity_threshold).bind(1000i64)
                    .fetch_one(&db.reader).await?;
                let parsed: Vec<(String, String, i64, i64, i64)> = serde_json::from_str(&page)?;
                let parsed: Vec<(String, Vec<String>)> = parsed.into_iter().map(|(m, b, ..)| (m, serde_json::from_str(&b).unwrap())).collect();
                rows += parsed.len();
                match last { Some(l) => after = l, None => break }
            }
            eprintln!("json pages: {rows} rows in {:?}", t.elapsed());
            let q = herald_alerts::queue::email_queue();
            herald_alerts::queue::ensure_email_queue(&bus, &herald_bus::QueueConfig::default()).await?;
            let t = std::time::Instant::now();
            let mut n = 0;
            for page in &pages {
                let msgs: Vec<_> = page.iter().filter(|c| c.exclusion.is_none()).map(|c| herald_alerts::EmailJob{alert_id: alert.id.clone(), member_id: c.member_id.clone(), brand_ids: c.brand_ids.clone()}.to_message()).collect();
                n += msgs.len();
                if get("--nodedup").is_some() {
                    let msgs: Vec<_> = msgs.into_iter().map(|mut m| { m.dedup_key = None; m }).collect();
                    for c in msgs.chunks(500) { bus.send_batch(&q, c.to_vec()).await?; }
                } else {
                    bus.send_batch(&q, msgs).await?;
                }
            }
            eprintln!("sent {n} in {:?}", t.elapsed());
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
