//! Drives Debian's etcdctl 3.4 against the server, as operators would.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::{TestServer, etcdctl_path, within_for};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// etcdctl bound to one server.
struct Ctl {
    endpoint: String,
}

impl Ctl {
    fn new(server: &TestServer) -> Result<Self> {
        etcdctl_path()?;
        Ok(Ctl { endpoint: server.endpoint() })
    }

    fn command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(etcdctl_path()?);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = self.command(args)?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().context("spawn etcdctl")?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().context("etcdctl stdin")?;
            pipe.write_all(input.as_bytes()).await?;
        }
        within_for(Duration::from_secs(30), "etcdctl", child.wait_with_output()).await?.context("etcdctl")
    }

    /// Runs etcdctl, requires exit 0, returns stdout.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, None).await?;
        ensure!(
            out.status.success(),
            "etcdctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// The text after `"field":` in compact JSON, up to the next ',' or '}' (quotes removed).
fn json_field<'a>(json: &'a str, field: &str) -> Option<&'a str> {
    let pattern = format!("\"{field}\":");
    let start = json.find(&pattern)? + pattern.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn json_u64(json: &str, field: &str) -> Result<u64> {
    json_field(json, field)
        .with_context(|| format!("no {field} in {json}"))?
        .parse()
        .with_context(|| format!("{field} is not a number in {json}"))
}

/// Standard base64 (etcdctl's JSON encoding of keys and values).
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).context("bad base64")? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn put_and_get_with_options() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    assert_eq!(ctl.ok(&["put", "fo2", "x"]).await?, "OK\n"); // 2
    ctl.ok(&["put", "foo", "bar"]).await?; // 3
    ctl.ok(&["put", "foo", "baz"]).await?; // 4
    assert_eq!(ctl.ok(&["get", "foo"]).await?, "foo\nbaz\n");
    assert_eq!(ctl.ok(&["get", "fo", "--prefix"]).await?, "fo2\nx\nfoo\nbaz\n");
    assert_eq!(ctl.ok(&["get", "fo", "--prefix", "--print-value-only"]).await?, "x\nbaz\n");
    assert_eq!(ctl.ok(&["get", "foo", "--rev=3"]).await?, "foo\nbar\n");
    assert_eq!(ctl.ok(&["get", "fo", "--prefix", "--limit=1"]).await?, "fo2\nx\n");
    let sorted = ctl.ok(&["get", "fo", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]).await?;
    assert_eq!(sorted, "foo\nbaz\nfo2\nx\n");
    assert_eq!(ctl.ok(&["get", "foo", "--consistency=s"]).await?, "foo\nbaz\n");
    assert_eq!(ctl.ok(&["get", "missing"]).await?, "");
    let from = ctl.ok(&["get", "foo", "--from-key", "--keys-only"]).await?;
    assert_eq!(from.split_whitespace().collect::<Vec<_>>(), ["foo"]);
    Ok(())
}

#[tokio::test]
async fn get_json_and_fields_output() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    ctl.ok(&["put", "foo", "bar"]).await?; // 2
    ctl.ok(&["put", "foo", "baz"]).await?; // 3
    let json = ctl.ok(&["get", "foo", "-w", "json"]).await?;
    assert_eq!(json_u64(&json, "revision")?, 3);
    assert_ne!(json_u64(&json, "cluster_id")?, 0);
    assert_ne!(json_u64(&json, "member_id")?, 0);
    assert_eq!(json_u64(&json, "create_revision")?, 2);
    assert_eq!(json_u64(&json, "mod_revision")?, 3);
    assert_eq!(json_u64(&json, "version")?, 2);
    assert_eq!(json_u64(&json, "count")?, 1);
    assert_eq!(base64_decode(json_field(&json, "key").context("key")?)?, b"foo");
    assert_eq!(base64_decode(json_field(&json, "value").context("value")?)?, b"baz");

    let fields = ctl.ok(&["get", "foo", "-w", "fields"]).await?;
    for line in ["\"Key\" : \"foo\"", "\"Value\" : \"baz\"", "\"Version\" : 2", "\"ModRevision\" : 3"] {
        assert!(fields.lines().any(|l| l == line), "missing {line} in {fields}");
    }
    Ok(())
}

