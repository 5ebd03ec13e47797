// Settings every rank of a job must share (the config and the command-line flags): a rank started
// with other ones would wait forever in a collective the others never reach, or train a different
// model without a word. Checked once at start-up (docs/parallelism.md §Launch).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "dist/communicator.h"

namespace moex::dist {

// Whether a and b are equal, and if not the first place where they differ ("training.steps",
// "layers[2]", "" for the whole value).
struct JsonDifference {
  bool same = true;
  std::string path;
  std::string a_value, b_value;  // the two values there as JSON text, "absent" when missing
};
JsonDifference first_difference(const nlohmann::json& a, const nlohmann::json& b);

// Every rank of `comm` calls it with its own settings. Throws on every rank, with the same
// message, when any rank's differ from rank 0's: "<source>: <path> is X on rank r and Y on rank
// 0; every rank must run the same config and flags".
void check_same_on_all_ranks(Communicator& comm, const nlohmann::json& settings,
                             const std::string& source);

}  // namespace moex::dist
