#include "io/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/json_reader.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"

namespace moex::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void write_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Reads a JSON unsigned integer field, naming it on failure.
uint64_t as_u64(const json& v, const std::string& where) {
  MOEX_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), where,
             " must be a non-negative integer, got ", v.dump());
  return v.get<uint64_t>();
}

float element_to_f32(const uint8_t* p, DType dtype) {
  switch (dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return bf16_to_f32(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return f16_to_f32(h);
    }
    case DType::kF64: {
      double d;
      std::memcpy(&d, p, 8);
      // Out of float's range the cast is undefined; such values become +-inf explicitly.
      if (std::fabs(d) > static_cast<double>(std::numeric_limits<float>::max()))
        return d > 0 ? std::numeric_limits<float>::infinity()
                     : -std::numeric_limits<float>::infinity();
      return static_cast<float>(d);
    }
    case DType::kI32: {
      int32_t i;
      std::memcpy(&i, p, 4);
      return static_cast<float>(i);
    }
    case DType::kI64: {
      int64_t i;
      std::memcpy(&i, p, 8);
      return static_cast<float>(i);
    }
    case DType::kU8:
      return static_cast<float>(*p);
  }
  MOEX_THROW("unknown dtype ", static_cast<int>(dtype));
}

struct Layout {
  std::string header;  // padded JSON
  std::vector<std::pair<std::string, Tensor>> order;
  size_t data_bytes = 0;
};

// The dtype a tensor is written in: its own, or F32 for BF16 under widen_bf16.
DType stored_dtype(const Tensor& t, bool widen_bf16) {
  return widen_bf16 && t.dtype() == DType::kBF16 ? DType::kF32 : t.dtype();
}

Layout plan_layout(const std::map<std::string, Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata,
                   const std::set<std::string>& bool_tensors, bool widen_bf16) {
  Layout layout;
  for (const auto& [name, t] : tensors) {
    MOEX_CHECK(name != "__metadata__", "a tensor cannot be named __metadata__");
    MOEX_CHECK(t.defined(), "tensor '", name, "' is undefined");
    layout.order.emplace_back(name, t);
  }
  auto st_name = [&](const std::string& name, DType dtype) -> std::string {
    if (!bool_tensors.count(name)) return dtype_name(dtype);
    MOEX_CHECK(dtype == DType::kU8, "tensor '", name, "' saved as BOOL must be U8, is ",
               dtype_name(dtype));
    return "BOOL";
  };
  // The reference writer's order: dtype (its enum order, descending), then name. Larger
  // elements come first, so every tensor is aligned to its element size with no gaps.
  auto rank = [](const std::string& dtype) {
    static const std::map<std::string, int> kRank = {{"BOOL", 0}, {"U8", 1},  {"F16", 7},
                                                     {"BF16", 8}, {"I32", 9}, {"F32", 11},
                                                     {"F64", 12}, {"I64", 13}};
    return kRank.at(dtype);
  };
  std::sort(layout.order.begin(), layout.order.end(), [&](const auto& a, const auto& b) {
    const int ra = rank(st_name(a.first, stored_dtype(a.second, widen_bf16)));
    const int rb = rank(st_name(b.first, stored_dtype(b.second, widen_bf16)));
    return ra != rb ? ra > rb : a.first < b.first;
  });
  // Keys in layout order, metadata first, as the reference writes them.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& [name, t] : layout.order) {
    const DType stored = stored_dtype(t, widen_bf16);
    const std::string dtype = st_name(name, stored);
    nlohmann::ordered_json shape = nlohmann::ordered_json::array();
    for (int i = 0; i < t.ndim(); ++i) shape.push_back(t.dim(i));
    const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(stored);
    header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  layout.data_bytes = offset;
  layout.header = header.dump();
  const size_t padded = (8 + layout.header.size() + 7) / 8 * 8 - 8;
  layout.header.append(padded - layout.header.size(), ' ');
  return layout;
}

}  // namespace

