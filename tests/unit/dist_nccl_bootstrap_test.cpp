// What the NCCL communicator (dist/nccl_communicator.h) does before it touches a GPU, so it is
// checked on every build: without NCCL the constructor is one clear error; with NCCL a rank that
// must read the id file and finds it missing or garbled fails naming the file, within its wait.
// The collectives themselves need a GPU: tests/gpu/nccl_communicator_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "cpu_kernel_checks.h"
#include "dist/communicator.h"
#include "dist/nccl_communicator.h"
#include "temp_path.h"

namespace moex::dist {
namespace {

std::string nccl_id_path(const char* name) {
  return testing::fresh_temp_path(std::string("moex_nccl_") + name);
}

TEST(NcclBootstrap, BuildWithoutNcclRefusesClearly) {
  if (NcclCommunicator::built()) return;  // the other tests cover a build with NCCL
  testing::expect_error_naming([] { NcclCommunicator comm(Communicator::local()); },
                               {"NcclCommunicator", "built without CUDA or NCCL"});
  testing::expect_error_naming([] { NcclCommunicator comm(0, 1); }, {"built without"});
}

TEST(NcclBootstrap, MissingIdFileIsAClearErrorWithinTheWait) {
  if (!NcclCommunicator::built()) return;
  NcclOptions options;
  options.id_file = nccl_id_path("missing");
  options.bootstrap_timeout_s = 0.5;
  const auto start = std::chrono::steady_clock::now();
  testing::expect_error_naming([&] { NcclCommunicator comm(1, 2, options); },
                               {options.id_file, "the NCCL unique id", "rank 0"});
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

TEST(NcclBootstrap, GarbledIdFileIsAClearError) {
  if (!NcclCommunicator::built()) return;
  NcclOptions options;
  options.id_file = nccl_id_path("garbled");
  {
    std::ofstream out(options.id_file);
    out << "garbage";
  }
  testing::expect_error_naming([&] { NcclCommunicator comm(1, 2, options); },
                               {options.id_file, "not a moex store file"});
  std::remove(options.id_file.c_str());
}

TEST(NcclBootstrap, NonRootWithoutAnIdFileSaysHowToGiveOne) {
  if (!NcclCommunicator::built()) return;
  const char* saved = std::getenv("MOEX_NCCL_ID_FILE");
  const std::string keep = saved ? saved : "";
  unsetenv("MOEX_NCCL_ID_FILE");
  testing::expect_error_naming([] { NcclCommunicator comm(1, 2); },
                               {"rank 1 of 2", "MOEX_NCCL_ID_FILE"});
  testing::expect_error_naming([] { NcclCommunicator comm(2, 2); }, {"rank 2", "group of 2"});
  if (saved) setenv("MOEX_NCCL_ID_FILE", keep.c_str(), 1);
}

TEST(NcclBootstrap, BadTimeoutInTheEnvironmentIsAClearError) {
  if (!NcclCommunicator::built()) return;
  setenv("MOEX_NCCL_TIMEOUT_S", "soon", 1);
  NcclOptions options;
  options.id_file = nccl_id_path("timeout");
  testing::expect_error_naming([&] { NcclCommunicator comm(1, 2, options); },
                               {"MOEX_NCCL_TIMEOUT_S", "soon"});
  unsetenv("MOEX_NCCL_TIMEOUT_S");
}

}  // namespace
}  // namespace moex::dist
