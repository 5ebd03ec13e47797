#include "model/layer_names.h"

#include <cstring>

namespace moex::model {
namespace {

constexpr const char* kLayerPrefix = "model.layers.";

}  // namespace

int64_t layer_of_param(const std::string& name) {
  if (name.rfind(kLayerPrefix, 0) != 0) return -1;
  const size_t start = std::strlen(kLayerPrefix), dot = name.find('.', start);
  return std::stoll(name.substr(start, dot - start));
}

std::string source_layer_param(const std::string& name, const std::vector<int64_t>& layers) {
  const int64_t layer = layer_of_param(name);
  if (layer < 0) return name;
  const size_t dot = name.find('.', std::strlen(kLayerPrefix));
  return kLayerPrefix + std::to_string(layers[static_cast<size_t>(layer)]) + name.substr(dot);
}

}  // namespace moex::model
