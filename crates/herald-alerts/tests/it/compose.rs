//! Previews and test sends, as the API offers them.

use std::sync::Arc;

use herald_alerts::compose::{MAX_TEST_ADDRESSES, TEST_SUBJECT_PREFIX};
use herald_alerts::PreviewError;

use crate::support::{mailer_settings, CaptureTransport, Sink, TestEnv};

alerts_suite!(
    a_preview_shows_the_members_own_brands,
    a_test_send_reports_each_address,
);

async fn alert(env: &TestEnv) -> String {
    env.brand("acme", "Acme").await;
    env.brand("globex", "Globex").await;
    let sales = vec![
        env.sale("acme", "Acme spring").await,
        env.sale("globex", "Globex weekend").await,
    ];
    let template = env.standard_template().await;
    env.alert(&template, &sales, 0.5).await.id
}

async fn a_preview_shows_the_members_own_brands(env: TestEnv) {
    let alert_id = alert(&env).await;
    env.member("p1", Some("Ada")).await;
    env.affinity("p1", "acme", 0.9).await;
    env.affinity("p1", "globex", 0.2).await;
    env.member("p2", None).await;
    let composer = env.composer(
        Arc::new(CaptureTransport::new(Arc::default())),
        &mailer_settings(),
    );

    let preview = composer.preview(&alert_id, "p1").await.unwrap();
    assert_eq!(preview.subject, "Your brands are on sale: Acme");
    assert!(preview.html.contains("Hi Ada,") && preview.html.contains("Acme spring"));
    assert!(!preview.html.contains("Globex"), "{}", preview.html);
    assert!(preview.text.contains("Acme spring"), "{}", preview.text);
    assert!(preview
        .html
        .contains("https://herald.example.com/unsubscribe/"));

    // Outside the audience: the whole alert.
    let preview = composer.preview(&alert_id, "p2").await.unwrap();
    assert_eq!(preview.subject, "Your brands are on sale: Acme & Globex");

    let err = composer.preview("no-such-alert", "p1").await.unwrap_err();
    assert!(matches!(err, PreviewError::AlertNotFound(_)), "{err}");
    let err = composer.preview(&alert_id, "nobody").await.unwrap_err();
    assert_eq!(err.to_string(), "member nobody not found");
}

async fn a_test_send_reports_each_address(env: TestEnv) {
    let alert_id = alert(&env).await;
    let sink = Arc::new(Sink::default());
    let composer = env.composer(
        Arc::new(CaptureTransport::new(sink.clone())),
        &mailer_settings(),
    );
    let outcomes = composer
        .test_send(
            &alert_id,
            &["qa@example.com".into(), "not an address".into()],
        )
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].address, "qa@example.com");
    assert!(
        outcomes[0].result.as_ref().is_ok_and(Option::is_some),
        "{outcomes:?}"
    );
    let err = outcomes[1].result.as_ref().unwrap_err();
    assert!(err.contains("cannot be used"), "{err}");

    let emails = sink.emails();
    assert_eq!(emails.len(), 1);
    let email = &emails[0];
    assert_eq!(email.to.email.to_string(), "qa@example.com");
    assert!(
        email.subject.starts_with(TEST_SUBJECT_PREFIX),
        "{}",
        email.subject
    );
    assert!(email.html.contains("Acme spring") && email.html.contains("Globex weekend"));
    assert!(
        !email.custom_args.contains_key("alert_id"),
        "stays out of the alert's stats"
    );
    assert_eq!(env.stats(&alert_id).await.sent, 0);

    for addresses in [
        Vec::new(),
        vec!["qa@example.com".to_owned(); MAX_TEST_ADDRESSES + 1],
    ] {
        let err = composer.test_send(&alert_id, &addresses).await.unwrap_err();
        assert!(
            matches!(err, PreviewError::AddressCount(n) if n == addresses.len()),
            "{err}"
        );
    }
    let err = composer
        .test_send("no-such-alert", &["qa@example.com".into()])
        .await
        .unwrap_err();
    assert!(matches!(err, PreviewError::AlertNotFound(_)), "{err}");
}