#[tokio::test]
async fn del_with_prev_kv_and_prefix() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    for (k, v) in [("foo", "bar"), ("p/a", "1"), ("p/b", "2")] {
        ctl.ok(&["put", k, v]).await?;
    }
    assert_eq!(ctl.ok(&["del", "foo", "--prev-kv"]).await?, "1\nfoo\nbar\n");
    assert_eq!(ctl.ok(&["del", "foo"]).await?, "0\n");
    assert_eq!(ctl.ok(&["del", "p/", "--prefix"]).await?, "2\n");
    assert_eq!(ctl.ok(&["get", "", "--prefix"]).await?, "");
    Ok(())
}

#[tokio::test]
async fn txn_from_stdin() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    ctl.ok(&["put", "k", "v1"]).await?; // 2
    let success = "mod(\"k\") = \"2\"\n\nput k v2\nget k\n\nput k else\n\n";
    let out = ctl.run(&["txn"], Some(success)).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout)?, "SUCCESS\n\nOK\n\nk\nv2\n");

    let failure = "value(\"k\") = \"nope\"\n\nput k v3\n\nget k\n\n";
    let out = ctl.run(&["txn"], Some(failure)).await?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout)?, "FAILURE\n\nk\nv2\n");
    assert_eq!(ctl.ok(&["get", "k", "--print-value-only"]).await?, "v2\n");
    Ok(())
}

/// Reads stdout lines of a running etcdctl until `want` lines arrived.
async fn read_lines<R: AsyncBufReadExt + Unpin>(lines: &mut tokio::io::Lines<R>, want: usize) -> Result<Vec<String>> {
    let mut got = Vec::new();
    while got.len() < want {
        match within_for(Duration::from_secs(10), "etcdctl watch output", lines.next_line()).await?? {
            Some(line) => got.push(line),
            None => bail!("etcdctl watch exited after {got:?}"),
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_revision() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    ctl.ok(&["put", "w/a", "1"]).await?; // 2
    ctl.ok(&["put", "other", "x"]).await?; // 3
    ctl.ok(&["put", "w/b", "2"]).await?; // 4
    let mut cmd = ctl.command(&["watch", "w/", "--prefix", "--prev-kv", "--rev=2"])?;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    assert_eq!(read_lines(&mut lines, 6).await?, ["PUT", "w/a", "1", "PUT", "w/b", "2"]);

    ctl.ok(&["put", "w/a", "3"]).await?;
    ctl.ok(&["del", "w/b"]).await?;
    let live = read_lines(&mut lines, 10).await?;
    // With --prev-kv etcdctl prints the previous pair first; a DELETE's kv has an empty value.
    assert_eq!(live, ["PUT", "w/a", "1", "w/a", "3", "DELETE", "w/b", "2", "w/b", ""]);
    child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn watch_from_a_compacted_revision_exits_with_code_5() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    for v in ["1", "2", "3"] {
        ctl.ok(&["put", "k", v]).await?; // 2, 3, 4
    }
    assert_eq!(ctl.ok(&["compaction", "3"]).await?, "compacted revision 3\n");
    let out = ctl.run(&["watch", "k", "--rev=2"], None).await?;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("watch was canceled (etcdserver: mvcc: required revision has been compacted)"), "{stderr}");
    let below = ctl.run(&["get", "k", "--rev=2"], None).await?;
    assert_eq!(below.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&below.stderr);
    assert!(stderr.contains("Error: etcdserver: mvcc: required revision has been compacted"), "{stderr}");
    assert_eq!(ctl.ok(&["get", "k", "--rev=3", "--print-value-only"]).await?, "2\n");
    Ok(())
}

#[tokio::test]
async fn lease_grant_keep_alive_timetolive_revoke() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    let granted = ctl.ok(&["lease", "grant", "60"]).await?;
    let id = granted.split_whitespace().nth(1).context("lease id")?.to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    i64::from_str_radix(&id, 16).context("lease id is hex")?;

    ctl.ok(&["put", "lk", "lv", &format!("--lease={id}")]).await?;
    let kept = ctl.ok(&["lease", "keep-alive", "--once", &id]).await?;
    assert_eq!(kept, format!("lease {id} keepalived with TTL(60)\n"));
    let ttl = ctl.ok(&["lease", "timetolive", &id, "--keys"]).await?;
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")), "{ttl}");
    assert!(ttl.ends_with("s), attached keys([lk])\n"), "{ttl}");
    let list = ctl.ok(&["lease", "list"]).await?;
    assert_eq!(list, format!("found 1 leases\n{id}\n"));

    assert_eq!(ctl.ok(&["lease", "revoke", &id]).await?, format!("lease {id} revoked\n"));
    assert_eq!(ctl.ok(&["lease", "timetolive", &id]).await?, format!("lease {id} already expired\n"));
    assert_eq!(ctl.ok(&["get", "lk"]).await?, "");
    Ok(())
}

