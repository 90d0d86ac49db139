//! `geobuk store` with no flags behaves like etcd with its defaults: it serves
//! 127.0.0.1:2379 and keeps its data under ./geobuk-data.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_flags_serves_2379_with_data_in_geobuk_data() -> Result<()> {
    if common::is_etcd() {
        return Ok(());
    }
    if std::net::TcpListener::bind("127.0.0.1:2379").is_err() {
        bail!("port 2379 is in use; stop whatever listens there to run this test");
    }
    let cwd = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_geobuk"))
        .arg("store")
        .current_dir(cwd.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        if let Ok(mut client) = common::connect("127.0.0.1:2379").await
            && client.status().await.is_ok()
        {
            break client.put("k", "v", None).await.map(|_| ());
        }
        if Instant::now() > deadline {
            break Err(etcd_client::Error::InvalidArgs("server did not come up on 2379".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait()?;
    result?;
    assert!(status.success(), "SIGTERM ends the store cleanly: {status}");
    assert!(cwd.path().join("geobuk-data").is_dir(), "data lives in ./geobuk-data");
    Ok(())
}
