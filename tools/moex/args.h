// A small flag parser for subcommands: "--name value", "--name=value" and boolean "--name".
// Unknown flags and missing values are errors that name the flag.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace moex::cli {

class Args {
 public:
  // `value_flags` take a value, `bool_flags` do not; anything else starting with "--" is an error.
  Args(const std::vector<std::string>& argv, const std::set<std::string>& value_flags,
       const std::set<std::string>& bool_flags);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::string require(const std::string& name) const;  // error if absent
  int64_t get_int(const std::string& name, int64_t fallback) const;
  double get_double(const std::string& name, double fallback) const;
  // "i,j,...": integers separated by commas; an error naming the flag otherwise.
  std::vector<int64_t> get_int_list(const std::string& name) const;
  bool flag(const std::string& name) const { return has(name); }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

}  // namespace moex::cli
