// Safetensors reader/writer, sharded checkpoints and the atomic writer.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace moex::io {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / ("moex_io_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file made by hand: header length, header text, raw data.
std::string craft(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Expects opening `bytes` as a safetensors file to throw an Error mentioning every `needles`.
void expect_open_error(const std::string& dir, const std::string& bytes,
                       const std::vector<std::string>& needles) {
  const std::string path = dir + "/bad.safetensors";
  write_all(path, bytes);
  try {
    SafetensorsFile::open(path);
    FAIL() << "no error; expected one mentioning " << needles[0];
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

Tensor filled(const Shape& shape, DType dtype, int seed) {
  Tensor t = Tensor::empty(shape, dtype);
  uint8_t* p = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i)
    p[i] = static_cast<uint8_t>((i * 131 + seed * 17 + 7) & 0xff);
  if (dtype == DType::kF32) {
    for (int64_t i = 0; i < t.numel(); ++i)
      t.data<float>()[i] = 0.25f * static_cast<float>(i - seed);
  }
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(Safetensors, RoundTripEveryDType) {
  const std::string dir = temp_dir("roundtrip");
  std::map<std::string, Tensor> tensors;
  const DType all[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kI32,
                       DType::kI64, DType::kU8,   DType::kF64};
  int seed = 0;
  for (DType d : all) {
    // Odd element counts so that, in name order, later tensors would be misaligned.
    tensors[std::string("t_") + dtype_name(d)] = filled(Shape{3, 5}, d, seed++);
  }
  tensors["bool_mask"] = filled(Shape{7}, DType::kU8, 9);
  tensors["scalar"] = filled(Shape{}, DType::kF32, 3);
  tensors["empty"] = Tensor::empty(Shape{0, 4}, DType::kBF16);
  SafetensorsSaveOptions opts;
  opts.metadata = {{"format", "pt"}, {"note", "moex test"}};
  opts.bool_tensors = {"bool_mask"};
  const std::string path = dir + "/m.safetensors";
  save_safetensors(path, tensors, opts);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(fs::file_size(path), safetensors_file_size(tensors, opts));

  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("note"), "moex test");
  EXPECT_EQ(f.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const Tensor v = f.view(name);
    EXPECT_TRUE(same_bytes(v, t)) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.raw_data()) % dtype_size(v.dtype()), 0u) << name;
  }
  EXPECT_EQ(f.entry("bool_mask").dtype_name, "BOOL");
  // Header length plus 8 is a multiple of 8, so the data section starts aligned.
  const std::string raw = read_all(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);
}

// widen_bf16: BF16 tensors are written as F32 one at a time; the file is byte for byte the one
// written from the widened tensors (the layout orders them among the F32 ones), other dtypes
// unchanged, and safetensors_file_size agrees.
TEST(Safetensors, WidenBf16WritesTheWidenedTensorsFile) {
  const std::string dir = temp_dir("widen");
  Tensor bf16 = Tensor::empty(Shape{3, 5}, DType::kBF16);
  for (int64_t i = 0; i < bf16.numel(); ++i)
    static_cast<uint16_t*>(bf16.raw_data())[i] = f32_to_bf16(0.37f * static_cast<float>(i - 6));
  Tensor wide = Tensor::empty(Shape{3, 5}, DType::kF32);
  for (int64_t i = 0; i < bf16.numel(); ++i)
    wide.data<float>()[i] = bf16_to_f32(static_cast<const uint16_t*>(bf16.raw_data())[i]);
  const Tensor f32 = filled(Shape{4}, DType::kF32, 3), i32 = filled(Shape{2, 2}, DType::kI32, 4);
  SafetensorsSaveOptions widen;
  widen.widen_bf16 = true;
  save_safetensors(dir + "/streamed.safetensors", {{"a.f32", f32}, {"b.bf16", bf16}, {"c", i32}},
                   widen);
  save_safetensors(dir + "/widened.safetensors", {{"a.f32", f32}, {"b.bf16", wide}, {"c", i32}});
  const std::string streamed = read_all(dir + "/streamed.safetensors");
  EXPECT_EQ(streamed, read_all(dir + "/widened.safetensors"));
  EXPECT_EQ(streamed.size(),
            safetensors_file_size({{"a.f32", f32}, {"b.bf16", bf16}, {"c", i32}}, widen));
  save_safetensors(dir + "/plain.safetensors", {{"a.f32", f32}, {"b.bf16", bf16}, {"c", i32}});
  EXPECT_NE(streamed, read_all(dir + "/plain.safetensors")) << "without the option bf16 stays";
  fs::remove_all(dir);
}

