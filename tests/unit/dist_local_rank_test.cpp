// Communicator::local_rank: the launcher's node-local index picks a rank's GPU; without one the
// rank itself (one node).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "dist/communicator.h"

namespace moex::dist {
namespace {

// Sets (or, with nullptr, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_, old_.c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

TEST(LocalRank, TakesTheLaunchersNodeLocalIndex) {
  ScopedEnv ompi("OMPI_COMM_WORLD_LOCAL_RANK", nullptr), mpich("MPI_LOCALRANKID", nullptr),
      slurm("SLURM_LOCALID", nullptr);
  Communicator& local = Communicator::local();
  EXPECT_EQ(local.local_rank(), local.rank());  // no launcher: the rank
  {
    ScopedEnv s("SLURM_LOCALID", "5");
    EXPECT_EQ(local.local_rank(), 5);
    ScopedEnv o("OMPI_COMM_WORLD_LOCAL_RANK", "3");  // Open MPI's comes first
    EXPECT_EQ(local.local_rank(), 3);
  }
  ScopedEnv m("MPI_LOCALRANKID", "2");
  EXPECT_EQ(local.local_rank(), 2);
}

}  // namespace
}  // namespace moex::dist