bool safetensors_dtype(const std::string& name, DType* dtype) {
  static const std::map<std::string, DType> kDTypes = {
      {"F32", DType::kF32}, {"BF16", DType::kBF16}, {"F16", DType::kF16}, {"I32", DType::kI32},
      {"I64", DType::kI64}, {"U8", DType::kU8},     {"F64", DType::kF64}, {"BOOL", DType::kU8}};
  auto it = kDTypes.find(name);
  if (it == kDTypes.end()) return false;
  *dtype = it->second;
  return true;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  file.map_ = MappedFile::open(path);
  const size_t size = file.map_->size();
  const uint8_t* base = file.map_->data();
  MOEX_CHECK(size >= 8, path, ": file is ", size, " bytes, too short for the 8-byte header length");
  const uint64_t header_len = read_le64(base);
  MOEX_CHECK(header_len <= size - 8, path, ": header length ", header_len,
             " is larger than the file (", size, " bytes)");
  MOEX_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len,
             " exceeds the 100 MB limit");
  file.data_start_ = 8 + static_cast<size_t>(header_len);
  const uint64_t data_size = size - file.data_start_;

  const json header = parse_json(reinterpret_cast<const char*>(base) + 8,
                                 reinterpret_cast<const char*>(base) + 8 + header_len, path,
                                 "header is not valid JSON");
  MOEX_CHECK(header.is_object(), path, ": header must be a JSON object, got ", header.type_name());

  std::vector<const SafetensorsEntry*> by_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      MOEX_CHECK(v.is_object(), path, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        MOEX_CHECK(m.value().is_string(), path, ": __metadata__.", m.key(),
                   " must be a string, got ", m.value().dump());
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    MOEX_CHECK(v.is_object(), where, " must be an object");
    SafetensorsEntry e;
    e.name = name;
    MOEX_CHECK(v.contains("dtype") && v["dtype"].is_string(), where,
               ": missing string field dtype");
    e.dtype_name = v["dtype"].get<std::string>();
    MOEX_CHECK(safetensors_dtype(e.dtype_name, &e.dtype), where, ": unknown dtype '", e.dtype_name,
               "' (moex reads F32, BF16, F16, F64, I32, I64, U8, BOOL)");
    MOEX_CHECK(v.contains("shape") && v["shape"].is_array(), where, ": missing array field shape");
    MOEX_CHECK(v["shape"].size() <= static_cast<size_t>(Shape::kMaxDims), where, ": shape ",
               v["shape"].dump(), " has more than ", Shape::kMaxDims, " dims");
    uint64_t numel = 1;
    for (const json& d : v["shape"]) {
      const uint64_t dim = as_u64(d, where + ": shape entry");
      MOEX_CHECK(dim < (1ull << 40), where, ": shape ", v["shape"].dump(), " is too large");
      e.shape.push_back(static_cast<int64_t>(dim));
      numel *= dim;
      MOEX_CHECK(numel < (1ull << 50), where, ": shape ", v["shape"].dump(), " is too large");
    }
    MOEX_CHECK(
        v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2,
        where, ": data_offsets must be [begin, end]");
    e.begin = as_u64(v["data_offsets"][0], where + ": data_offsets[0]");
    e.end = as_u64(v["data_offsets"][1], where + ": data_offsets[1]");
    MOEX_CHECK(e.begin <= e.end, where, ": data_offsets [", e.begin, ", ", e.end,
               "] end before begin");
    MOEX_CHECK(e.end <= data_size, where, ": data_offsets [", e.begin, ", ", e.end,
               "] past the end of the data section (", data_size, " bytes)");
    const uint64_t need = numel * dtype_size(e.dtype);
    MOEX_CHECK(e.end - e.begin == need, where, ": data_offsets [", e.begin, ", ", e.end, "] span ",
               e.end - e.begin, " bytes but shape ", e.shape.str(), " of ", e.dtype_name, " needs ",
               need);
    auto [pos, inserted] = file.entries_.emplace(name, std::move(e));
    MOEX_CHECK(inserted, where, ": appears twice");
    by_offset.push_back(&pos->second);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry* e : by_offset) {
    if (e->begin == e->end) continue;  // empty tensors occupy nothing
    MOEX_CHECK(prev == nullptr || prev->end <= e->begin, path, ": tensor '", e->name,
               "': data_offsets [", e->begin, ", ", e->end, "] overlap tensor '",
               prev ? prev->name : "", "' [", prev ? prev->begin : 0, ", ", prev ? prev->end : 0,
               "]");
    prev = e;
  }
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  MOEX_CHECK(it != entries_.end(), path_, ": no tensor named '", name, "'");
  return it->second;
}

const uint8_t* SafetensorsFile::bytes(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  return map_->data() + data_start_ + e.begin;
}

