//! The `workers-spawner` binary: parses the command line, loads settings,
//! and hands over to the library. Nothing else lives here.

use clap::Parser;
use workers_spawner::cli::{self, Cli, Command, PresetsCommand, SpawnArgs};
use workers_spawner::settings::Settings;

fn main() {
    let cli = Cli::parse();
    let (settings, origins) = match Settings::load_with_origins(&cli.settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            std::process::exit(2);
        }
    };
    let code = match cli.command {
        Command::Presets(PresetsCommand::Validate { dir, strict }) => {
            cli::presets_validate(&settings, &origins, dir, strict)
        }
        Command::Presets(PresetsCommand::Show { id, override_json }) => {
            cli::presets_show(&settings, &id, override_json.as_deref())
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async {
                match command {
                    Command::Serve => {
                        cli::init_logging();
                        cli::serve(settings).await
                    }
                    Command::Spawn {
                        preset,
                        prompt,
                        session,
                        override_json,
                        request_id,
                        follow,
                    } => {
                        let args = SpawnArgs {
                            preset: &preset,
                            prompt: &prompt,
                            session: session.as_deref(),
                            override_json: override_json.as_deref(),
                            request_id: request_id.as_deref(),
                            follow,
                        };
                        cli::spawn(&settings, args).await
                    }
                    Command::Run {
                        preset,
                        prompt,
                        override_json,
                    } => cli::run(&settings, &preset, &prompt, override_json.as_deref()).await,
                    Command::Ps => cli::ps(&settings).await,
                    Command::Cancel { request_id } => cli::cancel(&settings, &request_id).await,
                    Command::Artifacts(c) => cli::artifacts(&settings, c).await,
                    Command::Presets(_) => unreachable!("handled above"),
                }
            })
        }
    };
    std::process::exit(code);
}
