#include "dist/rank_agreement.h"

#include <algorithm>
#include <set>
#include <vector>

#include "core/error.h"

namespace moex::dist {
namespace {

std::string joined(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

// a or b null: absent on that side.
void find_difference(const nlohmann::json* a, const nlohmann::json* b, const std::string& path,
                     JsonDifference* out) {
  if (a && b && a->is_object() && b->is_object()) {
    std::set<std::string> keys;
    for (auto it = a->begin(); it != a->end(); ++it) keys.insert(it.key());
    for (auto it = b->begin(); it != b->end(); ++it) keys.insert(it.key());
    for (const std::string& k : keys) {
      find_difference(a->contains(k) ? &(*a)[k] : nullptr, b->contains(k) ? &(*b)[k] : nullptr,
                      joined(path, k), out);
      if (!out->same) return;
    }
    return;
  }
  if (a && b && a->is_array() && b->is_array() && a->size() == b->size()) {
    for (size_t i = 0; i < a->size() && out->same; ++i)
      find_difference(&(*a)[i], &(*b)[i], path + "[" + std::to_string(i) + "]", out);
    return;
  }
  if (!a || !b || *a != *b) {
    out->same = false;
    out->path = path;
    auto text = [](const nlohmann::json* v) {
      return v ? v->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) : "absent";
    };
    out->a_value = text(a);
    out->b_value = text(b);
  }
}

// Rank `root`'s string on every rank, through the int64 collectives (one element a byte).
std::string broadcast_string(Communicator& comm, const std::string& s, int root) {
  int64_t n = static_cast<int64_t>(s.size());
  comm.broadcast(&n, 1, root);
  std::vector<int64_t> data =
      comm.rank() == root ? std::vector<int64_t>(s.begin(), s.end()) : std::vector<int64_t>(n);
  comm.broadcast(data.data(), n, root);
  return std::string(data.begin(), data.end());
}

}  // namespace

JsonDifference first_difference(const nlohmann::json& a, const nlohmann::json& b) {
  JsonDifference d;
  find_difference(&a, &b, "", &d);
  return d;
}

void check_same_on_all_ranks(Communicator& comm, const nlohmann::json& settings,
                             const std::string& source) {
  if (comm.size() <= 1) return;
  const std::string mine = settings.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const std::string root = broadcast_string(comm, mine, 0);
  std::string message;
  if (root != mine) {
    const nlohmann::json root_settings = nlohmann::json::parse(root);
    const JsonDifference d = first_difference(settings, root_settings);
    const std::string path = d.path.empty() ? "the settings" : d.path;
    message = source + ": " + path + " is " + d.a_value + " on rank " +
              std::to_string(comm.rank()) + " and " + d.b_value +
              " on rank 0; every rank must run the same config and flags";
  }
  // The lowest rank that differs tells every rank what differs.
  const int first =
      comm.size() - comm.all_reduce_max(message.empty() ? 0 : comm.size() - comm.rank());
  if (first == comm.size()) return;
  MOEX_THROW(broadcast_string(comm, message, first));
}

}  // namespace moex::dist
