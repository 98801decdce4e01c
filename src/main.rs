use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use adtrack::app::{self, Application, Role};
use adtrack::cli::{Cli, Command, DlqAction, TenantAction};
use adtrack::config::Settings;
use adtrack::{counters, queue, store, telemetry, tenants};

/// jemalloc keeps a server holding 10,000 connections at about 60 % of the
/// resident memory glibc's allocator needs for the same load (see README,
/// Performance).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("adtrack: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    match run(cli, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "adtrack failed");
            eprintln!("adtrack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve { role: Role::All }) {
        Command::Serve { role } => {
            let app = Application::build(settings, role).await?;
            let token = app.shutdown_token();
            tokio::spawn(async move {
                app::shutdown_signal().await;
                tracing::info!("shutdown signal received; finishing in-flight work");
                token.cancel();
            });
            app.run_until_stopped().await
        }
        Command::Migrate => {
            store::connect(&settings.database_url, 2).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Reconcile => {
            let pool = store::connect(&settings.database_url, 2).await?;
            let mut redis = settings
                .redis_target()?
                .connect(Duration::from_secs(60))
                .await?;
            let keys = settings.keys();
            let replication = settings.replication();
            let report = counters::reconcile_confirmed(
                &pool,
                &mut redis,
                &keys,
                replication,
                chrono::Utc::now(),
            )
            .await
            .context("reconcile failed")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Tenant { action } => {
            let pool = store::connect(&settings.database_url, 2).await?;
            match action {
                TenantAction::Create { id, name } => {
                    let key = tenants::create(&pool, &id, &name).await?;
                    eprintln!("tenant {id}: keep this key, it is not shown again");
                    eprintln!(
                        "its VAST tag, for players' /vast/{{adId}}?tag= (documents only): {}",
                        tenants::vast_tag(&key)
                    );
                    println!("{key}");
                }
                TenantAction::List => {
                    for t in tenants::list(&pool).await? {
                        println!("{}", serde_json::to_string(&t)?);
                    }
                }
                TenantAction::Revoke { id, key } => {
                    let n = tenants::revoke(&pool, &id, key.as_deref()).await?;
                    println!("{{\"revokedKeys\":{n}}}");
                    if let (0, Some(key)) = (n, &key) {
                        anyhow::bail!("no active key of tenant {id:?} starts with {key:?}");
                    }
                    eprintln!(
                        "running servers stop accepting the key(s) within {} s",
                        tenants::REFRESH.as_secs()
                    );
                }
            }
            Ok(())
        }
        Command::Healthcheck { port, timeout } => {
            let port = port.unwrap_or(settings.port);
            adtrack::healthcheck::probe(port, Duration::from_secs(timeout)).await?;
            println!("healthy");
            Ok(())
        }
        Command::Dlq { action } => {
            let mut redis = settings
                .redis_target()?
                .connect(Duration::from_secs(30))
                .await?;
            let queue = queue::Queues::new(&settings.redis_prefix, settings.queue_shards);
            match action {
                DlqAction::List { limit } => {
                    let (total, items) = queue.dlq_list(&mut redis, limit).await?;
                    for item in items {
                        println!("{item}");
                    }
                    eprintln!("{total} dead letter(s) in total");
                }
                DlqAction::Replay => {
                    println!("{{\"moved\":{}}}", queue.dlq_replay(&mut redis).await?)
                }
                DlqAction::Purge => {
                    println!("{{\"purged\":{}}}", queue.dlq_purge(&mut redis).await?)
                }
            }
            Ok(())
        }
    }
}
