// Subcommand registry: each tools/moex/cmd_*.cpp registers one subcommand with a static Command.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace moex::cli {

using CommandFn = std::function<int(const std::vector<std::string>& args)>;

struct Command {
  Command(const char* name, const char* summary, CommandFn run);
};

struct CommandEntry {
  std::string name;
  std::string summary;
  CommandFn run;
};
std::vector<CommandEntry>& commands();

}  // namespace moex::cli