Tensor SafetensorsFile::view(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const uint8_t* p = bytes(name);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) != 0) return copy(name);
  // The mapping is read-only (MAP_PRIVATE, PROT_READ): writing through a view faults.
  return Tensor::from_external(const_cast<uint8_t*>(p), e.shape, e.dtype, Device::cpu(),
                               std::shared_ptr<const void>(map_, map_.get()));
}

Tensor SafetensorsFile::copy(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  Tensor t = Tensor::empty(e.shape, e.dtype);
  if (t.nbytes() > 0) std::memcpy(t.raw_data(), bytes(name), t.nbytes());
  return t;
}

Tensor SafetensorsFile::to_f32(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  Tensor t = Tensor::empty(e.shape, DType::kF32);
  float* out = t.data<float>();
  const uint8_t* p = bytes(name);
  const size_t esize = dtype_size(e.dtype);
  const int64_t n = e.shape.numel();
  if (e.dtype == DType::kF32) {
    if (n > 0) std::memcpy(out, p, static_cast<size_t>(n) * 4);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = element_to_f32(p + i * esize, e.dtype);
  }
  return t;
}

Tensor SafetensorsFile::weight_f32(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const bool floating = e.dtype == DType::kF32 || e.dtype == DType::kBF16 ||
                        e.dtype == DType::kF16 || e.dtype == DType::kF64;
  MOEX_CHECK(floating, path_, ": tensor '", name, "' has dtype ", e.dtype_name,
             "; a weight must be F32, BF16, F16 or F64");
  return to_f32(name);
}

size_t safetensors_file_size(const std::map<std::string, Tensor>& tensors,
                             const SafetensorsSaveOptions& options) {
  const Layout layout =
      plan_layout(tensors, options.metadata, options.bool_tensors, options.widen_bf16);
  return 8 + layout.header.size() + layout.data_bytes;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const SafetensorsSaveOptions& options) {
  const Layout layout =
      plan_layout(tensors, options.metadata, options.bool_tensors, options.widen_bf16);
  const size_t total = 8 + layout.header.size() + layout.data_bytes;
  AtomicFile out(path);
  uint8_t len[8];
  write_le64(len, layout.header.size());
  out.write(len, 8);
  out.write(layout.header);
  for (const auto& [name, t] : layout.order) {
    if (t.nbytes() > 0) {
      // One tensor at a time on the host: a device tensor's copy, a widened bf16 one's f32 values.
      const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
      if (stored_dtype(t, options.widen_bf16) == t.dtype()) {
        out.write(host.raw_data(), host.nbytes());
      } else {
        std::vector<float> wide(static_cast<size_t>(host.numel()));
        const uint16_t* bits = static_cast<const uint16_t*>(host.raw_data());
        for (size_t i = 0; i < wide.size(); ++i) wide[i] = bf16_to_f32(bits[i]);
        out.write(wide.data(), wide.size() * sizeof(float));
      }
    }
    if (options.progress) options.progress(out.bytes_written(), total);
  }
  MOEX_CHECK(out.bytes_written() == total, path, ": wrote ", out.bytes_written(),
             " bytes, planned ", total);
  out.commit();
}

