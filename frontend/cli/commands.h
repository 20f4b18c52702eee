// Subcommands of the tessel CLI. Each parses its own options (argv excludes the command
// name), prints, and returns the exit status; errors are thrown as tessel::Error.
#pragma once

namespace tessel::cli {

int cmd_train(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_plan(int argc, char** argv);
int cmd_verify(int argc, char** argv);
int cmd_launch(int argc, char** argv);
int cmd_calibrate(int argc, char** argv);

}  // namespace tessel::cli
