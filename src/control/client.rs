//! The CLI side of the control API: `lattice get hosts` and `lattice get inventory`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use super::{CtlResponse, HostInventory, InventoryRequest};
use crate::cli::{ClientArgs, GetCommand, OutputFormat};
use crate::lattice::membership::HostInfo;
use crate::nats::subjects;
use crate::node::NATS_URL_FILE;

/// Runs `lattice get …`: prints the answer on stdout.
///
/// # Errors
/// The lattice cannot be reached or answers with an error (the message says which and why).
pub async fn get(command: GetCommand) -> anyhow::Result<ExitCode> {
    match command {
        GetCommand::Hosts { client } => {
            let hosts: Vec<HostInfo> =
                request(&client, subjects::CTL_GET_HOSTS, Vec::new()).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&hosts)?),
                OutputFormat::Table => print!("{}", hosts_table(&hosts)),
            }
        }
        GetCommand::Inventory { host, client } => {
            let payload = serde_json::to_vec(&InventoryRequest { host })?;
            let inventory: Vec<HostInventory> =
                request(&client, subjects::CTL_GET_INVENTORY, payload).await?;
            match client.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&inventory)?),
                OutputFormat::Table => print!("{}", inventory_table(&inventory)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends one control request and unwraps its [`CtlResponse`].
async fn request<T: DeserializeOwned>(
    args: &ClientArgs,
    endpoint: &str,
    payload: Vec<u8>,
) -> anyhow::Result<T> {
    crate::config::check_lattice_name(&args.lattice)?;
    let url = nats_url(args)?;
    let mut options = async_nats::ConnectOptions::new()
        .name("lattice cli")
        .connection_timeout(args.timeout)
        .request_timeout(Some(args.timeout));
    if let Some(creds) = &args.creds {
        crate::config::check_creds_file(creds, "--creds")?;
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("--creds {}", creds.display()))?;
    }
    let client = tokio::time::timeout(args.timeout + Duration::from_secs(1), options.connect(&url))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot reach NATS at {url}: no connection within {}",
                humantime::format_duration(args.timeout)
            )
        })?
        .with_context(|| format!("cannot reach NATS at {url}"))?;
    let subject = format!("{}.{endpoint}", subjects::control(&args.lattice));
    let reply = client
        .request(subject.clone(), payload.into())
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => anyhow::anyhow!(
                "no node of lattice {:?} answers through {url} (no responders on {subject})",
                args.lattice
            ),
            async_nats::RequestErrorKind::TimedOut => anyhow::anyhow!(
                "no node of lattice {:?} answered through {url} within {}",
                args.lattice,
                humantime::format_duration(args.timeout)
            ),
            _ => anyhow::anyhow!("request on {subject} through {url}: {e}"),
        })?;
    let reply: CtlResponse<T> = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("malformed reply on {subject}"))?;
    match (reply.success, reply.response) {
        (true, Some(response)) => Ok(response),
        (true, None) => bail!("the reply on {subject} has no response"),
        (false, _) => bail!("{}", reply.message),
    }
}

/// `--nats-url`, else the URL the local node recorded in its data dir.
fn nats_url(args: &ClientArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.nats_url {
        return Ok(url.clone());
    }
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => crate::config::default_data_dir()?,
    };
    let file = dir.join(NATS_URL_FILE);
    match std::fs::read_to_string(&file) {
        Ok(url) => Ok(url.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no node runs with data dir {} (no {}): start `lattice up`, or pass --nats-url or --data-dir",
            dir.display(),
            file.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

fn hosts_table(hosts: &[HostInfo]) -> String {
    let rows: Vec<[String; 5]> = hosts
        .iter()
        .map(|h| {
            let uplink = match &h.uplink.error {
                Some(error) => format!("{} ({error})", h.uplink.state.as_str()),
                None => h.uplink.state.as_str().to_owned(),
            };
            let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                h.id.clone(),
                h.name.clone(),
                humantime::format_duration(Duration::from_secs(h.uptime_ms / 1000)).to_string(),
                uplink,
                labels.join(","),
            ]
        })
        .collect();
    table(["ID", "NAME", "UPTIME", "UPLINK", "LABELS"], &rows)
}

fn inventory_table(inventory: &[HostInventory]) -> String {
    let rows: Vec<[String; 4]> = inventory
        .iter()
        .flat_map(|h| {
            h.components.iter().map(move |c| {
                [
                    h.name.clone(),
                    c.app.clone(),
                    c.component.clone(),
                    c.replicas.to_string(),
                ]
            })
        })
        .collect();
    table(["HOST", "APP", "COMPONENT", "REPLICAS"], &rows)
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            ["A", "LONGER"],
            &[["x".into(), "1".into()], ["yyyy".into(), "2".into()]],
        );
        assert_eq!(text, "A     LONGER\nx     1\nyyyy  2\n");
    }
}