TEST(Safetensors, ConvertsToF32) {
  const std::string dir = temp_dir("f32");
  Tensor bf = Tensor::empty(Shape{4}, DType::kBF16);
  Tensor hf = Tensor::empty(Shape{4}, DType::kF16);
  Tensor i64 = Tensor::empty(Shape{4}, DType::kI64);
  const float values[4] = {1.5f, -2.0f, 0.125f, 3.0f};
  for (int i = 0; i < 4; ++i) {
    static_cast<uint16_t*>(bf.raw_data())[i] = f32_to_bf16(values[i]);
    static_cast<uint16_t*>(hf.raw_data())[i] = f32_to_f16(values[i]);
    i64.data<int64_t>()[i] = -i * 1000;
  }
  save_safetensors(dir + "/c.safetensors", {{"bf", bf}, {"hf", hf}, {"i", i64}});
  const SafetensorsFile f = SafetensorsFile::open(dir + "/c.safetensors");
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(f.to_f32("bf").data<float>()[i], values[i]);
    EXPECT_EQ(f.to_f32("hf").data<float>()[i], values[i]);
    EXPECT_EQ(f.to_f32("i").data<float>()[i], -1000.0f * i);
    EXPECT_EQ(f.weight_f32("bf").data<float>()[i], values[i]);
  }
  // As a weight, an integer tensor is an error naming the file, tensor and dtype.
  try {
    f.weight_f32("i");
    FAIL() << "an I64 weight was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("c.safetensors: tensor 'i' has dtype I64"), std::string::npos) << what;
  }
}

TEST(Safetensors, ViewOutlivesTheFileObject) {
  const std::string dir = temp_dir("view");
  save_safetensors(dir + "/v.safetensors", {{"w", filled(Shape{64}, DType::kF32, 1)}});
  Tensor v;
  {
    const SafetensorsFile f = SafetensorsFile::open(dir + "/v.safetensors");
    v = f.view("w");
  }
  EXPECT_EQ(v.data<float>()[10], 0.25f * 9);
}

// Bytes written by hand as the format describes (as torch/safetensors would write them),
// including a header key order and padding moex's writer does not produce.
TEST(Safetensors, ReadsHandCraftedFile) {
  const std::string dir = temp_dir("crafted");
  std::string data;
  const float w[6] = {1, 2, 3, 4, 5, 6};
  data.append(reinterpret_cast<const char*>(w), sizeof(w));  // F32 [2,3] at 0..24
  const int64_t ids[2] = {-7, 1ll << 40};
  data.append(reinterpret_cast<const char*>(ids), sizeof(ids));  // I64 [2] at 24..40
  const uint16_t b[2] = {0x3f80, 0xc000};                        // BF16 1.0, -2.0 at 40..44
  data.append(reinterpret_cast<const char*>(b), sizeof(b));
  const std::string header = R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[40,44]},)"
                             R"("__metadata__":{"format":"pt"},)"
                             R"("w":{"shape":[2,3],"dtype":"F32","data_offsets":[0,24]},)"
                             R"("ids":{"dtype":"I64","shape":[2],"data_offsets":[24,40]}}   )";
  write_all(dir + "/h.safetensors", craft(header, data));
  const SafetensorsFile f = SafetensorsFile::open(dir + "/h.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.entry("w").shape, (Shape{2, 3}));
  EXPECT_EQ(f.view("w").data<float>()[5], 6.0f);
  EXPECT_EQ(f.view("ids").data<int64_t>()[1], 1ll << 40);
  EXPECT_EQ(f.to_f32("b").data<float>()[0], 1.0f);
  EXPECT_EQ(f.to_f32("b").data<float>()[1], -2.0f);
}

