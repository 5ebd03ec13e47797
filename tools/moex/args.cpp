#include "args.h"

#include <cerrno>
#include <cstdlib>

#include "core/error.h"

namespace moex::cli {

Args::Args(const std::vector<std::string>& argv, const std::set<std::string>& value_flags,
           const std::set<std::string>& bool_flags) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) != 0) {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (bool_flags.count(name)) {
      MOEX_CHECK(!inline_value, "flag --", name, " takes no value");
      values_[name] = "1";
    } else if (value_flags.count(name)) {
      if (!inline_value) {
        MOEX_CHECK(i + 1 < argv.size(), "flag --", name, " needs a value");
        value = argv[++i];
      }
      values_[name] = value;
    } else {
      MOEX_THROW("unknown flag --", name);
    }
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

std::string Args::require(const std::string& name) const {
  auto it = values_.find(name);
  MOEX_CHECK(it != values_.end(), "missing required flag --", name);
  return it->second;
}

int64_t Args::get_int(const std::string& name, int64_t fallback) const {
  if (!has(name)) return fallback;
  const std::string v = get(name);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  MOEX_CHECK(end && *end == '\0' && !v.empty(), "flag --", name, " expects an integer, got '", v,
             "'");
  MOEX_CHECK(errno != ERANGE, "flag --", name, ": ", v, " is out of the 64-bit integer range");
  return x;
}

std::vector<int64_t> Args::get_int_list(const std::string& name) const {
  const std::string v = require(name);
  std::vector<int64_t> out;
  size_t start = 0;
  while (true) {
    const size_t comma = v.find(',', start);
    const std::string item = v.substr(start, comma == std::string::npos ? comma : comma - start);
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(item.c_str(), &end, 10);
    MOEX_CHECK(!item.empty() && end && *end == '\0', "flag --", name,
               " expects integers separated by commas, got '", v, "'");
    MOEX_CHECK(errno != ERANGE, "flag --", name, ": ", item, " is out of the 64-bit integer range");
    out.push_back(x);
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

double Args::get_double(const std::string& name, double fallback) const {
  if (!has(name)) return fallback;
  const std::string v = get(name);
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  MOEX_CHECK(end && *end == '\0' && !v.empty(), "flag --", name, " expects a number, got '", v,
             "'");
  return x;
}

}  // namespace moex::cli
