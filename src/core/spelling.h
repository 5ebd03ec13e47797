// "Did you mean" hints for errors that name an unknown field: the known name a mistyped one is
// closest to, when it is close enough to be the likely intent.
#pragma once

#include <string>
#include <vector>

namespace moex {

// The one name of `known` within a small edit distance of `name` (letters' case ignored; an
// adjacent swap counts as one edit), or "" when none is, or when two are equally close.
std::string closest_name(const std::string& name, const std::vector<std::string>& known);

// " (did you mean 'x'?)" for closest_name's x, or "" when it found none: appended to an error.
std::string did_you_mean(const std::string& name, const std::vector<std::string>& known);

}  // namespace moex
