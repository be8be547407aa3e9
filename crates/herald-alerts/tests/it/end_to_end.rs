//! An alert from scheduled to sent: the audience job enqueues, the mailer
//! sends, every eligible member gets exactly one email.

use std::sync::Arc;
use std::time::Duration;

use herald_alerts::{AudienceSettings, AudienceWorker, BuildOutcome};
use herald_core::alert::AlertState;
use herald_core::cadence::CadencePolicy;
use herald_core::catalog::MemberStatus;
use herald_mail::{OutgoingEmail, UnsubscribeSigner};
use mailparse::MailHeaderMap;
use tokio_util::sync::CancellationToken;

use crate::support::{mailer_settings, CaptureTransport, Sink, TestEnv, PATIENCE, SIGNING_KEY};

alerts_suite!(
    every_eligible_member_gets_one_email_listing_their_brands,
    the_workers_run_until_shutdown_and_complete_the_alert,
    the_outbox_transport_writes_one_message_per_member,
);

/// Brands acme and globex on sale (acme twice); initech is not in the alert.
async fn catalog(env: &TestEnv) -> (String, Vec<String>) {
    env.brand("acme", "Acme").await;
    env.brand("globex", "Globex").await;
    env.brand("initech", "Initech").await;
    let sales = vec![
        env.sale("acme", "Acme spring").await,
        env.sale("globex", "Globex weekend").await,
        env.sale("acme", "Acme outlet").await,
    ];
    (env.standard_template().await, sales)
}