// Written by the reference implementation (tests/reference/make_safetensors_fixture.py).
TEST(Safetensors, ReadsFileWrittenByTorch) {
  const fs::path fixture = fs::path(__FILE__).parent_path().parent_path() / "fixtures" / "io" /
                           "torch_all_dtypes.safetensors";
  const SafetensorsFile f = SafetensorsFile::open(fixture.string());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.names().size(), 8u);
  EXPECT_EQ(f.entry("w").shape, (Shape{2, 3}));
  EXPECT_EQ(f.view("w").data<float>()[5], 1.25f);
  EXPECT_EQ(f.to_f32("b").data<float>()[2], 3.25f);
  EXPECT_EQ(f.to_f32("h").data<float>()[1], -1.0f);
  EXPECT_EQ(f.entry("m").dtype_name, "BOOL");
  EXPECT_EQ(f.view("m").data<uint8_t>()[1], 0);
  EXPECT_EQ(f.view("m").data<uint8_t>()[2], 1);
  EXPECT_EQ(f.view("i").data<int64_t>()[1], 1ll << 40);
  EXPECT_EQ(f.entry("s").shape.ndim(), 0);
  EXPECT_EQ(f.view("s").data<int32_t>()[0], 7);
  EXPECT_EQ(f.view("d").data<double>()[0], 1.0 / 3);
  EXPECT_EQ(f.view("u").data<uint8_t>()[0], 255);
  // Our writer lays the same tensors out exactly as the reference did (dtype, then name).
  std::map<std::string, Tensor> copies;
  for (const auto& n : f.names()) copies[n] = f.copy(n);
  const std::string dir = temp_dir("torch");
  SafetensorsSaveOptions opts;
  opts.metadata = {{"format", "pt"}};
  opts.bool_tensors = {"m"};
  save_safetensors(dir + "/again.safetensors", copies, opts);
  const SafetensorsFile again = SafetensorsFile::open(dir + "/again.safetensors");
  for (const auto& n : f.names()) {
    EXPECT_EQ(again.entry(n).begin, f.entry(n).begin) << n;
    EXPECT_TRUE(same_bytes(again.view(n), f.view(n))) << n;
  }
  EXPECT_EQ(read_all(dir + "/again.safetensors"), read_all(fixture.string()));  // byte for byte
}

TEST(Safetensors, CorruptInputsNameTheField) {
  const std::string dir = temp_dir("corrupt");
  const std::string data(24, '\1');
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  // Sanity: the good one opens.
  write_all(dir + "/good.safetensors", craft(ok, data));
  EXPECT_NO_THROW(SafetensorsFile::open(dir + "/good.safetensors"));

  expect_open_error(dir, std::string(5, '\0'), {"too short"});
  std::string big = craft(ok, data);
  big[0] = '\xff';
  big[1] = '\xff';
  expect_open_error(dir, big, {"header length", "larger than the file"});
  expect_open_error(dir, craft(R"({"w":{"dtype":"F32",)", data), {"not valid JSON"});
  expect_open_error(dir, craft(R"([1,2])", data), {"JSON object"});
  expect_open_error(dir, craft(R"({"w":{"dtype":"Q7","shape":[2,3],"data_offsets":[0,24]}})", data),
                    {"'w'", "unknown dtype", "Q7"});
  expect_open_error(dir,
                    craft(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]}})", data),
                    {"'w'", "data_offsets", "past the end"});
  expect_open_error(dir,
                    craft(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}})", data),
                    {"'w'", "data_offsets", "needs 16"});
  expect_open_error(dir,
                    craft(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                          R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                          data),
                    {"data_offsets", "overlap"});
  expect_open_error(dir,
                    craft(R"({"w":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,24]}})", data),
                    {"'w'", "shape"});
  expect_open_error(dir, craft(R"({"w":{"dtype":"F32","shape":[6],"data_offsets":[24,0]}})", data),
                    {"'w'", "data_offsets"});
  expect_open_error(dir, craft(R"({"w":{"dtype":"F32","shape":[6]}})", data),
                    {"'w'", "data_offsets"});
  expect_open_error(dir, craft(R"({"w":{"shape":[6],"data_offsets":[0,24]}})", data),
                    {"'w'", "dtype"});
  expect_open_error(dir, craft(R"({"__metadata__":{"a":1}})", data), {"__metadata__.a"});
  // A truncated file: the header promises data that is not there.
  const std::string full = craft(ok, data);
  expect_open_error(dir, full.substr(0, full.size() - 4), {"'w'", "past the end"});
}

