//! The `workers-spawner` binary: parses the command line and hands over to
//! the library. Nothing else lives here.

use clap::Parser;
use workers_spawner::cli::{self, Cli, Command, PresetsCommand};
use workers_spawner::settings::Settings;

fn main() {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            std::process::exit(2);
        }
    };
    let code = match cli.command {
        Command::Presets(PresetsCommand::Validate { dir }) => cli::presets_validate(&settings, dir),
        Command::Presets(PresetsCommand::Show { id, override_json }) => {
            cli::presets_show(&settings, &id, override_json.as_deref())
        }
        _ => {
            eprintln!("workers-spawner: not implemented yet");
            2
        }
    };
    std::process::exit(code);
}
