// Reading a whole file; errors name the file.
#pragma once

#include <cstdint>
#include <string>

namespace moex {

// The most bytes read_file takes by default: far above any config, tokenizer or chat template,
// and a bound on what a stream that never ends (/dev/zero, a runaway pipe) can make us hold.
constexpr int64_t kMaxTextFileBytes = int64_t{1} << 30;

// The bytes of `path`; a file that cannot be opened, a read error, or more than `max_bytes`
// bytes is an error naming it. Pipes and process substitutions read like regular files.
std::string read_file(const std::string& path, int64_t max_bytes = kMaxTextFileBytes);

}  // namespace moex