// ---- sharded ----

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& path) {
  SafetensorsCheckpoint ckpt;
  std::string index_path;
  // The error_code forms throughout: a name the index makes up (too long, say) must be an Error
  // naming the index, not a filesystem_error.
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path index = fs::path(path) / kSafetensorsIndexName;
    const fs::path single = fs::path(path) / kSafetensorsSingleName;
    if (fs::exists(index, ec)) {
      index_path = index.string();
    } else {
      MOEX_CHECK(fs::exists(single, ec), path, ": holds neither ", kSafetensorsSingleName, " nor ",
                 kSafetensorsIndexName);
      ckpt.shards_.push_back(SafetensorsFile::open(single.string()));
    }
  } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    index_path = path;
  } else {
    ckpt.shards_.push_back(SafetensorsFile::open(path));
  }

  if (index_path.empty()) {
    for (const auto& name : ckpt.shards_[0].names()) ckpt.shard_of_[name] = 0;
    ckpt.metadata_ = ckpt.shards_[0].metadata();
    return ckpt;
  }

  json index;
  {
    const auto map = MappedFile::open(index_path);
    const char* text = reinterpret_cast<const char*>(map->data());
    index = parse_json(text, text + map->size(), index_path, "not valid JSON");
  }
  MOEX_CHECK(index.is_object(), index_path, ": must be a JSON object");
  MOEX_CHECK(index.contains("weight_map") && index["weight_map"].is_object(), index_path,
             ": missing object field weight_map");
  if (index.contains("metadata")) {
    MOEX_CHECK(index["metadata"].is_object(), index_path, ": metadata must be an object");
    for (auto it = index["metadata"].begin(); it != index["metadata"].end(); ++it) {
      ckpt.metadata_[it.key()] =
          it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    }
  }
  const fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, size_t> shard_idx;
  const json& weight_map = index["weight_map"];
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    MOEX_CHECK(it.value().is_string(), index_path, ": weight_map.", it.key(),
               " must be a file name, got ", it.value().dump());
    const std::string shard = it.value().get<std::string>();
    MOEX_CHECK(!shard.empty() && shard.find('/') == std::string::npos && shard != "..", index_path,
               ": weight_map.", it.key(), " names '", shard, "', not a file of the directory");
    auto found = shard_idx.find(shard);
    if (found == shard_idx.end()) {
      const fs::path shard_path = dir / shard;
      MOEX_CHECK(fs::exists(shard_path, ec), index_path, ": weight_map.", it.key(), " names shard ",
                 shard, ", which does not exist or cannot be read",
                 ec ? " (" + ec.message() + ")" : std::string());
      found = shard_idx.emplace(shard, ckpt.shards_.size()).first;
      ckpt.shards_.push_back(SafetensorsFile::open(shard_path.string()));
    }
    MOEX_CHECK(ckpt.shards_[found->second].contains(it.key()), index_path, ": weight_map.",
               it.key(), ": tensor is missing from its shard ", shard);
    ckpt.shard_of_[it.key()] = found->second;
  }
  return ckpt;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(shard_of_.size());
  for (const auto& kv : shard_of_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  auto it = shard_of_.find(name);
  MOEX_CHECK(it != shard_of_.end(), "checkpoint has no tensor named '", name, "'");
  return shards_[it->second];
}

std::vector<std::string> save_safetensors_sharded(
    const std::string& dir, const std::map<std::string, Tensor>& tensors, uint64_t max_shard_bytes,
    const std::map<std::string, std::string>& metadata) {
  MOEX_CHECK(max_shard_bytes > 0, "max_shard_bytes must be positive");
  std::error_code ec;
  fs::create_directories(dir, ec);
  MOEX_CHECK(!ec, dir, ": cannot create directory (", ec.message(), ")");

  // Greedy in name order, as transformers' shard_checkpoint does.
  std::vector<std::map<std::string, Tensor>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& [name, t] : tensors) {
    if (shard_bytes > 0 && shard_bytes + t.nbytes() > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back()[name] = t;
    shard_bytes += t.nbytes();
    total_bytes += t.nbytes();
  }

  const std::regex stale(R"(model-\d{5}-of-\d{5}\.safetensors)");
  auto remove_stale = [&](const std::set<std::string>& keep) {
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string fname = e.path().filename().string();
      if (!keep.count(fname) && std::regex_match(fname, stale)) fs::remove(e.path(), ec);
    }
  };

  SafetensorsSaveOptions opts;
  opts.metadata = metadata;
  if (opts.metadata.count("format") == 0)
    opts.metadata["format"] = "pt";  // transformers expects it
  if (shards.size() == 1) {
    save_safetensors((fs::path(dir) / kSafetensorsSingleName).string(), shards[0], opts);
    fs::remove(fs::path(dir) / kSafetensorsIndexName, ec);
    remove_stale({});
    return {kSafetensorsSingleName};
  }
  std::vector<std::string> names;
  json weight_map = json::object();
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char fname[64];
    std::snprintf(fname, sizeof(fname), "model-%05zu-of-%05zu.safetensors", i + 1, n);
    save_safetensors((fs::path(dir) / fname).string(), shards[i], opts);
    for (const auto& kv : shards[i]) weight_map[kv.first] = fname;
    names.push_back(fname);
  }
  json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  write_file_atomic((fs::path(dir) / kSafetensorsIndexName).string(), index.dump(2) + "\n");
  names.push_back(kSafetensorsIndexName);
  fs::remove(fs::path(dir) / kSafetensorsSingleName, ec);
  remove_stale(std::set<std::string>(names.begin(), names.end()));
  return names;
}

}  // namespace moex::io