#[tokio::test]
async fn endpoint_status_health_hashkv_and_member_list() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    ctl.ok(&["put", "k", "v"]).await?;
    let json = ctl.ok(&["endpoint", "status", "-w", "json"]).await?;
    assert_eq!(json_field(&json, "Endpoint"), Some(server.endpoint().as_str()));
    let member = json_u64(&json, "member_id")?;
    assert_ne!(member, 0);
    assert_eq!(json_u64(&json, "leader")?, member);
    assert_eq!(json_u64(&json, "revision")?, 2);
    assert!(json_u64(&json, "dbSize")? > 0);
    assert!(json_u64(&json, "raftIndex")? >= json_u64(&json, "raftAppliedIndex")?);
    let version = json_field(&json, "version").context("version")?;
    assert!(version.starts_with("3."), "version {version}");

    let health = ctl.run(&["endpoint", "health"], None).await?;
    assert!(health.status.success());
    let text = String::from_utf8_lossy(&health.stdout) + String::from_utf8_lossy(&health.stderr);
    assert!(text.contains(&format!("{} is healthy: successfully committed proposal", server.endpoint())), "{text}");

    let hash = ctl.ok(&["endpoint", "hashkv", "-w", "fields"]).await?;
    assert!(hash.lines().any(|l| l.starts_with("\"Hash\" : ")), "{hash}");

    let members = ctl.ok(&["member", "list"]).await?;
    let id = format!("{member:x}");
    assert!(members.starts_with(&format!("{id}, started, default, ")), "{members}");
    assert!(members.contains(&server.client_url()), "{members}");
    assert_eq!(members.lines().count(), 1);
    Ok(())
}

/// `endpoint status --cluster` and `endpoint health --cluster` dial the client URLs of
/// MemberList, and etcdctl 3.4 then sends `http://host:port` as the HTTP/2 `:authority`, which
/// h2 refused (PROTOCOL_ERROR) until geobuk's copy of it ignored a malformed one, as etcd does.
#[tokio::test]
async fn endpoint_commands_with_cluster_reach_every_member() -> Result<()> {
    let server = TestServer::start().await?;
    let ctl = Ctl::new(&server)?;
    let status = ctl.ok(&["endpoint", "status", "--cluster", "-w", "json"]).await?;
    assert_eq!(json_field(&status, "Endpoint"), Some(server.client_url().as_str()), "{status}");
    assert!(json_u64(&status, "leader")? != 0, "{status}");

    let health = ctl.run(&["endpoint", "health", "--cluster"], None).await?;
    let text = String::from_utf8_lossy(&health.stdout) + String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success(), "{text}");
    assert!(text.contains(&format!("{} is healthy", server.client_url())), "{text}");
    Ok(())
}