async fn every_eligible_member_gets_one_email_listing_their_brands(env: TestEnv) {
    let (template, sales) = catalog(&env).await;
    let initech_sale = env.sale("initech", "Initech days").await;
    // Who gets what:
    env.member("m01", Some("Ada")).await; // acme → one brand
    env.affinity("m01", "acme", 0.9).await;
    env.member("m02", None).await; // globex and acme → one email, both brands
    env.affinity("m02", "globex", 0.8).await;
    env.affinity("m02", "acme", 0.7).await;
    env.member("m03", Some("Cy")).await; // under the threshold
    env.affinity("m03", "acme", 0.3).await;
    env.member("m04", Some("Di")).await; // unsubscribed
    env.affinity("m04", "acme", 0.9).await;
    env.unsubscribe("m04").await;
    env.member_with("m05", "Eve@Example.com", Some("Eve"), MemberStatus::Active)
        .await; // suppressed (the suppression matches the normalized address)
    env.affinity("m05", "acme", 0.9).await;
    env.suppress("eve@example.com").await;
    env.member_with(
        "m06",
        "m06@example.com",
        Some("Fay"),
        MemberStatus::Inactive,
    )
    .await; // inactive
    env.affinity("m06", "acme", 0.9).await;
    env.member("m07", Some("Gus")).await; // only a brand outside the alert
    env.affinity("m07", "initech", 0.99).await;
    env.member("m08", Some("Hal")).await; // at the cadence limit
    env.affinity("m08", "acme", 0.9).await;
    env.affinity("m08", "initech", 0.99).await;

    // m08 (and m07) get an earlier alert; with one alert per window, m08
    // is then at the limit for the next.
    env.store
        .members()
        .set_cadence_policy(&CadencePolicy::new(1, Duration::from_secs(86_400)).unwrap())
        .await
        .unwrap();
    let sink = Arc::new(Sink::default());
    let transport = Arc::new(CaptureTransport::new(sink.clone()));
    let mailer = env.mailer(transport, mailer_settings());
    let earlier = env.alert(&template, &[initech_sale], 0.95).await;
    env.build_all().await;
    env.send_until_done(&mailer, &earlier.id).await;
    assert_eq!(sink.per_member().keys().collect::<Vec<_>>(), ["m07", "m08"]);

    let alert = env.alert(&template, &sales, 0.5).await;
    let job = Arc::new(env.audience_job(AudienceSettings::default()));
    let outcomes = AudienceWorker::new(job)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    let BuildOutcome::Finished(built) = &outcomes[0].1 else {
        panic!("{outcomes:?}")
    };
    assert_eq!(built.id, alert.id);
    assert_eq!(built.state, AlertState::Sending);
    assert_eq!(built.build.audience_size, Some(2));

    let report = env.send_until_done(&mailer, &alert.id).await;
    assert_eq!(report.sent, 2, "{report:?}");
    assert_eq!(report.possible_duplicates, 0);
    assert_eq!(env.get_alert(&alert.id).await.state, AlertState::Sent);

    let emails: Vec<OutgoingEmail> = sink
        .emails()
        .into_iter()
        .filter(|e| e.custom_args["alert_id"] == alert.id)
        .collect();
    let mut members: Vec<&str> = emails
        .iter()
        .map(|e| e.custom_args["member_id"].as_str())
        .collect();
    members.sort_unstable();
    assert_eq!(
        members,
        ["m01", "m02"],
        "exactly one email per eligible member"
    );

    let m02 = emails
        .iter()
        .find(|e| e.custom_args["member_id"] == "m02")
        .unwrap();
    assert_eq!(m02.subject, "Your brands are on sale: Acme & Globex");
    let order: Vec<usize> = [
        "Acme: Acme spring",
        "Globex: Globex weekend",
        "Acme: Acme outlet",
    ]
    .iter()
    .map(|needle| {
        m02.html
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} missing in {}", m02.html))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "sales in alert order"
    );
    assert!(m02.html.contains("Hi there,"), "{}", m02.html);
    assert!(
        m02.html.contains(r#"style="color: #c00"#),
        "CSS inlined: {}",
        m02.html
    );
    assert!(!m02.html.contains("Initech"));

    let m01 = emails
        .iter()
        .find(|e| e.custom_args["member_id"] == "m01")
        .unwrap();
    assert_eq!(m01.subject, "Your brands are on sale: Acme");
    assert!(m01.html.contains("Hi Ada,"));
    assert!(!m01.html.contains("Globex"), "{}", m01.html);
    assert_eq!(m01.to.to_string(), "Ada Example <m01@example.com>");
    assert_eq!(
        m01.custom_args["customer_id"], "m01",
        "the member id when no customer id"
    );
    assert_eq!(
        m01.message_id,
        OutgoingEmail::message_id_for(&alert.id, "m01", "herald.example.com")
    );
    let unsubscribe = m01.list_unsubscribe.as_ref().unwrap();
    let token = unsubscribe
        .url
        .strip_prefix("https://herald.example.com/unsubscribe/")
        .expect("unsubscribe URL under public_url");
    let claim = UnsubscribeSigner::new(SIGNING_KEY)
        .unwrap()
        .verify(token)
        .unwrap();
    assert_eq!(
        (claim.alert_id.as_str(), claim.member_id.as_str()),
        (alert.id.as_str(), "m01")
    );
    assert!(m01.html.contains(&unsubscribe.url));

    let stats = env.stats(&alert.id).await;
    assert_eq!(stats.audience_size, Some(2));
    assert_eq!(stats.enqueued, 2);
    assert_eq!(stats.sent, 2);
    assert_eq!(stats.excluded_unsubscribed, 1);
    assert_eq!(stats.excluded_suppressed, 1);
    assert_eq!(stats.excluded_cadence, 1);
    assert_eq!(stats.queued, 0);
    assert_eq!(stats.possible_duplicates, 0);

    // Running everything again sends nothing more.
    env.build_all().await;
    let again = mailer.drain().await.unwrap();
    assert_eq!(again.sent, 0, "{again:?}");
    assert_eq!(sink.len(), 4);
}

async fn the_workers_run_until_shutdown_and_complete_the_alert(env: TestEnv) {
    let (template, sales) = catalog(&env).await;
    let members = env.members_for("w", 40, "globex").await;
    let alert = env.alert(&template, &sales, 0.5).await;
    let sink = Arc::new(Sink::default());
    let mailer = env.mailer(
        Arc::new(CaptureTransport::new(sink.clone())),
        mailer_settings(),
    );
    let settings = AudienceSettings {
        poll_interval: Duration::from_millis(50),
        batch_size: 7,
        ..AudienceSettings::default()
    };
    let worker = AudienceWorker::new(Arc::new(env.audience_job(settings)));
    let shutdown = CancellationToken::new();
    let audience = tokio::spawn(worker.run(shutdown.clone()));
    let sending = tokio::spawn(mailer.run(shutdown.clone()));

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while env.get_alert(&alert.id).await.state != AlertState::Sent {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alert not sent in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    audience.await.unwrap().unwrap();
    let report = sending.await.unwrap().unwrap();
    assert_eq!(report.sent, 40, "{report:?}");
    let per_member = sink.per_member();
    assert_eq!(per_member.len(), members.len());
    assert!(per_member.values().all(|n| *n == 1), "{per_member:?}");
    let stats = env.stats(&alert.id).await;
    assert_eq!((stats.audience_size, stats.sent), (Some(40), 40));
}

async fn the_outbox_transport_writes_one_message_per_member(env: TestEnv) {
    let (template, sales) = catalog(&env).await;
    env.members_for("o", 3, "acme").await;
    let alert = env.alert(&template, &sales, 0.5).await;
    let outbox = env.dir.path().join("outbox");
    let transports =
        herald_alerts::Transports::build(&Default::default(), "outbox", env.dir.path()).unwrap();
    let settings = herald_alerts::MailerSettings {
        default_transport: "outbox".into(),
        ..mailer_settings()
    };
    let composer = Arc::new(
        herald_alerts::Composer::new(
            env.store.clone(),
            Arc::new(transports),
            &settings,
            SIGNING_KEY,
            env.clock.clone(),
        )
        .unwrap(),
    );
    let mailer = herald_alerts::Mailer::new(
        env.store.clone(),
        env.bus.clone(),
        composer,
        settings,
        env.queue_config(),
        env.clock.clone(),
    )
    .unwrap();
    env.build_all().await;
    env.send_until_done(&mailer, &alert.id).await;

    let mut files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let raw = std::fs::read(&files[0]).unwrap();
    let parsed = mailparse::parse_mail(&raw).unwrap();
    let header = |name: &str| parsed.headers.get_first_value(name).unwrap_or_default();
    assert_eq!(header("X-Herald-Alert-Id"), alert.id);
    assert_eq!(header("X-Herald-Member-Id"), "o-0000");
    assert_eq!(header("X-Herald-Customer-Id"), "cust-o-0000");
    assert_eq!(
        header("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    assert!(header("List-Unsubscribe").starts_with("<https://herald.example.com/unsubscribe/"));
    assert_eq!(
        header("Message-ID"),
        format!(
            "<{}>",
            OutgoingEmail::message_id_for(&alert.id, "o-0000", "herald.example.com")
        )
    );
    assert_eq!(parsed.subparts.len(), 2, "text and HTML parts");
    assert!(parsed.subparts[0]
        .get_body()
        .unwrap()
        .contains("Acme spring"));
}
