//! The container health probe: `GET /health` over plain HTTP/1.0 on the
//! loopback interface, so runtime images need no curl.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Succeeds when `127.0.0.1:<port>/health` answers 200 within `timeout`.
pub async fn probe(port: u16, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, ask(port))
        .await
        .with_context(|| format!("no answer from port {port} within {timeout:?}"))?
}

async fn ask(port: u16) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .context("sending the health request")?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    // The status line is all that matters; stop reading once it is in.
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.context("reading the answer")?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let status = line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("/health answered {:?}", line.trim());
    }
    Ok(())
}
