#include "core/spelling.h"

#include <algorithm>
#include <cctype>

namespace moex {
namespace {

std::string lowercase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
// adjacent letters, each one edit. Names are short, so the full table is cheap.
size_t edit_distance(const std::string& a, const std::string& b) {
  // d[i][j]: the distance between a's first i letters and b's first j. [|a| + 1, |b| + 1]
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitute = d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, substitute});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

}  // namespace

std::string closest_name(const std::string& name, const std::vector<std::string>& known) {
  const std::string wanted = lowercase(name);
  // One edit in short names, two from eight letters: "lr" is not a typo of "tp".
  const size_t allowed = wanted.size() >= 8 ? 2 : 1;
  std::string best;
  size_t best_distance = allowed + 1;
  bool tie = false;
  for (const std::string& candidate : known) {
    const size_t distance = edit_distance(wanted, lowercase(candidate));
    if (distance == 0 && candidate == name) continue;  // the name itself is no hint
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
      tie = false;
    } else if (distance == best_distance && candidate != best) {
      tie = true;
    }
  }
  return best_distance <= allowed && !tie ? best : std::string();
}

std::string did_you_mean(const std::string& name, const std::vector<std::string>& known) {
  const std::string hint = closest_name(name, known);
  return hint.empty() ? std::string() : " (did you mean '" + hint + "'?)";
}

}  // namespace moex
