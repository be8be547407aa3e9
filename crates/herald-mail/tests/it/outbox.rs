//! The outbox transport: real `.eml` files a mail client can open.

use herald_mail::TransportConfig;

use crate::support::{assert_mime_matches, email};

#[tokio::test]
async fn writes_one_parseable_eml_per_message_and_resends_overwrite() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nested/outbox");
    let config: TransportConfig = toml::from_str(&format!(
        "kind = \"outbox\"\ndir = {:?}",
        dir.display().to_string()
    ))
    .unwrap();
    let transport = config.build().unwrap();
    assert_eq!(transport.kind(), "outbox");

    let first = email("ada@example.net", "alert-1", "m1");
    let second = email("bob@example.net", "alert-1", "m2");
    let results = transport.send_batch(&[first.clone(), second.clone()]).await;
    let paths: Vec<String> = results
        .into_iter()
        .map(|r| r.unwrap().provider_message_id.unwrap())
        .collect();
    assert!(
        paths[0].ends_with("alert-1.m1@herald.example.com.eml"),
        "{}",
        paths[0]
    );

    assert_mime_matches(&std::fs::read(&paths[0]).unwrap(), &first);
    assert_mime_matches(&std::fs::read(&paths[1]).unwrap(), &second);

    // A resend of the same alert to the same member replaces its file.
    transport.send(&first).await.unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "alert-1.m1@herald.example.com.eml",
            "alert-1.m2@herald.example.com.eml"
        ]
    );
}

#[tokio::test]
async fn an_unusable_folder_is_reported_at_build_time() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let config: TransportConfig = toml::from_str(&format!(
        "kind = \"outbox\"\ndir = {:?}",
        file.join("sub").display().to_string()
    ))
    .unwrap();
    let err = config.build().unwrap_err();
    assert!(err.to_string().starts_with("outbox folder"), "{err}");
}
