// The "data" object of a training config: language and task sampling temperatures
// (data/mixture.h) and the task filter, each bad value one error naming the file and field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "train/train_config.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

// A training config whose "data" object is `data` (the rest fixed and valid).
TrainConfig load_with_data(const std::string& data) {
  const fs::path path =
      fs::temp_directory_path() / ("moex_data_config_" + std::to_string(::getpid()) + ".json");
  std::ofstream(path) << R"({
    "model": {"vocab_size": 40, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
              "max_seq_len": 128},
    "data": )" + data + R"(,
    "training": {"steps": 1, "out_dir": "unused"}})";
  struct Remove {
    fs::path p;
    ~Remove() { fs::remove(p); }
  } remove{path};
  return TrainConfig::from_file(path.string());
}

std::string error_of(const std::string& data) {
  try {
    load_with_data(data);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(DataConfig, DefaultsAreOneLevelProportional) {
  const TrainConfig c = load_with_data(R"({"path": "x"})");
  EXPECT_EQ(c.data.temperatures.language, 1.0);
  EXPECT_EQ(c.data.temperatures.task, 0.0);
  EXPECT_TRUE(c.data.temperatures.language_by_task.empty());
  EXPECT_EQ(c.data.tasks, "all");
}

TEST(DataConfig, ReadsTaskAndPerTaskLanguageTemperatures) {
  const TrainConfig c = load_with_data(
      R"({"path": "x", "temperature": 5, "task_temperature": 2, "tasks": "denoise",
          "language_temperatures": {"translate": 1.5, "denoise": 3}})");
  EXPECT_EQ(c.data.temperatures.language, 5.0);
  EXPECT_EQ(c.data.temperatures.task, 2.0);
  EXPECT_EQ(c.data.temperatures.language_by_task.size(), 2u);
  EXPECT_EQ(c.data.temperatures.language_by_task.at("translate"), 1.5);
  EXPECT_EQ(c.data.temperatures.language_by_task.at("denoise"), 3.0);
  EXPECT_EQ(c.data.tasks, "denoise");
}

TEST(DataConfig, BadValuesNameTheField) {
  EXPECT_NE(error_of(R"({"path": "x", "temperature": 0})").find("data.temperature"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"path": "x", "task_temperature": -1})").find("data.task_temperature"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"path": "x", "language_temperatures": {"lm": 2}})")
                .find("data.language_temperatures needs data.task_temperature"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"path": "x", "task_temperature": 1, "language_temperatures": {"lm": 0}})")
                .find("data.language_temperatures.lm"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"path": "x", "task_temperature": 1, "language_temperatures": {"mt": 2}})")
                .find("data.language_temperatures.mt"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"path": "x", "tasks": "summarize"})").find("data.tasks"),
            std::string::npos);
}

}  // namespace
}  // namespace moex::train
