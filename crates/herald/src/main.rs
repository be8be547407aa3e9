use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use herald::app::{self, Backends};
use herald::cli::{Cli, Command, DemoArgs, DemoCommand};
use herald::config::Config;
use herald::roles::Roles;
use herald::{commands, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(
        cli.log_format.unwrap_or(config.log.format),
        &config.log.level,
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, mut config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            let roles = Roles::from_list(&args.roles);
            let backends = Backends::open(&config)
                .await
                .context("cannot open the backends")?;
            if args.demo {
                commands::demo_seed(
                    &config,
                    &backends.store,
                    &DemoArgs {
                        members: 3000,
                        send_in: std::time::Duration::from_secs(60),
                    },
                    true,
                )
                .await?;
            }
            let listener = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            app::run(
                &config,
                backends,
                &roles,
                listener,
                app::shutdown_on_signals(),
            )
            .await?;
        }
        Command::Migrate => commands::migrate(&config).await?,
        Command::Queues(command) => commands::queues(&command, &config).await?,
        Command::Config(command) => commands::config(&command, &config),
        Command::Keys(command) => commands::keys(&command, &config).await?,
        Command::Shards(command) => herald::shards::run(&command, &config).await?,
        Command::Bench(command) => commands::bench(&command).await?,
        Command::Import(args) => commands::import(&args, &config).await?,
        Command::Users(command) => herald::users::run(&command, &config).await?,
        Command::Jobs(command) => herald::jobs::run(&command, &config).await?,
        Command::Demo(DemoCommand::Seed(args)) => {
            let backends = Backends::open(&config)
                .await
                .context("cannot open the backends")?;
            commands::demo_seed(&config, &backends.store, &args, false).await?;
            backends.close().await;
        }
    }
    Ok(())
}