TEST(Safetensors, InterruptedSaveLeavesPreviousFile) {
  const std::string dir = temp_dir("atomic");
  const std::string path = dir + "/model.safetensors";
  std::map<std::string, Tensor> v1 = {{"a", filled(Shape{1000}, DType::kF32, 1)}};
  save_safetensors(path, v1);
  const std::string before = read_all(path);

  std::map<std::string, Tensor> v2 = {{"a", filled(Shape{1000}, DType::kF32, 2)},
                                      {"b", filled(Shape{1000}, DType::kF32, 3)}};
  // 1. The writer throws midway (after the first tensor).
  SafetensorsSaveOptions opts;
  opts.progress = [](size_t written, size_t total) {
    if (written < total) throw Error("interrupted");
  };
  EXPECT_THROW(save_safetensors(path, v2, opts), Error);
  EXPECT_EQ(read_all(path), before);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // 2. The process is killed (SIGKILL, no cleanup) after writing everything but the rename.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    SafetensorsSaveOptions kill_opts;
    kill_opts.progress = [](size_t written, size_t total) {
      if (written == total) ::raise(SIGKILL);
    };
    save_safetensors(path, v2, kill_opts);
    ::_exit(0);  // not reached
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_EQ(read_all(path), before);
  EXPECT_TRUE(fs::exists(path + ".tmp"));  // the killed writer's leftover, never read as the model
  EXPECT_EQ(SafetensorsFile::open(path).names(), std::vector<std::string>{"a"});

  // 3. A later save succeeds over the leftover.
  save_safetensors(path, v2);
  EXPECT_EQ(SafetensorsFile::open(path).names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(AtomicFile, DirectoryCommitReplacesPrevious) {
  const std::string dir = temp_dir("atomic_dir");
  const std::string ckpt = dir + "/step_10";
  {
    AtomicDirectory d(ckpt);
    write_file_atomic(d.temp_path() + "/a.json", "{\"v\":1}");
    d.commit();
  }
  {
    AtomicDirectory d(ckpt);
    write_file_atomic(d.temp_path() + "/a.json", "{\"v\":2}");
    // destroyed without commit: the previous directory stays
  }
  EXPECT_EQ(read_all(ckpt + "/a.json"), "{\"v\":1}");
  EXPECT_FALSE(fs::exists(ckpt + ".tmp"));
  {
    AtomicDirectory d(ckpt);
    write_file_atomic(d.temp_path() + "/b.json", "{}");
    d.commit();
  }
  EXPECT_FALSE(fs::exists(ckpt + "/a.json"));
  EXPECT_TRUE(fs::exists(ckpt + "/b.json"));
  EXPECT_FALSE(fs::exists(ckpt + ".old"));
}

TEST(SafetensorsSharded, RoundTripAndIndex) {
  const std::string dir = temp_dir("sharded");
  std::map<std::string, Tensor> tensors;
  for (int i = 0; i < 10; ++i) {
    tensors["model.layers." + std::to_string(i) + ".w"] =
        filled(Shape{100}, DType::kF32, i);  // 400 B
  }
  const auto files = save_safetensors_sharded(dir, tensors, 1000);
  ASSERT_EQ(files.size(), 6u);  // 5 shards of two tensors + index
  EXPECT_EQ(files[0], "model-00001-of-00005.safetensors");
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  const auto index = nlohmann::json::parse(read_all(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<int>(), 4000);
  EXPECT_EQ(index["weight_map"].size(), 10u);

  const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(dir);
  EXPECT_EQ(ckpt.shards().size(), 5u);
  for (const auto& [name, t] : tensors) EXPECT_TRUE(same_bytes(ckpt.view(name), t)) << name;
  EXPECT_EQ(ckpt.metadata().at("total_size"), "4000");

  // Saving again, smaller, into the same directory: a single file; old shards removed.
  save_safetensors_sharded(dir, {{"x", filled(Shape{4}, DType::kF32, 0)}}, 1000);
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir + "/model-00001-of-00005.safetensors"));
  EXPECT_EQ(SafetensorsCheckpoint::open(dir).names(), std::vector<std::string>{"x"});
}

TEST(SafetensorsSharded, IndexErrorsNameShardAndTensor) {
  const std::string dir = temp_dir("sharded_bad");
  save_safetensors(dir + "/s1.safetensors", {{"a", filled(Shape{2}, DType::kF32, 0)}});
  auto expect_index_error = [&](const std::string& index, const std::vector<std::string>& needles) {
    write_all(dir + "/model.safetensors.index.json", index);
    try {
      SafetensorsCheckpoint::open(dir);
      FAIL() << "no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
      for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
    }
  };
  expect_index_error(R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})",
                     {"weight_map.b", "missing", "s1.safetensors"});
  expect_index_error(R"({"weight_map":{"a":"s2.safetensors"}})",
                     {"weight_map.a", "s2.safetensors"});
  expect_index_error(R"({"weight_map":{"a":"s1.safe)", {"not valid JSON"});
  expect_index_error(R"({"metadata":{}})", {"weight_map"});
  expect_index_error(R"({"weight_map":{"a":"../x"}})", {"weight_map.a"});
  write_all(dir + "/model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors"}})");
  EXPECT_EQ(SafetensorsCheckpoint::open(dir).names(), std::vector<std::string>{"a"});
}

}  // namespace
}  // namespace moex::io
