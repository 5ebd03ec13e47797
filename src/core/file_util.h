// Reading a whole file; errors name the file.
#pragma once

#include <string>

namespace moex {

// The bytes of `path`; a file that cannot be opened is an error naming it.
std::string read_file(const std::string& path);

}  // namespace moex
