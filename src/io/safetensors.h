// Safetensors files (Hugging Face): an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, raw
// little-endian data. Single files and sharded checkpoints (model.safetensors.index.json).
//
// Reading maps the file; tensors come back as zero-copy views that keep the mapping alive, or
// as f32 copies. Every malformed input is one moex::Error naming the file, the tensor and the
// field. Writing goes through io::AtomicFile, so a kill while saving leaves the previous file.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moex::io {

class MappedFile;

// One tensor of a header. Offsets are relative to the start of the data section.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::string dtype_name;  // as spelled in the file: "BF16", "BOOL" (BOOL is read as U8)
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Safetensors dtype spelling -> moex dtype; false for a dtype moex does not read.
bool safetensors_dtype(const std::string& name, DType* dtype);

class SafetensorsFile {
 public:
  // Maps and validates `path` (header length, JSON, dtypes, shapes, offsets).
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // An unknown name is an Error naming the file and the tensor.
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }

  // The tensor in place (no copy); the mapping lives as long as any view of it. A tensor whose
  // offset is not a multiple of its element size is copied instead, so views are always aligned.
  Tensor view(const std::string& name) const;
  // A copy converted to f32 (from F32, BF16, F16, F64, I32, I64, U8/BOOL).
  Tensor to_f32(const std::string& name) const;
  // Like to_f32 for weights: a tensor stored with an integer dtype is an error naming the file,
  // the tensor and the dtype (converting it would give a model of garbage silently).
  Tensor weight_f32(const std::string& name) const;
  // A copy in its own dtype.
  Tensor copy(const std::string& name) const;
  // Raw bytes of a tensor inside the mapping.
  const uint8_t* bytes(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> map_;
  size_t data_start_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, SafetensorsEntry> entries_;
};

// Called after each tensor's data is written with the bytes written so far (progress; tests use
// it to interrupt a save).
using SaveProgressFn = std::function<void(size_t bytes_written, size_t total_bytes)>;

struct SafetensorsSaveOptions {
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::set<std::string> bool_tensors;           // U8 tensors written with dtype BOOL
  // BF16 tensors written as F32 (exactly), one tensor at a time: a checkpoint of bf16 state
  // without an fp32 copy of the whole state.
  bool widen_bf16 = false;
  SaveProgressFn progress;
};

// Writes `tensors` (any device; non-CPU ones are copied to the host) to `path` atomically.
// The header is padded with spaces so the data starts 8-byte aligned, and tensors are laid out
// contiguously by dtype (the reference's order: I64, F64, F32, I32, BF16, F16, U8, BOOL), then
// by name, as the reference writer does, so
// every tensor is aligned to its element size without gaps (readers reject gaps); the bytes
// are those safetensors.torch.save_file writes for the same tensors.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const SafetensorsSaveOptions& options = {});

// Bytes save_safetensors would write for these tensors.
size_t safetensors_file_size(const std::map<std::string, Tensor>& tensors,
                             const SafetensorsSaveOptions& options = {});

// ---- sharded checkpoints ----

constexpr const char* kSafetensorsIndexName = "model.safetensors.index.json";
constexpr const char* kSafetensorsSingleName = "model.safetensors";

// A checkpoint of one or more safetensors files: a directory holding model.safetensors or
// model.safetensors.index.json, a .safetensors file, or an index .json file.
class SafetensorsCheckpoint {
 public:
  // Opens every shard named by the index and checks that each tensor of the weight_map is in
  // the shard the index names (an Error naming the index, the shard and the tensor otherwise).
  static SafetensorsCheckpoint open(const std::string& path);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return shard_of_.count(name) > 0; }
  const SafetensorsFile& file_of(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const { return file_of(name).entry(name); }
  Tensor view(const std::string& name) const { return file_of(name).view(name); }
  Tensor to_f32(const std::string& name) const { return file_of(name).to_f32(name); }
  Tensor weight_f32(const std::string& name) const { return file_of(name).weight_f32(name); }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // The index's "metadata" object (strings and numbers as text), or the single file's metadata.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, size_t> shard_of_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` into directory `dir` (created if missing) as Hugging Face does: one
// model.safetensors when everything fits in `max_shard_bytes`, else
// model-0000i-of-0000n.safetensors plus model.safetensors.index.json (written last, so a
// reader never sees an index naming shards that are not complete). A tensor larger than the
// limit gets a shard of its own. Shards of an earlier save that the new index does not name
// are removed. Returns the file names written.
std::vector<std::string> save_safetensors_sharded(
    const std::string& dir, const std::map<std::string, Tensor>& tensors, uint64_t max_shard_bytes,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace moex::io
